"""Match quality of the built-in model, step by step, on real product photos (prints tables; `--json` too).

    python bench/bench_quality.py [--data ../shared/datasets/products-photos] [--steps baseline,aspect,rmac,flip,rerank]

Two protocols, both with queries that look like a shopper's photo: each query photo gets a small random crop
(80-95% of each side), a small rotation (up to ±8°) and a JPEG re-encode (quality 60-85), seeded per photo.
- one reference: each product's "gallery" photo (metadata.csv's suggested_role) is the catalog; every other
  photo, perturbed, is a query (84 references, 314 queries).
- all references: every photo in turn is held out and perturbed as the query; the product's other photos (and
  every other product's photos) are the catalog, and products are ranked by their best photo (398 queries).
A hit is the query's own product; recall@k is the share of queries with it in the first k products.

Steps (each adds one thing to the one before): baseline (224 px centre crop, average pool: the descriptor before
issue 13), aspect (384 px shorter side, aspect kept), rmac (regional max-pooling), flip (mirror image added),
rerank (the top 20 verified with SIFT + RANSAC, keypoints of the catalog computed beforehand as at add time, on
the rmac descriptor: flip did not help, so the shipped descriptor leaves it out).

Latency is one query's whole path, timed alone: decode, embed, rank, and for `rerank` the query's keypoints and
their verification. The machine's load average is printed: wall-clock figures from a busy machine are
pessimistic. The CPU time of the same path (all of this process's threads) is printed beside them: it hardly
depends on the load, and on an idle 2-core machine the wall-clock time is about that or less.
Torch runs with OMP_WAIT_POLICY=PASSIVE, as the app does (vpm.embeddings sets it before torch loads).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import csv
import io
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vpm import rerank as verification
from vpm.embeddings import (
    LEGACY_DESCRIPTOR,
    Descriptor,
    EfficientNetEmbedder,
    _efficientnet_network,
)
from vpm.images import decode_image

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "products-photos"
STEPS = {
    "baseline": (LEGACY_DESCRIPTOR, False),
    "aspect": (Descriptor(pooling="avg", flip=False), False),
    "rmac": (Descriptor(pooling="rmac", flip=False), False),
    "flip": (Descriptor(pooling="rmac", flip=True), False),
    "rerank": (Descriptor(pooling="rmac", flip=False), True),  # on what was kept: flip did not help
}
LABELS = {
    "baseline": "baseline: 224 centre crop, average pool",
    "aspect": "+ 384 px, aspect kept",
    "rmac": "+ R-MAC",
    "flip": "+ flip",
    "rerank": "R-MAC (no flip) + rerank top 20 (2 photos each)",
}


def perturb(data: bytes, seed: int) -> bytes:
    """A small crop, a small rotation and a JPEG re-encode, the same for a given seed."""
    rng = random.Random(seed)
    image = decode_image(data).image
    w, h = image.size
    cw, ch = int(w * rng.uniform(0.8, 0.95)), int(h * rng.uniform(0.8, 0.95))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = image.crop((left, top, left + cw, top + ch))
    image = image.rotate(rng.uniform(-8, 8), resample=3, expand=False, fillcolor=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=rng.randint(60, 85))
    return out.getvalue()


def best_per_product(scores: np.ndarray, product_codes: np.ndarray, n_products: int) -> np.ndarray:
    """Each product's best score (-inf for a product with no photo among the references)."""
    best = np.full(n_products, -np.inf, dtype=np.float32)
    np.maximum.at(best, product_codes, scores)
    return best


def run_step(name, embedder, use_rerank, rows, originals, queries, products, ref_features):
    """Both protocols for one step: recall@1/@5 and per-query latency."""
    codes = np.array([products.index(r["product_id"]) for r in rows])
    gallery = np.array([r["suggested_role"] == "gallery" for r in rows])
    started = time.perf_counter()
    ref_vectors = embedder.embed_images([decode_image(d).image for d in originals], batch_size=16)
    index_s = time.perf_counter() - started
    results = {}
    for protocol in ("one reference", "all references"):
        results[protocol] = {"hits1": [], "hits5": [], "ms": [], "cpu_ms": [], "categories": defaultdict(list)}
    for i, data in enumerate(queries):
        protocols = (["one reference"] if not gallery[i] else []) + ["all references"]
        t0, c0 = time.perf_counter(), time.process_time()
        image = decode_image(data).image
        vector = embedder.embed_images([image])[0]
        features = verification.extract(image) if use_rerank else None
        shared_ms = (time.perf_counter() - t0) * 1000
        shared_cpu_ms = (time.process_time() - c0) * 1000
        for protocol in protocols:
            t1, c1 = time.perf_counter(), time.process_time()
            allowed = gallery.copy() if protocol == "one reference" else np.ones(len(rows), bool)
            allowed[i] = False  # the query's own photo is never in its catalog
            idx = np.flatnonzero(allowed)
            scores = ref_vectors[idx] @ vector
            best = best_per_product(scores, codes[idx], len(products))
            order = np.argsort(-best)
            order = order[np.isfinite(best[order])]
            if use_rerank:  # each product by its best photos by cosine (RERANK_PHOTOS), as a search does
                top = order[: verification.RERANK_TOP]
                local = {p: np.flatnonzero(codes[idx] == p) for p in top}
                cands = [[ref_features[idx[r]] for r in local[p][np.argsort(-scores[local[p]])][
                    : verification.RERANK_PHOTOS]] for p in top]
                reranked = verification.rerank([float(best[p]) for p in top], features, cands)
                order = np.concatenate([top[reranked.order], order[verification.RERANK_TOP:]])
            ms = shared_ms + (time.perf_counter() - t1) * 1000
            r = results[protocol]
            r["cpu_ms"].append(shared_cpu_ms + (time.process_time() - c1) * 1000)
            hit1, hit5 = bool(order[0] == codes[i]), bool(codes[i] in order[:5])
            r["hits1"].append(hit1)
            r["hits5"].append(hit5)
            r["ms"].append(ms)
            r["categories"][rows[i]["category"]].append((hit1, hit5))
    out = {"step": name, "label": LABELS[name], "model_id": embedder.model_id,
           "index_img_per_s": round(len(originals) / index_s, 1)}
    for protocol, r in results.items():
        out[protocol] = {
            "queries": len(r["hits1"]),
            "recall@1": round(float(np.mean(r["hits1"])), 3),
            "recall@5": round(float(np.mean(r["hits5"])), 3),
            "p50_ms": round(float(np.percentile(r["ms"], 50)), 1),
            "p95_ms": round(float(np.percentile(r["ms"], 95)), 1),
            "cpu_p50_ms": round(float(np.percentile(r["cpu_ms"], 50)), 1),
            "cpu_p95_ms": round(float(np.percentile(r["cpu_ms"], 95)), 1),
            "categories": {c: [round(float(np.mean([a for a, _ in v])), 3), round(float(np.mean([b for _, b in v])), 3),
                               len(v)] for c, v in sorted(r["categories"].items())},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with metadata.csv and the photos")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from {', '.join(STEPS)}")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()

    with open(args.data / "metadata.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    products = sorted({r["product_id"] for r in rows})
    originals = [(args.data / r["file"]).read_bytes() for r in rows]
    queries = [perturb(data, args.seed * 100_003 + i) for i, data in enumerate(originals)]
    network = _efficientnet_network("cpu")
    import torch

    print(f"{len(rows)} photos of {len(products)} products; torch {torch.get_num_threads()} threads; "
          f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    ref_features = None
    results = []
    for name in [s.strip() for s in args.steps.split(",") if s.strip()]:
        descriptor, use_rerank = STEPS[name]
        if use_rerank and ref_features is None:
            started = time.perf_counter()
            ref_features = [verification.extract(decode_image(d).image) for d in originals]
            print(f"keypoints of {len(originals)} catalog photos: {time.perf_counter() - started:.1f} s "
                  f"(mean {np.mean([len(f) for f in ref_features]):.0f} a photo)")
        embedder = EfficientNetEmbedder(network, "cpu", descriptor=descriptor)
        load = os.getloadavg()[0]
        result = run_step(name, embedder, use_rerank, rows, originals, queries, products, ref_features)
        result["load_average"] = round(load, 1)
        results.append(result)
        a, b = result["one reference"], result["all references"]
        print(f"{LABELS[name]:<36} one ref: r@1 {a['recall@1']:.3f} r@5 {a['recall@5']:.3f} "
              f"p50 {a['p50_ms']:.0f} p95 {a['p95_ms']:.0f} ms | all refs: r@1 {b['recall@1']:.3f} "
              f"r@5 {b['recall@5']:.3f} p50 {b['p50_ms']:.0f} p95 {b['p95_ms']:.0f} ms | "
              f"index {result['index_img_per_s']} img/s | load {load:.1f}", flush=True)

    print()
    print("| step | one ref. r@1 | r@5 | p50 / p95 ms | CPU p50 / p95 ms | all refs r@1 | r@5 | p50 / p95 ms | "
          "index img/s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        a, b = r["one reference"], r["all references"]
        print(f"| {r['label']} | {a['recall@1']:.3f} | {a['recall@5']:.3f} | {a['p50_ms']:.0f} / {a['p95_ms']:.0f} | "
              f"{a['cpu_p50_ms']:.0f} / {a['cpu_p95_ms']:.0f} | {b['recall@1']:.3f} | {b['recall@5']:.3f} | "
              f"{b['p50_ms']:.0f} / {b['p95_ms']:.0f} | {r['index_img_per_s']} | {r['load_average']} |")
    if results:
        last = results[-1]
        print(f"\nper category ({last['label']}): recall@1 / recall@5 / queries")
        for protocol in ("one reference", "all references"):
            print(f"  {protocol}:")
            for category, (r1, r5, n) in last[protocol]["categories"].items():
                print(f"    {category:<26} {r1:.3f} {r5:.3f} {n:>4}")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
