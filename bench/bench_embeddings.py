"""Embedding speed of the active model: throughput at batch 1 and 32, single-query latency.

    python bench/bench_embeddings.py [--model NAME] [--device auto] [--photos DIR] [--images 64]

The model is the one `vpm.embeddings.load_embedder` actually runs: a CLIP that cannot be loaded here falls
back to efficientnet-lite0, and the table says so. Photos come from the shared product-photo set when it is
there (decoded up front: decoding is vpm/images.py's cost, not the model's), otherwise from generated
pictures. Model preprocessing (resize, crop, normalise) is included in every figure.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vpm.embeddings import DEFAULT_MODEL, load_embedder  # noqa: E402 - after the sys.path line above

PHOTO_DIRS = (
    ROOT.parent / "shared" / "datasets" / "products-photos",
    Path("/work/shared/datasets/products-photos"),
)


def _generated(count: int) -> tuple[list[Image.Image], list[str]]:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        image = Image.new("RGB", (640, 480), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(15):
            x, y = int(rng.integers(0, 560)), int(rng.integers(0, 400))
            draw.ellipse((x, y, x + int(rng.integers(20, 200)), y + int(rng.integers(20, 200))),
                         fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        images.append(image)
    return images, []


def _photos(folder: Path, count: int) -> tuple[list[Image.Image], list[str]]:
    """Up to `count` photos, decoded to RGB, with their product ids when metadata.csv gives them."""
    products: dict[str, str] = {}
    if (folder / "metadata.csv").exists():
        with open(folder / "metadata.csv", newline="", encoding="utf-8") as fh:
            products = {row["file"]: row["product_id"] for row in csv.DictReader(fh)}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    files = files[:count]  # in name order, so several photos of each product are in the sample
    images = []
    for path in files:
        with Image.open(path) as img:
            images.append(ImageOps.exif_transpose(img).convert("RGB"))
    return images, [products.get(p.name, p.name) for p in files]


def _rate(embed, images: list[Image.Image], batch_size: int) -> float:
    start = time.perf_counter()
    embed(images, batch_size=batch_size)
    return len(images) / (time.perf_counter() - start)


def _median_ms(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("VPM_MODEL") or DEFAULT_MODEL)
    parser.add_argument("--device", default=os.environ.get("VPM_DEVICE") or "auto")
    parser.add_argument("--photos", type=Path, default=next((d for d in PHOTO_DIRS if d.is_dir()), None))
    parser.add_argument("--images", type=int, default=64, help="how many images for the throughput runs")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per latency figure (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    if args.photos is not None and args.photos.is_dir():
        images, labels = _photos(args.photos, args.images)
        source = f"{len(images)} photos from {args.photos}"
    else:
        images, labels = _generated(args.images)
        source = f"{len(images)} generated 640x480 images (no photo folder found)"

    start = time.perf_counter()
    embedder = load_embedder(args.model, args.device)
    load_s = time.perf_counter() - start

    embedder.embed_images(images[:4], batch_size=4)  # warm-up: first calls allocate
    image_ms = _median_ms(lambda: embedder.embed_images(images[:1]), args.repeats)
    rows = [
        ("load (imports + weights)", f"{load_s:.1f} s"),
        ("images/s, batch 1", f"{_rate(embedder.embed_images, images, 1):.1f}"),
        ("images/s, batch 32", f"{_rate(embedder.embed_images, images, 32):.1f}"),
        ("one image query (median)", f"{image_ms:.1f} ms"),
    ]
    if embedder.supports_text:
        text_ms = _median_ms(lambda: embedder.embed_texts(["a red running shoe"]), args.repeats)
        rows.append(("one text query (median)", f"{text_ms:.1f} ms"))
    else:
        rows.append(("one text query", "n/a (model embeds images only)"))
    if labels and len(set(labels)) < len(labels):
        vectors = embedder.embed_images(images, batch_size=32)
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -np.inf)
        nearest = similarity.argmax(axis=1)
        same = np.mean([labels[i] == labels[j] for i, j in enumerate(nearest)])
        rows.append(("nearest other photo is same product", f"{same:.0%}"))

    print(f"requested model : {args.model} (device {args.device})")
    print(f"model that ran  : {embedder.display_name} [{embedder.model_id}], {embedder.dim}-d, "
          f"device {embedder.device}")
    if embedder.fallback_reason:
        print(f"fallback because: {embedder.fallback_reason}")
    print(f"data            : {source}; torch threads {_torch_threads()}; load average {_load()}")
    print()
    width = max(len(name) for name, _ in rows)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
