"""Leave-one-out match quality of the active model on real product photos (prints tables).

    /work/venv/bin/python bench/bench_quality.py [--data /work/shared/datasets/products-photos]

Every photo is a query against all the other photos; a hit is a photo of the same product id. Prints recall@1
and recall@5 overall and per category, and the cosine of the best same-product vs the best other-product photo
per query, with precision/recall at a few thresholds (what the search page's default threshold is based on).

The model is the one VPM_MODEL names (default clip-ViT-B-32); without network access and no cached copy that is
the built-in EfficientNet-Lite0 fallback, and the table says which model ran. Photos go through the app's own
path: vpm.images.decode_image, then Embedder.embed_images in batches, then an exact cosine ranking.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vpm.config import load_settings
from vpm.embeddings import load_embedder
from vpm.images import decode_image

DEFAULT_DATA = Path("/work/shared/datasets/products-photos")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with metadata.csv and the photos")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    with open(args.data / "metadata.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    settings = load_settings()
    start = time.perf_counter()
    embedder = load_embedder(settings.vpm_model, settings.vpm_device)
    load_s = time.perf_counter() - start
    print(f"model: {embedder.model_id} ({embedder.display_name}, {embedder.dim}-d, device {embedder.device}); "
          f"loaded in {load_s:.1f} s")
    if embedder.fallback_reason:
        print(f"  fallback: VPM_MODEL={settings.vpm_model} could not be loaded: {embedder.fallback_reason}")

    start = time.perf_counter()
    images = [decode_image((args.data / r["file"]).read_bytes(), r["file"]).image for r in rows]
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    vectors = embedder.embed_images(images, batch_size=args.batch_size)
    embed_s = time.perf_counter() - start
    del images
    print(f"photos: {len(rows)} of {len({r['product_id'] for r in rows})} products in "
          f"{len({r['category'] for r in rows})} categories; decode {decode_s:.1f} s, "
          f"embed {embed_s:.1f} s ({len(rows) / embed_s:.1f} img/s)")

    products = np.array([r["product_id"] for r in rows])
    all_scores = vectors @ vectors.T
    np.fill_diagonal(all_scores, -np.inf)  # a photo does not count as its own match
    found = np.argsort(-all_scores, axis=1)[:, :5]

    hits1, hits5, best_same, best_other = [], [], [], []
    per_category: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for i, others in enumerate(found):
        same = [products[j] == products[i] for j in others]
        hits1.append(bool(same[0]))
        hits5.append(any(same))
        per_category[rows[i]["category"]].append((hits1[-1], hits5[-1]))
        scores = vectors @ vectors[i]
        scores[i] = -np.inf
        mask = products == products[i]
        best_same.append(float(scores[mask].max()))
        best_other.append(float(scores[~mask].max()))

    print()
    print(f"{'category':<28} {'photos':>6} {'recall@1':>9} {'recall@5':>9}")
    print("-" * 55)
    for category in sorted(per_category):
        results = per_category[category]
        r1 = sum(a for a, _ in results) / len(results)
        r5 = sum(b for _, b in results) / len(results)
        print(f"{category:<28} {len(results):>6} {r1:>9.1%} {r5:>9.1%}")
    print("-" * 55)
    print(f"{'all':<28} {len(rows):>6} {np.mean(hits1):>9.1%} {np.mean(hits5):>9.1%}")

    same, other = np.array(best_same), np.array(best_other)
    print()
    print("best cosine per query: same product vs any other product")
    print(f"  same product : median {np.median(same):.3f}, p10 {np.percentile(same, 10):.3f}, "
          f"p90 {np.percentile(same, 90):.3f}")
    print(f"  other product: median {np.median(other):.3f}, p10 {np.percentile(other, 10):.3f}, "
          f"p90 {np.percentile(other, 90):.3f}")
    print()
    print(f"{'threshold':>9} {'queries with a same-product hit >= t':>38} {'with an other-product hit >= t':>32}")
    for t in (0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9):
        print(f"{t:>9.2f} {np.mean(same >= t):>38.1%} {np.mean(other >= t):>32.1%}")


if __name__ == "__main__":
    main()
