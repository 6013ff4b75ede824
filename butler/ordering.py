"""The order ``query`` and ``versions`` return datasets in (SPEC §6, "Order").

By dataset type, then by the data ID's keys in the order the genre declares them
(``visit`` before ``ccd`` when the genre says ``{visit: int, ccd: int}``), ints
numerically (``ccd=2`` before ``ccd=10``), strings by their text.  The registry
stores data IDs as canonical JSON, whose text order is neither: keys alphabetical,
``1000`` before ``2``.
"""

from __future__ import annotations

from collections.abc import Mapping

from butler.policy import Policy

# One value's place: ints (numerically) before strings (by text), so that a data ID whose
# key changed type between policies still compares instead of raising TypeError.
ValueKey = tuple[int, int, str]
DatasetKey = tuple[str, tuple[ValueKey, ...], tuple[tuple[str, ValueKey], ...]]


def value_key(value: object) -> ValueKey:
    if isinstance(value, int):
        return (0, value, "")
    return (1, 0, str(value))


def dataset_key(policy: Policy, dataset_type: str, data_id: Mapping[str, object]) -> DatasetKey:
    """Where a dataset of ``dataset_type`` with ``data_id`` sorts among others."""
    definition = policy.dataset_types.get(dataset_type)
    declared = tuple(definition.keys) if definition is not None else ()
    ordered = tuple(value_key(data_id.get(key)) for key in declared if key in data_id)
    # Keys the policy does not declare (a type defined elsewhere): by name, after the rest.
    others = tuple(
        (key, value_key(value)) for key, value in sorted(data_id.items()) if key not in declared
    )
    return (dataset_type, ordered, others)
