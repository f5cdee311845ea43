"""Where the benches find the shared product photos: beside the repository, and only there.

The data set (398 real product photos of 84 products, with `metadata.csv`; see DESIGN.md, "Data for benchmarks")
lives in `../shared/datasets/products-photos` next to the repository checkout, never at an absolute path of one
machine. A bench that needs it and does not find it stops with a message saying where it looked and what to do.
"""

from __future__ import annotations

from pathlib import Path

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "products-photos"


def require_photos(folder: Path | None = None, *, metadata: bool = False, option: str | None = "--photos",
                   suffixes: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")) -> Path:
    """`folder` (default PHOTOS) when it holds photos (and `metadata.csv` if `metadata`); else SystemExit with
    a message naming the folder and the fix (`option`: the bench's flag for another folder, if it has one)."""
    folder = folder or PHOTOS
    what = "the shared product photos" if folder == PHOTOS else "the photo folder"
    fix = (f"put the shared data set (the photos and metadata.csv) at {PHOTOS} (../shared/datasets/products-photos "
           "beside the repository)" + (f", or pass {option} FOLDER" if option else ""))
    if not folder.is_dir():
        raise SystemExit(f"cannot find {what}: {folder} does not exist; {fix}")
    if metadata and not (folder / "metadata.csv").is_file():
        raise SystemExit(f"{folder} ({what}) has no metadata.csv (file, product_id, name, category); {fix}")
    if not any(p.suffix.lower() in suffixes for p in folder.iterdir()):
        raise SystemExit(f"{folder} ({what}) holds no photo ({', '.join(suffixes)}); {fix}")
    return folder
