"""Build the sample catalog shipped in `sample/` from the shared product photos.

    python tools/make_sample_catalog.py [SOURCE] [--out sample]

SOURCE defaults to ../shared/datasets/products-photos (398 photos of 84 products: grocery-store phone photos,
MIT; a few Amazon Berkeley Objects catalog images, CC BY 4.0). Each product keeps up to PHOTOS_PER_PRODUCT of its
photos, each downscaled to at most 512 px on its longer side and saved as a JPEG of quality 80 without metadata; `products.csv` lists them in the columns
the importer reads (rows that share an `id` make one product with several photos), with each photo's licence
and source kept as product attributes; SOURCES.md and the licence files are copied beside them.

Run it again after the source changes; it rewrites the folder from scratch and prints what it made.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "datasets" / "products-photos"
MAX_SIDE = 512
QUALITY = 80
# Every product keeps its catalog ("gallery") photo and the next views, up to this many: several photos a product
# for the demo, and the whole sample a few MB (all 398 photos would be ~10 MB: the phone photos are dense).
PHOTOS_PER_PRODUCT = 3
LICENCE_FILES = ("LICENSE-GroceryStoreDataset-MIT.txt", "ABO-samples-README-attribution.md")
COLUMNS = ("image", "id", "name", "category", "description", "brand", "licence", "source")
# Brands the source's `brand` column cut at their first word: the Swedish juice brand is God Morgon ("Good
# Morning"), and a card reading "Juice by God" is not what the carton says.
BRANDS = {"God": "God Morgon"}
# Photos chosen by hand where the default choice (the gallery photo, then the next views) shows no product: the
# first three images of the Solimo Vitamin E listing are its label's text panels (ingredients in five languages,
# nutrition table, warnings); only the fourth shows the bottle. The bottle first (the card's picture), then the
# English back label and the French/Italian/Spanish panel. No other photo of it is in the source.
VIEWS = {"abo:B07GTFSCHB": ("abo_B07GTFSCHB_04.jpg", "abo_B07GTFSCHB_03.jpg", "abo_B07GTFSCHB_01.jpg")}


def shrink(data: bytes) -> bytes:
    """At most MAX_SIDE px, upright (EXIF orientation applied), RGB JPEG without EXIF or ICC metadata."""
    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=QUALITY, optimize=True, progressive=True)
        return out.getvalue()


def brand_of(row: dict[str, str]) -> str:
    brand = row.get("brand", "").strip()
    return BRANDS.get(brand, brand)


def describe(row: dict[str, str]) -> str:
    """One line a card can show: what it is, and by whom when the source says."""
    kind = row.get("subcategory", "").strip()
    brand = brand_of(row)
    if brand and kind:
        return f"{kind} by {brand}"
    return kind or brand


def chosen(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Each product's gallery photo first, then its other views in order, at most PHOTOS_PER_PRODUCT of them;
    for a product in VIEWS, the photos it names, in its order."""
    rows = [r for r in rows if r["product_id"] not in VIEWS or r["file"] in VIEWS[r["product_id"]]]

    def order(r: dict[str, str]) -> tuple:
        if r["product_id"] in VIEWS:
            return (r["product_id"], VIEWS[r["product_id"]].index(r["file"]))
        return (r["product_id"], r.get("suggested_role") != "gallery", int(r.get("view_index") or 0), r["file"])

    ordered = sorted(rows, key=order)
    kept: dict[str, int] = {}
    out = []
    for row in ordered:
        if kept.get(row["product_id"], 0) < PHOTOS_PER_PRODUCT:
            kept[row["product_id"]] = kept.get(row["product_id"], 0) + 1
            out.append(row)
    return out


def build(source: Path, out: Path) -> dict[str, int]:
    rows = list(csv.DictReader((source / "metadata.csv").open(encoding="utf-8")))
    if out.exists():
        shutil.rmtree(out)
    (out / "photos").mkdir(parents=True)
    listed = []
    for row in chosen(rows):
        name = Path(row["file"]).with_suffix(".jpg").name
        (out / "photos" / name).write_bytes(shrink((source / row["file"]).read_bytes()))
        listed.append({
            "image": f"photos/{name}", "id": row["product_id"], "name": row["name"], "category": row["category"],
            "description": describe(row), "brand": brand_of(row), "licence": row.get("licence", ""),
            "source": f"{row.get('source_repo', '')}: {row.get('source_path', '')}".strip(": "),
        })
    with (out / "products.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(listed)
    for name in LICENCE_FILES:
        shutil.copy2(source / name, out / name)
    sources = (source / "SOURCES.md").read_text(encoding="utf-8")
    note = (
        "# Sample catalog for Visual Product Matcher\n\n"
        f"Made by `tools/make_sample_catalog.py` from the photos described below: {len(listed)} of them, up to "
        f"{PHOTOS_PER_PRODUCT} of each product's, each downscaled to at most {MAX_SIDE} px on its longer side and "
        f"re-encoded as JPEG (quality {QUALITY}, metadata removed); nothing else was changed. `products.csv` keeps each photo's licence and source. The licences travel "
        f"with the photos: {', '.join(f'`{n}`' for n in LICENCE_FILES)}. The original notes follow.\n\n---\n\n"
    )
    (out / "SOURCES.md").write_text(note + sources.replace("Pixels were not changed: each file is byte-identical "
                                                            "to its source blob.", "Pixels were downscaled (see above)."),
                                    encoding="utf-8")
    photos = list((out / "photos").iterdir())
    return {
        "photos": len(photos), "products": len({r["id"] for r in listed}),
        "photo_bytes": sum(p.stat().st_size for p in photos),
        "total_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=REPO / "sample")
    args = parser.parse_args(argv)
    if not (args.source / "metadata.csv").is_file():
        print(f"error: {args.source} has no metadata.csv", file=sys.stderr)
        return 1
    made = build(args.source, args.out)
    print(f"{made['products']} products, {made['photos']} photos, {made['photo_bytes'] / 1e6:.1f} MB of photos, "
          f"{made['total_bytes'] / 1e6:.1f} MB in all, in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
