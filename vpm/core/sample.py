"""The sample catalog shipped in the repository (`sample/`), loaded through the ordinary import path.

84 products with up to three photos each (grocery-store phone photos, MIT; a few Amazon Berkeley Objects catalog
images, CC BY 4.0), downscaled by `tools/make_sample_catalog.py`; `sample/SOURCES.md` and the licence files
travel with them. Home and Catalog offer it on an empty catalog ("Load sample products") and
`python -m vpm demo` does the same. It is an import like any other: progress, photos already in the catalog
skipped as duplicates, every batch it committed kept if it is cut off, and running it again adds only what is
missing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from vpm.core.errors import VpmError

if TYPE_CHECKING:
    from vpm.core.matcher import Matcher, Progress
    from vpm.core.results import ImportReport

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "sample"
SAMPLE_LABEL = "the sample catalog"
# How long loading the sample takes, as people are told (the button's tooltip, Home, `vpm demo --help`). Measured:
# `python -m vpm demo` with the built-in model (VPM_MODEL=efficientnet-lite0) into an empty VPM_DATA_DIR, on the
# project's 2-core CPU machine while other work shared it (load average 4-5): 240 s, 298 s and 358 s wall, about
# 160 s of CPU time each. Of the 240 s: 8 s to load the model, 154 s to import the 252 photos (decode, thumbnail, embed, keypoints, package
# text read by OCR at ~0.4 s a photo), 78 s to calibrate the match score on them. (Before OCR and calibration: 42 s.)
LOAD_TIME = "4 to 6 minutes on a 2-core CPU"


class SampleMissing(VpmError):
    """The sample's files are not beside the app (a trimmed copy of the repository)."""


def sample_folder() -> Path:
    """Where the sample is (a module attribute, so tests can point it at a smaller one)."""
    return SAMPLE_DIR


def sample_available(folder: Path | None = None) -> bool:
    return ((folder or sample_folder()) / "products.csv").is_file()


def sample_size(folder: Path | None = None) -> tuple[int, int]:
    """(products, photos) the sample holds, from its CSV (rows sharing an id are one product)."""
    import csv

    with ((folder or sample_folder()) / "products.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return len({row["id"] for row in rows}), len(rows)


def offer_help(folder: Path | None = None) -> str:
    """What "Load sample products" loads, and how long it takes (its tooltip)."""
    products, photos = sample_size(folder)
    return (f"{products} products with {photos} photos (grocery-store phone photos, MIT; a few Amazon Berkeley "
            "Objects catalog images, CC BY 4.0), added like an import: every photo is embedded, its keypoints found "
            f"and its package text read, then the match score is calibrated on them. It takes {LOAD_TIME}.")


def load_sample(matcher: Matcher, progress: Progress | None = None, folder: Path | None = None) -> ImportReport:
    """Import the sample catalog into the matcher's catalog (it takes LOAD_TIME)."""
    folder = folder or sample_folder()
    if not sample_available(folder):
        raise SampleMissing(
            "the sample catalog is not in this copy of the app (sample/products.csv is missing): restore the "
            "sample folder from the repository, or import your own photos on the Catalog page"
        )
    report = matcher.import_path(folder / "products.csv", progress)
    return dataclasses.replace(report, source=SAMPLE_LABEL)
