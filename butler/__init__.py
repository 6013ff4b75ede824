"""butler: datasets by type and data ID over aggregators of repositories.

    from butler import Butler
    b = Butler(inputs=["/data/raw"], outputs=["~/work"])
    image = b.get("calexp", visit=903334, ccd=22)

Layers (docs/design.md): template, formats and policy are pure values;
registry and repository are one repository on disk; transaction is the
all-or-nothing put; resolver answers "where is it"; butler is the API.
"""

from butler.butler import Butler
from butler.errors import (
    AmbiguousDataIdError,
    ButlerError,
    ConfigError,
    DatasetExistsError,
    DatasetNotFoundError,
    FormatError,
    InvalidDataIdError,
    NoOutputError,
    ReadOnlyError,
    RepositoryError,
    TransactionError,
    UnknownDatasetTypeError,
    UnknownFormatError,
    UnknownLabelError,
)
from butler.repository import DataRepository
from butler.resolver import DatasetRef

__version__ = "0.1.0"

__all__ = [
    "AmbiguousDataIdError",
    "Butler",
    "ButlerError",
    "ConfigError",
    "DataRepository",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DatasetRef",
    "FormatError",
    "InvalidDataIdError",
    "NoOutputError",
    "ReadOnlyError",
    "RepositoryError",
    "TransactionError",
    "UnknownDatasetTypeError",
    "UnknownFormatError",
    "UnknownLabelError",
    "__version__",
]
