"""Index load time and search latency for synthetic catalogs of 10k, 100k and 1M vectors (prints a table).

    /work/venv/bin/python bench/bench_search.py                 # 512-d: 10k, 100k, 1M
    /work/venv/bin/python bench/bench_search.py --dim 1280 --sizes 10000 100000

Each size is written as one compacted cache segment to a LocalStorage in a temporary folder (what
`python -m vpm index` leaves behind), then loaded the way a fresh Matcher loads it:
  refresh  = list the model's folder + read + verify the segment (format, model, shape, finite, unit norm)
  build    = gather the catalog's vectors by image SHA-256 into one matrix + category codes (SearchIndex)
and searched with exact cosine top-10: one query at a time (median of N), a batch of 16 queries (per query),
and one query with a category filter (1 of 20 categories).

On a small shared VM, OpenBLAS's threads can make a single mat-vec several times slower (they spin against
other processes); compare with OPENBLAS_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vpm.index import SearchIndex, VectorCache, encode_segment  # noqa: E402
from vpm.storage import LocalStorage  # noqa: E402

MODEL = "bench-model"
PREFIX = "metadata/embeddings/"


def unit_rows(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in chunks: keeps the float64 temporaries small
        block = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def fake_shas(n: int) -> list[str]:
    return [hashlib.sha256(i.to_bytes(8, "little")).hexdigest() for i in range(n)]


def timed(fn, repeat: int) -> float:
    """Median wall time of `fn` in ms."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def bench(n: int, dim: int, repeat: int) -> dict[str, float]:
    rng = np.random.default_rng(n)
    shas = fake_shas(n)
    vectors = unit_rows(n, dim, rng)
    categories = [f"category-{i % 20}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="vpm-bench-") as root:
        storage = LocalStorage(root)
        storage.check_access()
        body = encode_segment(MODEL, dim, shas, vectors)
        size_mb = len(body) / 1e6
        storage.put(f"{PREFIX}{MODEL}/00000000000000000001-bench.npz", body)
        del body, vectors
        gc.collect()

        start = time.perf_counter()
        cache = VectorCache(storage, PREFIX, MODEL, dim)
        cache.refresh()
        refresh_ms = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        index = SearchIndex(cache.get(shas), categories)
        build_ms = (time.perf_counter() - start) * 1000

        queries = unit_rows(16, dim, rng)
        single_ms = timed(lambda: index.search(queries[0], top_k=10), repeat)
        batch_ms = timed(lambda: index.search(queries, top_k=10), max(3, repeat // 4)) / len(queries)
        filtered_ms = timed(lambda: index.search(queries[0], top_k=10, categories=["category-3"]), repeat)
    return {
        "size_mb": size_mb, "refresh_ms": refresh_ms, "build_ms": build_ms, "single_ms": single_ms,
        "batch_ms": batch_ms, "filtered_ms": filtered_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=21, help="timed repetitions per search figure (median)")
    args = parser.parse_args()

    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"exact cosine search, {args.dim}-d float32, top-10, numpy {np.__version__}, local storage, "
          f"OPENBLAS_NUM_THREADS={blas}, {os.cpu_count()} CPUs")
    header = (
        f"{'vectors':>10} {'file MB':>8} {'refresh ms':>11} {'build ms':>9} {'1 query ms':>11} "
        f"{'batch16 ms/q':>13} {'1 cat ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        r = bench(n, args.dim, args.repeat if n < 1_000_000 else max(5, args.repeat // 3))
        print(
            f"{n:>10,} {r['size_mb']:>8.1f} {r['refresh_ms']:>11.0f} {r['build_ms']:>9.0f} {r['single_ms']:>11.2f} "
            f"{r['batch_ms']:>13.2f} {r['filtered_ms']:>9.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
