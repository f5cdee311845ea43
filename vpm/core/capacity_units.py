"""The unit costs the capacity model (vpm.core.capacity) multiplies: each a figure the project measured, or computed
from measured figures and the code's own parameters, with where it comes from. docs/scaling.md cites the same.

Nothing here is a guess: a figure nobody measured (a GPU's embedding rate) is None and says so, and the model
then says "not measured" instead of inventing a number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MEASURED = "measured"  # on this project's 2-core machine, by the command in `source`
DERIVED = "derived"  # arithmetic on measured figures and the code's own parameters, shown in `source`
EXTRAPOLATED = "extrapolated"  # a measured figure carried to a size nobody ran, by the rule in the note
NOT_MEASURED = "not measured"
PUBLISHED = "published"  # someone else's figure, context only


@dataclass(frozen=True)
class UnitCost:
    key: str
    what: str
    value: float | None
    unit: str
    basis: str
    source: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The vector index's parameters (vpm/backends/lance_vectors.py: ANN_PARTITION_ROWS, ANN_NPROBES, ANN_REFINE; build_ann()'s
# 32 sub-vectors of 8 bits for 512-d CLIP vectors). Copied, not imported: importing lance_vectors imports LanceDB,
# and a cost estimate must not (tests/test_capacity checks they still agree).
DIM = 512
ROWS_PER_PARTITION = 1_000
NPROBES = 30
REFINE = 20
TOP_K = 10
PQ_BYTES = 32  # a photo's PQ code: 32 sub-vectors x 8 bits
ROW_ID_BYTES = 8

# The index builds: the CPU time (all threads) of LanceVectorIndex.build_ann() on a table filled the way
# bench_scale.py fills it; wall time on the shared 2-core machine mostly measured the wait for a core.
_BUILD_RUN = "`python bench/bench_ann_build.py 100000 200000 500000 1000000`, column CPU"

# The per-photo table sizes: 90 sample photos (the first 90 rows of sample/products.csv, 30 products) imported into
# an empty local catalog with the built-in model, keypoints and package text included, then measured.
_IMPORT_RUN = ("`python -m vpm import products.csv` (90 sample photos) then `python -m vpm costs --json`")

_UNITS = (
    # ------------------------------------------------------------------------------------------ a photo
    UnitCost("photo_bytes", "a photo as stored (the original)", 26_530, "B", MEASURED,
             "mean of the 398 photos in ../shared/datasets/products-photos (348 px phone photos; "
             "`find ... -name '*.jpg' -printf '%s\\n'`, 10,558,792 B in all); a shop's own photos are often "
             "100 KB-1 MB: give --photo-bytes"),
    UnitCost("thumbnail_bytes", "its thumbnail (256 px WebP)", 10_405, "B", MEASURED,
             f"{_IMPORT_RUN}: catalog.thumbnail_bytes / thumbnails (936,454 B / 90)"),
    UnitCost("keypoint_bytes", "its keypoints (features-sift table)", 47_594, "B", MEASURED,
             f"{_IMPORT_RUN}: catalog.parts 'keypoints' / photos (4,283,481 B / 90; docs/match-quality.md: ~70 KB "
             "a photo, at most 500 SIFT keypoints)"),
    UnitCost("text_bytes", "its package text (text-ppocrv6 table)", 2_445, "B", MEASURED,
             f"{_IMPORT_RUN}: catalog.parts 'package text' / photos (220,090 B / 90)"),
    UnitCost("table_bytes", "its vector and product row, with the indexes", 6_900, "B", MEASURED,
             "`python bench/bench_scale.py --products 1000000 --backend local`, row 'tables on disk' (6.9 GB for "
             "1M products of one photo, docs/storage-and-s3.md; 4,843 B a product at 100k, 484.3 MB, in this "
             "issue's 100k run); real product rows are bigger: 8,706 B a product in the import run above"),
    UnitCost("table_files_per_photo", "files the tables gain a photo (bulk import)", 0.53, "PUT", MEASURED,
             f"{_IMPORT_RUN}: 48 table files / 90 photos (one commit; at scale a commit of 256 photos shares its "
             "files, so fewer)"),
    UnitCost("file_puts_per_photo", "PUTs for a photo's own files", 2, "PUT", DERIVED,
             "one PUT for the photo and one for its thumbnail (vpm/core/storage.py: a single PUT under 8 MB)"),
    UnitCost("embed_images_per_s", "embedding rate of one 2-core machine", 52.6, "images/s", MEASURED,
             "`python bench/bench_embeddings.py`, row 'CLIP ViT-B/32, ONNX Runtime', column 'indexing img/s "
             "(decode included)' (docs/speed.md): 19 ms a photo, 38 ms of a core"),
    UnitCost("gpu_images_per_s", "embedding rate of one GPU", None, "images/s", NOT_MEASURED,
             "no GPU on the machines these benches ran on; docs/scaling-out.md: 'not measured'"),
    UnitCost("ingest_cpu_s", "CPU for a photo's whole import (decode, embed, keypoints, OCR, score fit)", 0.67,
             "core-s", MEASURED,
             "`python bench/bench_quality.py` import of 398 photos: 4 min 26 s of CPU (docs/match-quality.md)"),
    # ------------------------------------------------------------------------------------------ a search
    UnitCost("search_cpu_s", "CPU a photo search costs the server", 0.159, "core-s", DERIVED,
             "2 cores / 12.6 searches/s: `python bench/bench_api.py`, row 'ONNX Runtime, a single-threaded call "
             "each (the default)' (docs/speed.md); 0.049 core-s with VPM_RERANK=false (40.6/s)"),
    UnitCost("search_requests", "bucket requests a search makes (IVF-PQ path)", 53.8, "requests", MEASURED,
             "`python bench/bench_scale.py --products 10000 --backend s3 --queries 20 --ann-queries 10`, row "
             "search_ann_ms, '[53.8 S3 requests/call]' (moto's server counts them; 10 partitions there; get_ms: "
             "8.2)"),
    UnitCost("api_search_local_ms", "a warm search through `vpm serve`, catalog on local disk", 114, "ms",
             MEASURED, "p50, sample catalog, `tools/latency_proxy.py` at 0 vs 40 ms (/work/shared/DESIGN.md)"),
    UnitCost("api_search_bucket_ms", "the same with the bucket 40 ms away", 394, "ms", MEASURED,
             "p50, the same run (/work/shared/DESIGN.md): 280 ms more, 7 round trips of 40 ms"),
    UnitCost("ann_search_ms", "an IVF-PQ search on local disk at 1M photos", 27, "ms", MEASURED,
             "`python bench/bench_scale.py --products 1000000 --backend local`, row 'search' (docs/storage-and-s3.md)"),
    UnitCost("exact_scan_ms_per_million", "scanning 1M 512-d vectors exactly (numpy)", 113, "ms", MEASURED,
             "/work/shared/DESIGN.md 'Exact numpy search ... 113 ms (1M)'; a query scans every IVF centroid that way"),
    # ------------------------------------------------------------------------------------------ a replica
    UnitCost("replica_base_mb", "a `vpm serve` replica after its first search (CLIP on ONNX Runtime)", 688, "MB",
             MEASURED, "docs/speed.md: 'After its first search the API holds ... 688 MB ... (CLIP)'"),
    UnitCost("catalog_process_1m_mb", "a fresh process answering a search over 1M photos", 252, "MB", MEASURED,
             "`bench_scale.py --products 1000000`, row 'peak memory of that process' (docs/storage-and-s3.md)"),
    # ------------------------------------------------------------------------------------------ the index
    UnitCost("ann_build_cpu_s_100k", "CPU to build the IVF-PQ index of 100k photos (100 partitions)", 74.8,
             "core-s", MEASURED, f"build_ann() alone on bench_scale.py's synthetic 512-d vectors: {_BUILD_RUN}; "
             "255 s wall at load 8 (`bench_scale.py --products 100000`'s ann_build_s row: 164 s wall at load 3-6)"),
    UnitCost("ann_build_cpu_s_200k", "the same, 200k photos (200 partitions)", 80.1, "core-s", MEASURED,
             f"the same run ({_BUILD_RUN}): 283 s wall at load 10"),
    UnitCost("ann_build_cpu_s_500k", "the same, 500k photos (500 partitions)", 92.3, "core-s", MEASURED,
             f"the same script ({_BUILD_RUN}): 413 s wall at load 12"),
    UnitCost("ann_build_cpu_s_1000k", "the same, 1M photos (1,000 partitions)", 165.8, "core-s", MEASURED,
             f"the same script ({_BUILD_RUN}): 613 s wall at load 11"),
    UnitCost("fill_products_per_s", "products written to the tables in bulk", 3_386, "products/s", MEASURED,
             "`bench_scale.py --products 100000 --backend local`, row fill_s (batches of 10,000)"),
)

UNITS: dict[str, UnitCost] = {u.key: u for u in _UNITS}

# Someone else's figures: context for docs/scaling.md and the limits, never multiplied as if they were ours.
S3_VECTORS_MAX_PER_INDEX = 2_000_000_000  # published: Amazon S3 Vectors, vectors an index
PUBLISHED_NOTES = (
    "Amazon S3 Vectors: up to 2 billion vectors an index, top-k <= 100 in ~100 ms warm, 1,000 writes/s an index",
    "lance-ray: one IVF index over 1.28M x 2048-d vectors took 149 min on one node, 37 min on five",
    "assigning 80M vectors to 25.6k partitions took about 5 h on one machine",
    "LanceDB's open-source library reading from object storage: hundreds of milliseconds a query",
)


def build_points() -> tuple[tuple[int, float], ...]:
    """(photos, core-s) of every measured index build, smallest first."""
    points = [(int(key.rsplit("_", 1)[1][:-1]) * 1000, unit.value) for key, unit in UNITS.items()
              if key.startswith("ann_build_cpu_s_") and unit.value is not None]
    return tuple(sorted(points))


def value(key: str) -> float:
    """A measured or derived unit's value (a KeyError names a missing one; None for "not measured" raises)."""
    figure = UNITS[key].value
    if figure is None:
        raise ValueError(f"{key} was not measured")
    return figure
