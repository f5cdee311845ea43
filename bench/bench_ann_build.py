"""The IVF-PQ index build alone, at several sizes: the unit cost docs/scaling.md extrapolates from.

    PYTHONPATH=. python bench/bench_ann_build.py 100000 200000 500000 [--json]

For each size: a fresh local table filled with bench_scale.py's synthetic 512-d vectors (the same generator and
batches), compacted, then LanceVectorIndex.build_ann() timed on its own: wall time and the CPU time of the process
(all of LanceDB's threads). On a shared machine the wall time mostly measures the wait for a core; the CPU time is
the figure to compare (vpm/core/capacity_units.py keeps it as ann_build_cpu_s_<size>). One line a size on stderr,
one JSON object a size on stdout with --json. Temporary data is removed after each size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def build_once(n: int) -> dict:
    from bench_scale import MODEL_ID, make_products, wait_for_maintenance

    from vpm.backends import engine, lance_vectors
    from vpm.backends.lance_vectors import LanceVectorIndex
    from vpm.core.config import load_settings

    from synthetic import make_catalog

    catalog = make_catalog(n, photos_per_product=1, centres=2000, spread=0.85, n_categories=300, seed=7)
    with tempfile.TemporaryDirectory(prefix="vpm-ann-build-") as folder:
        index = LanceVectorIndex(engine.location(load_settings(vpm_data_dir=folder)), MODEL_ID, catalog.dim,
                                 exists=False)
        for start in range(0, n, 10_000):  # bench_scale.py's default batch
            index.upsert(make_products(catalog, start, min(n, start + 10_000))[1])
        wait_for_maintenance()
        index.table.optimize()
        wall, cpu = time.perf_counter(), time.process_time()
        index.build_ann()
        result = {"photos": n, "partitions": max(1, n // lance_vectors.ANN_PARTITION_ROWS),
                  "build_s": round(time.perf_counter() - wall, 1), "build_cpu_s": round(time.process_time() - cpu, 1),
                  "load_avg": round(os.getloadavg()[0], 2)}
        engine.forget()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", type=int, nargs="+", help="photos, e.g. 100000 200000 500000")
    parser.add_argument("--json", action="store_true", help="one JSON object a size on stdout")
    args = parser.parse_args()
    if any(not 1_000 <= n <= 2_000_000 for n in args.sizes):
        parser.error("each size must be 1,000 to 2,000,000 photos (the vectors are generated in memory)")
    for n in args.sizes:
        result = build_once(n)
        print(f"{n:>10,} photos  {result['partitions']:>6,} partitions  {result['build_s']:>8,.1f} s wall  "
              f"{result['build_cpu_s']:>8,.1f} s CPU  load {result['load_avg']}", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
