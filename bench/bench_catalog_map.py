"""Benchmark: the catalog map (vpm.core.catalog_map.build_map) for a catalog of N products with P photos each.

The catalog is written straight into a temp folder through the engine (rows and random 512-d unit vectors,
clustered so there are real near-duplicates); nothing is embedded. Prints how long each step took, and JSON.

    python bench/bench_catalog_map.py [--products 10000] [--photos 1] [--dim 512]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vpm.backends import engine
from vpm.backends.lance_catalog import LanceCatalogStore
from vpm.backends.lance_vectors import LanceVectorIndex
from vpm.core import catalog_map
from vpm.core.catalog import Photo, Product
from vpm.core.config import load_settings
from vpm.core.matcher import Matcher
from vpm.core.vector_index import PhotoVector

MODEL = "bench-model"


def build(root: Path, products: int, photos: int, dim: int) -> Matcher:
    settings = load_settings(vpm_data_dir=root, s3_enabled=False)
    where = engine.location(settings)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, dim)).astype(np.float32)
    rows, entries = [], []
    previous = centres[0]
    for i in range(products):
        pid = f"p{i:06d}"
        shots = []
        base = centres[i % 50] + rng.normal(0, 1.5, dim).astype(np.float32)
        if i % 500 == 1:  # now and then a product filed twice: a near-identical copy of the one before
            base = previous + rng.normal(0, 0.01, dim).astype(np.float32)
        previous = base
        for j in range(photos):
            key = f"images/{pid}-{j}.jpg"
            vector = base + rng.normal(0, 0.3, dim).astype(np.float32)
            vector /= np.linalg.norm(vector)
            digest = hashlib.sha256(key.encode()).hexdigest()
            shots.append(Photo(key=key, thumbnail_key=f"thumbnails/{pid}-{j}.webp", sha256=digest))
            entries.append(PhotoVector(key, pid, digest, f"cat{i % 12}", vector))
        rows.append(Product(id=pid, name=f"Product {i}", category=f"cat{i % 12}", photos=shots))
    store = LanceCatalogStore(where)
    for start in range(0, len(rows), 5000):
        store.add(rows[start : start + 5000])
    index = LanceVectorIndex(where, MODEL, dim)
    for start in range(0, len(entries), 5000):
        index.upsert(entries[start : start + 5000])
    return Matcher(settings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--photos", type=int, default=1)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vpm-map-bench-") as folder:
        started = time.perf_counter()
        matcher = build(Path(folder), args.products, args.photos, args.dim)
        setup_s = time.perf_counter() - started
        index = matcher.vector_index(MODEL)
        cpu = time.process_time()
        made = catalog_map.build_map(matcher, index=index)
        cpu = time.process_time() - cpu
    result = {"products": len(made.points), "photos": made.photos_used, "dim": args.dim, "method": made.method,
              "pairs": len(made.pairs), "setup_s": round(setup_s, 2), "cpu_s": round(cpu, 2),
              **{f"{step}_s": round(value, 2) for step, value in made.seconds.items()}}
    print(f"{'step':<12} {'seconds':>8}")
    for step, value in made.seconds.items():
        print(f"{step:<12} {value:>8.2f}")
    print(f"{'cpu (all)':<12} {cpu:>8.2f}")
    print(f"{result['products']:,} products, {result['photos']:,} photos, {args.dim}-d, {made.method}, "
          f"{result['pairs']} possible duplicates (catalog written in {setup_s:.1f} s, not counted)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
