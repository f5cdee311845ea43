"""Scale benchmark of the catalog engine: N synthetic products in LanceDB tables, local folder or S3 (moto).

    PYTHONPATH=. python bench/bench_scale.py --products 100000 [--backend local|s3] [--json]
    PYTHONPATH=. python bench/bench_scale.py --products 10000 --backend s3 --json --photos-per-product 3

Fills a catalog of N products (K photos each, 1 by default) through the real contracts: LanceCatalogStore.add
and LanceVectorIndex.upsert, a batch of --batch products at a time. No model and no image files: ids, keys and
SHA-256s are made up, and the 512-d vectors are shaped like real embeddings (bench/synthetic.py: scattered
around a few thousand centres, cosine ~0.85 to their centre; uniformly random vectors have no near neighbours
and make every approximate index look blind). After the fill it waits for the background maintenance the
writes started, compacts both tables, builds the IVF-PQ index (build_ann(), timed) and the scalar indexes, as a
catalog at rest would have them. Then it measures, each figure the median of repeated calls after a warm-up:

  get_ms                 CatalogStore.get(random id)
  list_page_ms           CatalogStore.page(limit=50) at a random offset (newest first, as the catalog page)
  list_page_filtered_ms  the same with one category filter;  list_page_name_ms: with a name substring
  category_counts_ms     category_counts() on a new store (uncached: what the first catalog page pays)
  search_exact_ms        the exact top-10 of each of --queries perturbed copies of catalog photos: through the
                         index's in-memory path while the photos fit (<= MEMORY_MAX_PHOTOS), else brute-force
                         numpy over the generated vectors (search_numpy_ms is that numpy cost at every size)
  warm_search_ms         LanceVectorIndex.query() on an unchanged table, in-memory path (sizes where it applies)
  search_ann_ms          query() answered by LanceDB with the IVF-PQ index (MEMORY_MAX_PHOTOS patched to 0);
  recall_at_10           its products vs the exact top-10; search_filtered_ann_ms / recall_filtered_at_10 with
                         the query's category as filter
  search_ms              what the app's search costs at this size: warm_search_ms or, above the memory limit,
                         search_ann_ms
  cold_open_s            a fresh `python` process opens the location and answers one search (vector query +
                         the hit products): from spawning it to the answer, Python and lancedb imports included
                         (cold_open_after_import_s excludes them); median of --cold-runs. The OS file cache is
                         warm: this is a process start, not a machine start
  add_ms, add_vector_ms  one product added through LanceCatalogStore.add, then its photo's vector through
                         LanceVectorIndex.upsert (what an upload costs besides the file and the embedding); the
                         background compaction every few adds starts is waited for between adds, untimed
                         (add_maintenance_s); owners_of_ms and vectors_for_shas_ms are the upload's other
                         table reads (duplicate check, vector reuse), upload_db_ms the four together
  maintenance_cpu_per_add_s  background maintenance per product added (vpm.backends.maintenance: compaction, index deltas,
                         tier merges, the indexes a grown table needs): process CPU while its passes ran during the
                         adds, per add; maintenance_per_add_x the same as a multiple of the add itself (add_ms +
                         add_vector_ms). --no-pylance measures the fallback (LanceDB's optimize(), as before pylance)
  peak_rss_mb            peak RSS (VmHWM) of the cold-open process (the app's); peak_rss_fill_mb of this process,
                         which also holds every generated vector (and, on s3, moto's in-memory bucket)

A table is printed on stderr as it goes; --json prints one JSON object on stdout. The JSON is always written to
bench/results/scale-<backend>[-rtt<ms>]-<N>.json (git-ignored). `--backend s3` starts moto's ThreadedMotoServer on
127.0.0.1 in this process with a fresh bucket; with `--rtt-ms 40` the catalog is filled straight, and every figure
after the fill (reads, search, cold start, adds) goes through ../shared/tools/latency_proxy.py at that round trip; `--backend local` uses a temporary folder (or --dir). Temporary
data is removed at the end unless --keep.

On moto, every ranged GET reads the whole object (moto 5.2 slices a full copy of it), so random reads into big
data files cost in proportion to the file: at 100k products an IVF-PQ search takes seconds there, which real S3
would not. For that size use e.g. `--queries 20 --ann-queries 2 --adds 10` (fewer than 24 adds also start no
compaction, whose label-list index update takes minutes on moto).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))

# LanceDB 0.40 logs a deprecation warning on every vector search that selects columns without `_distance`
# (LanceVectorIndex._query_engine does): thousands of lines here. Errors still show.
os.environ.setdefault("LANCEDB_LOG", "error")

MAX_PRODUCTS = 2_000_000
MODEL_ID = "synthetic-512"
REGION = "us-east-1"
CREATED = "2026-01-01T00:00:00+00:00"

# Targets from the issue (2 cores; the N = 1,000,000 local ones are evaluated at every size, for comparison).
TARGETS = {
    "add_ms": 50.0,
    "get_ms": 10.0,
    "list_page_ms": 50.0,
    "search_ms": 20.0,
    "recall_at_10": 0.95,  # a minimum
    "cold_open_s": 3.0,
    "peak_rss_mb": 1536.0,
}
WARM_SEARCH_TARGET_MS = {"local": 5.0, "s3": 50.0}  # 10k products, embedding excluded


def log(message: str = "") -> None:
    print(message, file=sys.stderr, flush=True)


def rss_mb() -> float:
    """This process's peak resident set in MB.

    VmHWM from /proc, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child started by
    subprocess would report its parent's peak (vfork shares the parent's memory until exec).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def p90_ms(samples: list[float]) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1000, 3)


class RequestCounter(logging.Handler):
    """Counts the requests moto's server answers (werkzeug logs one line each), to show S3 requests per call."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self.per_call: float | None = None  # of the last timed_calls

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


REQUESTS: RequestCounter | None = None  # set on the s3 backend


def timed_calls(fn, arguments: list, warmup: int = 3) -> list[float]:
    """Wall time (s) of fn(argument) for each argument, after `warmup` untimed calls."""
    for argument in arguments[:warmup]:
        fn(argument)
    samples = []
    before = REQUESTS.count if REQUESTS else 0
    for argument in arguments:
        start = time.perf_counter()
        fn(argument)
        samples.append(time.perf_counter() - start)
    if REQUESTS:
        time.sleep(0.05)  # werkzeug logs a request just after answering it
        REQUESTS.per_call = (REQUESTS.count - before) / max(1, len(arguments))
    return samples


class Report:
    """The figures as they are measured: a line on stderr each, and the JSON object at the end."""

    def __init__(self) -> None:
        self.data: dict = {}
        self.p90: dict = {}
        self.requests: dict = {}

    def put(self, key: str, value, unit: str = "", note: str = "") -> None:
        self.data[key] = value
        shown = f"{value:,.3f}" if isinstance(value, float) else ("-" if value is None else f"{value:,}" if
                                                                 isinstance(value, int) else str(value))
        log(f"  {key:<28} {shown:>12} {unit:<3} {note}")

    def times(self, key: str, samples: list[float], note: str = "") -> None:
        self.p90[key] = p90_ms(samples)
        if REQUESTS is not None and REQUESTS.per_call is not None:
            self.requests[key] = round(REQUESTS.per_call, 1)
            note = f"{note} [{REQUESTS.per_call:,.1f} S3 requests/call]".strip()
            REQUESTS.per_call = None
        self.put(key, median_ms(samples), "ms", f"(median of {len(samples)}, p90 {self.p90[key]:,.2f}) {note}".rstrip())


# ------------------------------------------------------------------------------------------------ backends


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def backend(args):
    """(settings overrides, description): a fresh local folder or a fresh bucket on moto's HTTP server."""
    if args.backend == "local":
        if args.dir:
            root = Path(args.dir).expanduser().resolve()
            if root.exists() and any(root.iterdir()):
                raise SystemExit(f"--dir {root} is not empty: give an empty or new folder")
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(tempfile.mkdtemp(prefix="vpm-scale-"))
        overrides = {"s3_enabled": False, "vpm_data_dir": str(root)}
        try:
            yield overrides, f"local folder {root}"
        finally:
            if args.keep:
                log(f"kept the catalog in {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
        return

    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    global REQUESTS  # noqa: PLW0603 - the one counter the S3 server patches report into
    REQUESTS = RequestCounter()
    werkzeug = logging.getLogger("werkzeug")  # one INFO line per request: counted, not printed
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    werkzeug.handlers = [REQUESTS]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = f"vpm-scale-{uuid.uuid4().hex[:10]}"
    # Fake keys: moto accepts any. They are passed explicitly so no real profile is ever looked up.
    boto3.client("s3", region_name=REGION, endpoint_url=endpoint, aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    overrides = {
        "s3_enabled": True, "s3_bucket_name": bucket, "s3_endpoint_url": endpoint, "s3_region": REGION,
        "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
    }
    proxy = None
    try:
        description = f"s3://{bucket} on moto at {endpoint}"
        if args.rtt_ms:
            proxy, slow = start_latency_proxy(port, args.rtt_ms)
            description += f", measured through a {args.rtt_ms:g} ms round trip at {slow}"
            args.measure_endpoint = slow
        yield overrides, description
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait()
        if args.keep:
            log("--keep has no effect on s3: moto's bucket lives in this process's memory")
        server.stop()


def start_latency_proxy(upstream_port: int, rtt_ms: float):
    """../shared/tools/latency_proxy.py in front of moto's server (every byte delayed by half the round trip each
    way): (the process, its endpoint). Filling the catalog goes straight to the server; every figure after it goes
    through the proxy, as an app's reads would reach a bucket in a nearby region."""
    tool = Path(__file__).resolve().parent.parent.parent / "shared" / "tools" / "latency_proxy.py"
    if not tool.is_file():
        raise SystemExit(f"--rtt-ms needs {tool} (the workplace's latency proxy): not found")
    listen = free_port()
    proxy = subprocess.Popen([sys.executable, str(tool), "--listen", f"127.0.0.1:{listen}",
                              "--upstream", f"127.0.0.1:{upstream_port}", "--rtt-ms", str(rtt_ms)])
    deadline = time.time() + 10
    while time.time() < deadline:  # listening once a connection is accepted
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", listen)) == 0:
                return proxy, f"http://127.0.0.1:{listen}"
        time.sleep(0.05)
    proxy.kill()
    raise SystemExit("the latency proxy did not start listening within 10 s")


def stored_mb(settings) -> float:
    """Bytes under the tables' prefix (local folder or bucket)."""
    from vpm.backends import engine

    where = engine.location(settings)
    if not settings.s3_enabled:
        return round(sum(p.stat().st_size for p in Path(where.uri).rglob("*") if p.is_file()) / 1e6, 1)
    import boto3

    client = boto3.client(
        "s3", region_name=REGION, endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.aws_access_key_id.get_secret_value(),
        aws_secret_access_key=settings.aws_secret_access_key.get_secret_value(),
    )
    total = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket_name,
                                                                  Prefix=where.prefix):
        total += sum(obj["Size"] for obj in page.get("Contents", ()))
    return round(total / 1e6, 1)


# -------------------------------------------------------------------------------------------------- filling


def make_products(catalog, start: int, stop: int):
    """Products start..stop-1 with their photos, and their PhotoVectors (validation skipped: made here)."""
    from vpm.core.catalog import Photo, Product
    from vpm.core.vector_index import PhotoVector

    from synthetic import fake_sha256s

    k = catalog.photos_per_product
    shas = fake_sha256s((stop - start) * k)
    products, entries = [], []
    for i in range(start, stop):
        pid = catalog.product_id(i)
        category = catalog.category_of(i)
        photos = []
        for j in range(k):
            sha = shas[(i - start) * k + j]
            key = catalog.photo_key(i, j)
            photos.append(Photo.model_construct(key=key, thumbnail_key=catalog.thumbnail_key(i, j), sha256=sha,
                                                width=800, height=800, added_at=CREATED))
            entries.append(PhotoVector(key, pid, sha, category, catalog.vectors[i * k + j]))
        products.append(Product.model_construct(
            id=pid, name=f"Synthetic {category.lower()} {i}", category=category, price=float(1 + i % 500),
            description=None, attributes={}, photos=photos, created_at=CREATED, updated_at=None, revision=0,
        ))
    return products, entries


def background_maintenance() -> list[threading.Thread]:
    """The maintenance / index threads the engine started (vpm.backends.maintenance, LanceVectorIndex's IVF-PQ build)."""
    return [t for t in threading.enumerate() if t.name.startswith(("maintain-", "ann-"))]


def wait_for_maintenance() -> float:
    from vpm.backends import maintenance

    start = time.perf_counter()
    while True:
        maintenance.wait_idle()
        threads = background_maintenance()
        if not threads:
            return time.perf_counter() - start
        for thread in threads:
            thread.join()


def fill(catalog, store, index, batch: int, report: Report) -> None:
    n = catalog.n_products
    start_time = time.perf_counter()
    next_report = 0.0
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        products, entries = make_products(catalog, start, stop)
        index.upsert(entries)  # vectors before the rows that point at them, as the bulk import does
        taken = store.add(products)
        if taken:
            raise SystemExit(f"the fill found {len(taken)} ids taken already: is the location empty?")
        elapsed = time.perf_counter() - start_time
        if elapsed >= next_report or stop == n:
            rate = stop / elapsed
            busy = " (background maintenance running)" if background_maintenance() else ""
            log(f"    filled {stop:>10,} / {n:,} products  {rate:>8,.0f}/s  ETA {(n - stop) / rate:>5.0f} s{busy}")
            next_report = elapsed + 10.0
    fill_s = time.perf_counter() - start_time
    report.put("fill_s", round(fill_s, 2), "s", f"({n / fill_s:,.0f} products/s, batches of {batch:,})")
    report.put("fill_wait_maintenance_s", round(wait_for_maintenance(), 2), "s",
               "(background compaction/indexing still running when the fill ended)")


def settle(store, index, report: Report) -> None:
    """Bring both tables to rest: compacted, IVF-PQ and scalar indexes built (build_ann timed on its own)."""
    start = time.perf_counter()
    store.table.optimize()
    index.table.optimize()
    report.put("compact_s", round(time.perf_counter() - start, 2), "s", "(optimize() of both tables)")

    from vpm.backends import lance_vectors

    rows = index.count()
    start = time.perf_counter()
    index.build_ann()
    report.put("ann_build_s", round(time.perf_counter() - start, 2), "s",
               f"(IVF-PQ, {max(1, rows // lance_vectors.ANN_PARTITION_ROWS)} partitions, {rows:,} vectors)")
    report.data["ann_partitions"] = max(1, rows // lance_vectors.ANN_PARTITION_ROWS)
    start = time.perf_counter()
    store.ensure_indexes()
    index._maintain()  # its scalar indexes (the IVF-PQ index exists now, so it is not built again)
    report.put("scalar_index_s", round(time.perf_counter() - start, 2), "s", "(btree/bitmap/label_list)")
    wait_for_maintenance()
    summary = {t: {"rows": s.rows, "fragments": s.fragments, "indexes": s.indexes}
               for t, s in (("products", _summary(store.table)), ("vectors", _summary(index.table)))}
    report.data["tables"] = summary
    log(f"  tables: {json.dumps(summary)}")


def _summary(table):
    from vpm.backends import engine

    return engine.summarize(table, "")


# ----------------------------------------------------------------------------------------------- measuring


def measure_reads(catalog, store, rng: random.Random, repeat: int, report: Report) -> None:
    from vpm.backends.lance_catalog import LanceCatalogStore

    n = catalog.n_products
    ids = [catalog.product_id(rng.randrange(n)) for _ in range(repeat)]
    report.times("get_ms", timed_calls(store.get, ids))

    offsets = [rng.randrange(max(1, n - 50)) for _ in range(repeat)]
    report.times("list_page_ms", timed_calls(lambda o: store.page(offset=o, limit=50), offsets))

    # One category (about N / categories products), at a random offset within it.
    cats = [catalog.categories[int(catalog.product_category[rng.randrange(n)])] for _ in range(repeat)]
    sizes = {c: store.count([c]) for c in set(cats)}
    pairs = [(c, rng.randrange(max(1, sizes[c] - 50))) for c in cats]
    report.times("list_page_filtered_ms", timed_calls(lambda p: store.page(offset=p[1], limit=50, categories=[p[0]]),
                                                      pairs),
                 f"(one category, ~{statistics.median(sizes.values()):,.0f} products)")
    few = max(3, repeat // 5)
    words = [str(rng.randrange(n)) for _ in range(few)]
    report.times("list_page_name_ms", timed_calls(lambda w: store.page(limit=50, name_contains=w), words),
                 "(name contains a number)")

    samples = []
    for _ in range(3):
        fresh = LanceCatalogStore(store.where, exists=True)
        start = time.perf_counter()
        fresh.category_counts()
        samples.append(time.perf_counter() - start)
    report.times("category_counts_ms", samples, "(uncached, a new store each)")


def exact_truth(catalog, queries, query_rows, report: Report):
    """Exact product top-10 of each query, unfiltered and within the query's own category, by numpy over the
    generated vectors; times the unfiltered brute force (search_numpy_ms)."""
    import numpy as np

    from vpm.core.vector_index import best_per_product

    codes = catalog.product_codes()
    ids = catalog.product_ids(0, catalog.n_products)
    keys = [""] * catalog.n_photos  # photo keys are not compared
    everything = np.arange(catalog.n_photos)
    photo_category = np.repeat(catalog.product_category, catalog.photos_per_product)
    truth, truth_filtered, filters, samples = [], [], [], []
    for q, row in zip(queries, query_rows, strict=True):
        start = time.perf_counter()
        scores = catalog.vectors @ q
        result = best_per_product(scores, codes, ids, keys, everything, 10, None)
        samples.append(time.perf_counter() - start)
        truth.append([h.product_id for h in result.hits])
        category = int(photo_category[row])
        filters.append(catalog.categories[category])
        rows = np.flatnonzero(photo_category == category)
        truth_filtered.append([h.product_id for h in best_per_product(scores, codes, ids, keys, rows, 10, None).hits])
    report.times("search_numpy_ms", samples, "(brute force over the generated vectors, + best per product)")
    return truth, truth_filtered, filters, samples


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    per_query = [len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True) if t]
    return round(statistics.fmean(per_query), 4)


def measure_search(catalog, where, args, report: Report) -> None:
    import numpy as np

    from vpm.backends import lance_vectors
    from vpm.backends.lance_vectors import LanceVectorIndex

    queries, rows = catalog.perturbed_queries(args.queries, similarity=args.query_similarity)
    truth, truth_filtered, filters, numpy_samples = exact_truth(catalog, queries, rows, report)

    memory = catalog.n_photos <= lance_vectors.MEMORY_MAX_PHOTOS
    report.data["search_path"] = "memory" if memory else "ann"
    if memory:
        index = LanceVectorIndex(where, MODEL_ID, None, exists=True)
        start = time.perf_counter()
        index.query(queries[0])
        report.put("snapshot_load_ms", round((time.perf_counter() - start) * 1000, 1), "ms",
                   "(first query of a new index: reads every vector into memory)")
        found = []
        samples = timed_calls(lambda q: found.append([h.product_id for h in index.query(q, k=10)[0].hits]),
                              list(queries))
        found = found[3:]  # the warm-up calls
        report.times("search_exact_ms", samples, "(in-memory path over the queries)")
        report.put("exact_agreement", recall(found, truth), "", "(in-memory path vs numpy ground truth)")
        picks = [queries[i % len(queries)] for i in range(args.repeat)]
        report.times("warm_search_ms", timed_calls(lambda q: index.query(q, k=10), picks),
                     "(query() on an unchanged table)")
        report.times("warm_search_filtered_ms",
                     timed_calls(lambda i: index.query(queries[i], k=10, categories=[filters[i]]),
                                 [i % len(queries) for i in range(args.repeat)]))
    else:
        report.data["search_exact_ms"] = median_ms(numpy_samples)
        report.p90["search_exact_ms"] = p90_ms(numpy_samples)
        report.data["snapshot_load_ms"] = report.data["exact_agreement"] = None
        report.data["warm_search_ms"] = report.data["warm_search_filtered_ms"] = None
        log(f"  {'search_exact_ms':<28} {report.data['search_exact_ms']:>12,.3f} ms  (= search_numpy_ms: the "
            "photos exceed MEMORY_MAX_PHOTOS)")

    saved = lance_vectors.MEMORY_MAX_PHOTOS
    lance_vectors.MEMORY_MAX_PHOTOS = 0  # LanceDB answers, with the IVF-PQ index
    try:
        index = LanceVectorIndex(where, MODEL_ID, None, exists=True)
        n_ann = min(len(queries), args.ann_queries or len(queries))
        warm = min(3, n_ann)
        report.data["ann_queries"] = n_ann
        found = []
        samples = timed_calls(lambda q: found.append([h.product_id for h in index.query(q, k=10)[0].hits]),
                              list(queries[:n_ann]), warmup=warm)
        report.times("search_ann_ms", samples, "(LanceDB IVF-PQ, nprobes "
                     f"{lance_vectors.ANN_NPROBES}, refine {lance_vectors.ANN_REFINE})")
        report.put("recall_at_10", recall(found[warm:], truth[:n_ann]), "", f"(vs exact, {n_ann} queries)")
        found = []
        samples = timed_calls(lambda i: found.append(
            [h.product_id for h in index.query(queries[i], k=10, categories=[filters[i]])[0].hits]),
            list(range(n_ann)), warmup=warm)
        report.times("search_filtered_ann_ms", samples, "(the query's category, prefiltered)")
        report.put("recall_filtered_at_10", recall(found[warm:], truth_filtered[:n_ann]), "",
                   "(vs exact within the category)")
        start_ms = []
        for _ in range(20):
            start = time.perf_counter()
            index._memory_snapshot()
            start_ms.append(time.perf_counter() - start)
        report.times("query_overhead_ms", start_ms, "(the per-query size/index check before LanceDB is asked)")
    finally:
        lance_vectors.MEMORY_MAX_PHOTOS = saved
    report.data["search_ms"] = report.data["warm_search_ms"] if memory else report.data["search_ann_ms"]
    np.save(args.workdir / "query.npy", queries[:8])


def measure_cold_open(settings_overrides, args, report: Report) -> None:
    spec = {"settings": settings_overrides, "model": MODEL_ID, "query": str(args.workdir / "query.npy"),
            "repeat": 20}
    spec_path = args.workdir / "cold.json"
    spec_path.write_text(json.dumps(spec))
    runs = []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(args.cold_runs):
        spawned = time.time()
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--cold-open-child", str(spec_path)],
                              check=False, capture_output=True, text=True, env=env, cwd=str(args.workdir), timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"the cold-open process failed:\n{proc.stderr[-3000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        child["cold_open_s"] = child["answered"] - spawned
        child["python_start_s"] = child["started"] - spawned
        runs.append(child)

    def med(key):
        return round(statistics.median(r[key] for r in runs), 3)

    note = f"(median of {len(runs)} fresh processes)"
    report.put("cold_open_s", med("cold_open_s"), "s", f"{note}: spawn -> first search answered")
    report.put("cold_python_start_s", med("python_start_s"), "s", "(interpreter start, to the script's first line)")
    report.put("cold_import_s", med("import_s"), "s", "(numpy, pyarrow, lancedb, vpm)")
    report.put("cold_open_after_import_s", med("after_import_s"), "s", "(open + first query + its products)")
    report.put("cold_first_query_s", med("first_query_s"), "s", "(of which the vector query)")
    report.put("cold_first_page_s", med("first_page_s"), "s", "(then a first catalog page of 50)")
    report.put("cold_proc_search_ms", med("warm_search_ms"), "ms", "(the same process's next searches, median)")
    report.put("peak_rss_cold_open_mb", round(max(r["peak_rss_mb"] for r in runs), 1), "MB",
               "(max over the cold-open processes, after 20 more searches)")
    report.put("peak_rss_cold_imports_mb", round(max(r["peak_rss_imported_mb"] for r in runs), 1), "MB",
               "(of which: after the imports)")
    report.put("peak_rss_cold_answer_mb", round(max(r["peak_rss_answered_mb"] for r in runs), 1), "MB",
               "(of which: after the first answer)")
    report.data["peak_rss_mb"] = report.data["peak_rss_cold_open_mb"]


def cold_open_child(spec_path: str) -> None:
    """Runs in a fresh process: open the location, answer one search, report times (wall clock) as JSON."""
    started = time.time()
    import lancedb  # noqa: F401
    import numpy as np
    import pyarrow  # noqa: F401

    from vpm.backends import engine
    from vpm.backends.lance_catalog import LanceCatalogStore
    from vpm.backends.lance_vectors import LanceVectorIndex
    from vpm.core.config import load_settings

    imported = time.time()
    rss_imported = rss_mb()
    spec = json.loads(Path(spec_path).read_text())
    queries = np.load(spec["query"])
    settings = load_settings(**spec["settings"])
    where = engine.location(settings)
    index = LanceVectorIndex(where, spec["model"], None, exists=True)
    store = LanceCatalogStore(where, exists=True)
    t0 = time.time()
    (result,) = index.query(queries[0], k=10)
    queried = time.time()
    products = store.get_many([h.product_id for h in result.hits])
    answered = time.time()
    rss_answered = rss_mb()
    assert len(products) == len(result.hits) > 0, "the cold search found nothing"
    store.page(limit=50)
    paged = time.time()
    samples = []
    for i in range(spec["repeat"]):
        start = time.perf_counter()
        index.query(queries[(i + 1) % len(queries)], k=10)
        samples.append(time.perf_counter() - start)
    print(json.dumps({
        "started": started, "import_s": imported - started, "after_import_s": answered - imported,
        "first_query_s": queried - t0, "answered": answered, "first_page_s": paged - answered,
        "warm_search_ms": statistics.median(samples) * 1000, "peak_rss_mb": rss_mb(),
        "peak_rss_imported_mb": rss_imported, "peak_rss_answered_mb": rss_answered,
    }))


def measure_adds(catalog, store, index, rng: random.Random, count: int, report: Report) -> None:
    import numpy as np

    from vpm.backends import maintenance as background
    from vpm.core.catalog import Photo, new_product_id, validate_product
    from vpm.core.vector_index import PhotoVector

    from synthetic import fake_sha256s, noise_sigma, unit_rows

    nrng = np.random.default_rng(rng.randrange(2**32))
    add_samples, vector_samples, owner_samples, reuse_samples, maintenance = [], [], [], [], []
    warmup = 3
    before = background.totals()
    for n in range(count + warmup):
        category = catalog.categories[rng.randrange(len(catalog.categories))]
        sha = fake_sha256s(1)[0]
        pid = new_product_id()
        key = f"images/uploads/{pid}-{uuid.uuid4().hex[:8]}.jpg"
        product = validate_product(id=pid, name=f"Uploaded {category.lower()}", category=category, price=9.5,
                                   photos=[Photo(key=key, thumbnail_key=key.replace("images/", "thumbnails/"),
                                                 sha256=sha, width=800, height=600)])
        centre = catalog.centres[nrng.integers(len(catalog.centres))]
        vector = unit_rows((centre + nrng.standard_normal(catalog.dim, dtype=np.float32)
                            * noise_sigma(0.85, catalog.dim))[None, :].astype(np.float32))[0]
        start = time.perf_counter()
        if store.owners_of([sha]):  # the upload's duplicate check (derived_data.refuse_duplicates)
            raise SystemExit("a made-up SHA-256 is in the catalog already")
        checked = time.perf_counter()
        index.vectors_for_shas([sha])  # the upload's "embedded these bytes before?" (derived_data.store_vectors)
        reused = time.perf_counter()
        if n >= warmup:
            owner_samples.append(checked - start)
            reuse_samples.append(reused - checked)
        start = time.perf_counter()
        if store.add([product]):
            raise SystemExit(f"the id {pid} was taken")
        added = time.perf_counter()
        index.upsert([PhotoVector(key, pid, sha, category, vector)])
        done = time.perf_counter()
        waited = wait_for_maintenance()
        if n >= warmup:
            add_samples.append(added - start)
            vector_samples.append(done - added)
            if waited > 0.05:  # a compaction ran (a thread that merely checked and left takes microseconds)
                maintenance.append(waited)
    report.times("add_ms", add_samples, "(one product, LanceCatalogStore.add)")
    report.times("add_vector_ms", vector_samples, "(its vector, LanceVectorIndex.upsert)")
    report.times("owners_of_ms", owner_samples, "(the upload's duplicate check: owners_of one SHA-256)")
    report.times("vectors_for_shas_ms", reuse_samples, "(the upload's vector reuse check: one SHA-256)")
    upload = [a + b + c + d for a, b, c, d in zip(add_samples, vector_samples, owner_samples, reuse_samples, strict=True)]
    report.times("upload_db_ms", upload, "(the four together: an upload's table work, files and model excluded)")
    report.put("add_maintenance_runs", len(maintenance), "", "(background compactions the adds started, waited "
               "for between adds, untimed above)")
    report.put("add_maintenance_s", round(statistics.median(maintenance), 2) if maintenance else None, "s",
               "(median wait for one)")
    spent = background.totals()
    adds = count + warmup
    per_add_cpu = (spent.cpu_s - before.cpu_s) / adds
    add_itself = (statistics.median(add_samples) + statistics.median(vector_samples)) if add_samples else None
    report.put("maintenance_cpu_per_add_s", round(per_add_cpu, 4), "s",
               f"(background maintenance per product added: process CPU while its {spent.passes - before.passes} "
               f"passes ran, over {adds} adds)")
    report.put("maintenance_wall_per_add_s", round((spent.wall_s - before.wall_s) / adds, 4), "s",
               "(the same passes' wall time, per add)")
    report.put("maintenance_per_add_x", round(per_add_cpu / add_itself, 1) if add_itself else None, "x",
               "(that CPU as a multiple of the add itself: add_ms + add_vector_ms, medians; target <= 10)")


# ---------------------------------------------------------------------------------------------------- main


def machine() -> dict:
    import lancedb
    import numpy
    import pyarrow

    return {
        "cores": os.cpu_count(), "python": platform.python_version(), "lancedb": lancedb.__version__,
        "pyarrow": pyarrow.__version__, "numpy": numpy.__version__, "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def evaluate_targets(data: dict, backend_name: str) -> dict:
    out = {}
    for key, target in TARGETS.items():
        value = data.get(key)
        met = None if value is None else (value >= target if key == "recall_at_10" else value <= target)
        out[key] = {"target": target, "value": value, "met": met}
    if data.get("warm_search_ms") is not None and data["products"] <= 10_000:  # the small-catalog promise
        target = WARM_SEARCH_TARGET_MS[backend_name]
        out["warm_search_ms"] = {"target": target, "value": data["warm_search_ms"],
                                 "met": data["warm_search_ms"] <= target}
    return out


def run(args) -> dict:
    from vpm.backends import engine
    from vpm.backends.lance_catalog import LanceCatalogStore
    from vpm.backends.lance_vectors import LanceVectorIndex
    from vpm.core.config import load_settings

    from synthetic import make_catalog

    report = Report()
    report.data.update(
        products=args.products, photos=args.products * args.photos_per_product,
        photos_per_product=args.photos_per_product, backend=args.backend, dim=512, rtt_ms=args.rtt_ms,
        date=datetime.now(UTC).isoformat(timespec="seconds"), machine=machine(),
    )
    rng = random.Random(args.seed)
    log(f"bench_scale: {args.products:,} products x {args.photos_per_product} photo(s), backend {args.backend}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    start = time.perf_counter()

    def generated(done, total):
        if done == total or done % 500_000 == 0:
            log(f"    generated {done:>10,} / {total:,} vectors")

    catalog = make_catalog(args.products, photos_per_product=args.photos_per_product, centres=args.centres,
                           spread=args.spread, n_categories=args.categories, seed=args.seed, progress=generated)
    report.data.update(centres=len(catalog.centres), spread=args.spread, categories=args.categories,
                       query_similarity=args.query_similarity)
    report.put("generate_s", round(time.perf_counter() - start, 2), "s",
               f"({len(catalog.centres):,} centres, cosine ~{args.spread} to them, {args.categories} categories)")

    with backend(args) as (overrides, description), tempfile.TemporaryDirectory(prefix="vpm-scale-work-") as work:
        args.workdir = Path(work)
        log(f"  location: {description}")
        settings = load_settings(**overrides)
        where = engine.location(settings)
        store = LanceCatalogStore(where, exists=False)
        index = LanceVectorIndex(where, MODEL_ID, catalog.dim, exists=False)

        fill(catalog, store, index, args.batch, report)
        settle(store, index, report)
        report.put("stored_mb", stored_mb(settings), "MB", "(the tables' files, every version kept so far)")
        if getattr(args, "measure_endpoint", None):  # --rtt-ms: every figure from here on pays the round trips
            engine.forget()
            overrides = {**overrides, "s3_endpoint_url": args.measure_endpoint}
            settings = load_settings(**overrides)
            where = engine.location(settings)
            store = LanceCatalogStore(where, exists=True)
            index = LanceVectorIndex(where, MODEL_ID, catalog.dim, exists=True)
        measure_reads(catalog, store, rng, args.repeat, report)
        measure_search(catalog, where, args, report)
        measure_cold_open(overrides, args, report)
        measure_adds(catalog, store, index, rng, args.adds, report)
        report.put("peak_rss_fill_mb", round(rss_mb(), 1), "MB",
                   "(this process: generated vectors" + (", moto's bucket" if args.backend == "s3" else "") + ")")
        engine.forget()

    report.put("total_s", round(time.perf_counter() - start, 1), "s", "(the whole run)")
    report.data["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report.data["p90_ms"] = report.p90
    if report.requests:
        report.data["s3_requests_per_call"] = report.requests
    report.data["targets"] = evaluate_targets(report.data, args.backend)
    log("  targets: " + ", ".join(f"{k} {'met' if v['met'] else 'MISSED' if v['met'] is False else 'n/a'}"
                                  for k, v in report.data["targets"].items()))
    return report.data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=10_000, help=f"catalog size (at most {MAX_PRODUCTS:,})")
    parser.add_argument("--backend", choices=("local", "s3"), default="local")
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="s3: measure through ../shared/tools/latency_proxy.py at this round trip (fill is direct)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--photos-per-product", type=int, default=1)
    parser.add_argument("--batch", type=int, default=10_000, help="products per add/upsert while filling")
    parser.add_argument("--repeat", type=int, default=100, help="timed calls per read figure (median)")
    parser.add_argument("--queries", type=int, default=100, help="search queries (recall and search figures)")
    parser.add_argument("--ann-queries", type=int, default=0,
                        help="measure LanceDB's search on only the first N queries (default: all; for moto at 100k)")
    parser.add_argument("--adds", type=int, default=50, help="products added one at a time (add_ms)")
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh processes for cold_open_s")
    parser.add_argument("--centres", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=0.85, help="cosine of a photo to its centre")
    parser.add_argument("--categories", type=int, default=300)
    parser.add_argument("--query-similarity", type=float, default=0.95,
                        help="cosine of a query to the catalog photo it is a noisy copy of")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", help="local backend: an empty folder to fill (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the filled folder")
    parser.add_argument("--no-pylance", action="store_true",
                        help="maintain tables as without pylance: LanceDB's own optimize() (the fallback, for comparison)")
    parser.add_argument("--cold-open-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # A stopped run still removes its temporary folder (a million products leave several GB behind).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if args.cold_open_child:
        cold_open_child(args.cold_open_child)
        return
    if args.no_pylance:  # as if pylance were not installed (lancedb itself imports it where present: leave it be)
        from vpm.backends import maintenance

        maintenance.pylance = lambda: None
    if not 1 <= args.products <= MAX_PRODUCTS:
        parser.error(f"--products must be between 1 and {MAX_PRODUCTS:,} (this bench keeps every vector in memory)")
    if not 1 <= args.photos_per_product <= 50 or args.products * args.photos_per_product > 2 * MAX_PRODUCTS:
        parser.error("--photos-per-product must be 1-50, and products x photos at most 4,000,000")

    data = run(args)
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    rtt = f"-rtt{args.rtt_ms:g}" if args.backend == "s3" and args.rtt_ms else ""
    fallback = "-no-pylance" if args.no_pylance else ""
    out = results / f"scale-{args.backend}{rtt}-{args.products}{fallback}.json"
    out.write_text(json.dumps(data, indent=2) + "\n")
    log(f"  written to {out.relative_to(REPO)}")
    if args.json:
        print(json.dumps(data))


if __name__ == "__main__":
    main()
