"""Sample repositories and a short tour of the library (``make demo`` starts here).

``build_samples(root)`` makes two inputs (``raw``, ``calib``) with FITS images
and tables, and an aggregator file ``root/demo.yaml`` with two outputs
(``work`` read-write, ``archive`` write-only).  The mount demo reuses it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

POLICY: dict[str, object] = {
    "genres": {
        "exposure": {
            "keys": {"visit": "int", "ccd": "int"},
            "template": "{datasetType}/v{visit:07d}/{datasetType}-v{visit:07d}-c{ccd:03d}.fits",
            "storage": "fits",
            "python": "astropy.io.fits.HDUList",
        },
        "catalog": {
            "keys": {"visit": "int", "ccd": "int"},
            "template": "{datasetType}/v{visit:07d}/{datasetType}-v{visit:07d}-c{ccd:03d}.fits",
            "storage": "fits-table",
            "python": "astropy.table.Table",
        },
        "calibration": {
            "keys": {"ccd": "int"},
            "template": "{datasetType}/{datasetType}-c{ccd:03d}.fits",
            "storage": "fits",
            "python": "numpy.ndarray",
        },
    },
    "datasetTypes": {
        "raw": {"genre": "exposure"},
        "calexp": {"genre": "exposure"},
        "src": {"genre": "catalog"},
        "bias": {"genre": "calibration"},
    },
}

AGGREGATOR = """\
butler: 1
inputs:
  - {path: raw, label: raw}
  - calib
outputs:
  - {path: work, mode: rw}
  - {path: archive, mode: w}
"""


def build_samples(root: Path, visits: tuple[int, ...] = (903334, 903336), ccds: int = 4) -> Path:
    """Create the sample repositories under ``root``; returns the aggregator file."""
    import numpy as np
    from astropy.io import fits
    from astropy.table import Table

    from butler import Butler, DataRepository

    rng = np.random.default_rng(42)
    raw = Butler(DataRepository.create(root / "raw", policy=POLICY).path)
    calib = Butler(DataRepository.create(root / "calib", policy=POLICY).path)
    for ccd in range(ccds):
        calib.put(np.full((256, 256), 100.0 + ccd, dtype=np.float32), "bias", ccd=ccd)
        for visit in visits:
            pixels = rng.normal(1000.0, 30.0, (256, 256)).astype(np.float32)
            header = fits.Header({"VISIT": visit, "CCDNUM": ccd, "FILTER": "r"})
            raw.put(fits.HDUList([fits.PrimaryHDU(pixels, header)]), "raw", visit=visit, ccd=ccd)
            stars = Table({"id": np.arange(20), "flux": rng.uniform(1e3, 1e5, 20)})
            raw.put(stars, "src", visit=visit, ccd=ccd)
    aggregator = root / "demo.yaml"
    aggregator.write_text(AGGREGATOR)
    return aggregator


def tour(aggregator: Path) -> None:
    """Gets, a derived put to both outputs, versions, provenance and a partial-ID query."""
    import numpy as np
    from astropy.io import fits

    from butler import Butler

    butler = Butler(aggregator)
    print("repositories (search order):")
    for label, path, mode in butler.repositories:
        print(f"  {label:8} {mode:3} {path}")
    raw = butler.get("raw", visit=903334, ccd=1)
    bias = butler.get("bias", ccd=1)
    assert isinstance(raw, fits.HDUList) and isinstance(bias, np.ndarray)
    calibrated = raw[0].data - bias
    print(f"raw visit=903334 ccd=1: mean {raw[0].data.mean():.1f}; bias {bias.mean():.1f}")
    refs = butler.put(
        fits.HDUList([fits.PrimaryHDU(calibrated.astype(np.float32))]),
        "calexp",
        visit=903334,
        ccd=1,
        provenance={"inputs": [butler.ref("raw", visit=903334, ccd=1)], "task": "isr"},
    )
    for ref in refs:
        print(f"put calexp -> {ref.repository}: {ref.path} ({ref.size} bytes, v{ref.version})")
    again = butler.put(
        fits.HDUList([fits.PrimaryHDU((calibrated * 1.01).astype(np.float32))]),
        "calexp",
        visit=903334,
        ccd=1,
    )
    print(f"put again -> version {again[0].version}")
    versions = butler.versions("calexp", visit=903334, ccd=1)
    print("versions:", [(ref.version, ref.sha256[:12]) for ref in versions])
    provenance = butler.provenance(refs[0])
    print("provenance of v1:", {k: provenance[k] for k in ("user", "host", "software", "caller")})
    print("query visit=903334 (genre exposure):")
    for ref in butler.query(genre="exposure", visit=903334):
        print(f"  {ref.dataset_type:7} {ref.data_id} from {ref.repository} v{ref.version}")
    try:
        butler.get("raw", visit=903334)
    except LookupError as exc:
        print(f"partial data ID: {type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else "demo-work").absolute()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    aggregator = build_samples(root)
    print(f"sample repositories in {root}; aggregator {aggregator}")
    tour(aggregator)
    return 0


if __name__ == "__main__":
    sys.exit(main())
