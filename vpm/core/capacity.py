"""The whole system at a size nobody has run yet: storage, index build, re-embed, search latency and replica memory
for N products (the capacity model of docs/scaling.md), and its bill (`python -m vpm costs --products N`).

Every figure multiplies the unit costs in vpm.core.capacity_units and says how it was reached: measured here, derived
from measured figures and the code's parameters, or extrapolated from a measured size by a stated rule. Prices come
from the one dated table in vpm.core.costs. Pure: no I/O, no LanceDB, no model.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from vpm.core import capacity_units as u
from vpm.core.capacity_units import DERIVED, EXTRAPOLATED, NOT_MEASURED, UNITS
from vpm.core.costs import (
    BYTES_PER_GB,
    DEFAULT_PRICES,
    CatalogSize,
    CostLine,
    Estimate,
    PriceTable,
    Traffic,
    estimate,
    format_usd,
)
from vpm.core.errors import VpmError
from vpm.core.presentation import format_bytes

HOURS_PER_MONTH = 730  # how AWS turns an hourly price into a monthly one
TARGET_CPU_SHARE = 0.5  # an assumption: replicas sized so the average load takes half their CPU, room for peaks
BUCKET_RTT_MS = 40  # the bucket's distance the latency figures were measured at (tools/latency_proxy.py)
MEMORY_MAX_PHOTOS = 100_000  # vpm/backends/lance_vectors.py: exact search in memory up to here, IVF-PQ beyond
MACHINE_CORES = 2  # the machine every per-photo and per-search time was measured on

# What the model covers; beyond it a number is a typo (1e30), not a catalog.
MAX_PRODUCTS = 10_000_000_000
MAX_PHOTOS_PER_PRODUCT = 100
MAX_SEARCHES = 1_000_000_000_000  # a month: ~380,000 a second
MAX_REPLICAS = 10_000
MAX_WORKERS = 10_000
MAX_PHOTO_BYTES = 1024**3  # the largest upload the settings allow (VPM_MAX_UPLOAD_MB <= 1024)

# The sizes and assumptions docs/scaling.md tabulates (one photo a product, as bench_scale.py fills its catalogs).
DOC_SIZES = (1_000_000, 10_000_000, 100_000_000, 1_000_000_000)
DOC_ASSUMPTIONS: dict[str, Any] = {"searches_per_month": 10_000_000, "workers": 10, "use_cdn": True}


class CapacityError(VpmError, ValueError):
    """A size or assumption the model cannot use; the message names the field and what it accepts."""


_SUFFIXES = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


def parse_count(text: object, name: str, *, minimum: int = 1, maximum: int) -> int:
    """A whole number as a person types it: '250000', '250,000', '2.5e5', '10M', '1B' (k, M, B: thousand,
    million, billion). Anything else, or a number outside [minimum, maximum], is a CapacityError naming `name`."""
    if isinstance(text, bool):
        raise CapacityError(f"{name} must be a whole number, got {text!r}")
    if isinstance(text, int):
        number = Decimal(text)
    else:
        raw = str(text).strip()
        cleaned = re.sub(r"[,_\s]", "", raw)
        match = re.fullmatch(r"([0-9.eE+-]+)([kKmMbB]?)", cleaned)
        try:
            if not match:
                raise InvalidOperation
            number = Decimal(match.group(1)) * _SUFFIXES[match.group(2).lower()]
        except InvalidOperation:
            raise CapacityError(
                f"{name}: {raw!r} is not a number; write a whole number such as 250000, 250,000, 10M or 1B"
            ) from None
        if not number.is_finite():
            raise CapacityError(f"{name}: {raw!r} is not a number; write a whole number such as 250000 or 10M")
    shown = str(text).strip()
    if number < minimum:
        limit = "0 or more" if minimum == 0 else f"at least {minimum:,}"
        raise CapacityError(f"{name} must be {limit}, got {shown}")
    if number > maximum:
        raise CapacityError(f"{name}: {shown} is more than this model covers (at most {maximum:,})")
    if number != number.to_integral_value():
        raise CapacityError(f"{name} must be a whole number, got {shown}")
    return int(number)


def _check(name: str, value: Any, minimum: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise CapacityError(f"{name} must be a whole number from {minimum:,} to {maximum:,}, got {value!r}")


@dataclass(frozen=True)
class SystemSize:
    """The system to size: the catalog, its traffic, and the machines that serve and re-embed it."""

    products: int
    photos_per_product: int = 1
    searches_per_month: int = 1000
    replicas: int | None = None  # None: as many as the load needs (at least 1)
    workers: int = 10  # machines a re-embed and an index build run on
    images_per_search: int = 10
    use_cdn: bool = False
    serve_thumbnails: bool = True
    photo_bytes: int | None = None  # None: the measured unit (a small phone photo)

    def __post_init__(self) -> None:
        _check("products", self.products, 1, MAX_PRODUCTS)
        _check("photos per product", self.photos_per_product, 1, MAX_PHOTOS_PER_PRODUCT)
        _check("searches a month", self.searches_per_month, 0, MAX_SEARCHES)
        _check("workers", self.workers, 1, MAX_WORKERS)
        _check("images per search", self.images_per_search, 0, 1000)
        if self.replicas is not None:
            _check("replicas", self.replicas, 1, MAX_REPLICAS)
        if self.photo_bytes is not None:
            _check("photo bytes", self.photo_bytes, 1, MAX_PHOTO_BYTES)
        for name in ("use_cdn", "serve_thumbnails"):
            if not isinstance(getattr(self, name), bool):
                raise CapacityError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def photos(self) -> int:
        return self.products * self.photos_per_product

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "photos": self.photos}


def size_from_text(products: str, **assumptions: Any) -> SystemSize:
    """A SystemSize from the number of products as a person typed it ('10M'), for a page's text field."""
    return SystemSize(products=parse_count(products, "Products", maximum=MAX_PRODUCTS), **assumptions)


@dataclass(frozen=True)
class Figure:
    """One line of the capacity model: a value, how a person reads it, and how it was reached."""

    key: str
    what: str
    value: float | None
    text: str
    basis: str
    how: str


@dataclass(frozen=True)
class Limit:
    """A part that stops working at this size, and what replaces it."""

    part: str
    why: str
    replacement: str


# ------------------------------------------------------------------------------------------------ formatting


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '5.3 h', '4.2 days', '3.1 years'."""
    if seconds < 120:
        return f"{seconds:,.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.0f} min"
    hours = seconds / 3600
    if hours < 72:
        return f"{hours:,.1f} h"
    days = hours / 24
    return f"{days:,.1f} days" if days < 730 else f"{days / 365:,.1f} years"


def format_count(n: float) -> str:
    """'1M', '250k', '1.5B', '12,345': sizes as people say them."""
    for step, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if n >= step and n % (step // 10) == 0:
            return f"{n / step:g}{suffix}"
    return f"{n:,.0f}"


# ----------------------------------------------------------------------------------------------- the model


def bytes_per_photo(size: SystemSize) -> dict[str, float]:
    """What one photo adds to the bucket, by part."""
    return {
        "photo": float(size.photo_bytes if size.photo_bytes is not None else u.value("photo_bytes")),
        "thumbnail": u.value("thumbnail_bytes"),
        "keypoints": u.value("keypoint_bytes"),
        "package text": u.value("text_bytes"),
        "vector, product row and indexes": u.value("table_bytes"),
    }


def partitions(photos: int) -> int:
    """IVF partitions the code builds today (lance_vectors.build_ann: a partition per 1,000 rows)."""
    return max(1, photos // u.ROWS_PER_PARTITION)


def _build_fit() -> tuple[float, float]:
    """(fixed core-s, core-s per row x partition), least squares through the measured builds. The k-means training
    (on 256 rows a partition) and the assignment of every row both grow with rows x partitions; the PQ training
    (on a sample capped at 65,536 rows) does not, and is most of the fixed part."""
    points = [(n * partitions(n), core_s) for n, core_s in u.build_points()]
    mean_w = sum(w for w, _ in points) / len(points)
    mean_t = sum(t for _, t in points) / len(points)
    spread = sum((w - mean_w) ** 2 for w, _ in points)
    per_work = max(0.0, sum((w - mean_w) * (t - mean_t) for w, t in points) / spread)
    return max(0.0, mean_t - per_work * mean_w), per_work


def build_fit_text() -> str:
    """The fitted build model in words, as docs/scaling.md quotes it."""
    fixed, per_work = _build_fit()
    return (f"{fixed:,.1f} core-s + {per_work * 1e9:,.1f} core-s per billion row-partitions (a million rows in "
            "1,000 partitions)")


def index_build_core_s(photos: int, n_partitions: int | None = None, workers: int = 1) -> float:
    """CPU seconds of an IVF-PQ build, the rows x partitions part split evenly over `workers` (what a distributed
    build would do; not measured)."""
    fixed, per_work = _build_fit()
    parts = partitions(photos) if n_partitions is None else n_partitions
    return fixed + per_work * photos * parts / workers


def search_latency_ms(photos: int) -> dict[str, float]:
    """A warm photo search through `vpm serve` with the bucket BUCKET_RTT_MS away, in its parts."""
    local, remote = u.value("api_search_local_ms"), u.value("api_search_bucket_ms")
    trips = round((remote - local) / BUCKET_RTT_MS)  # serial round trips on the measured (in-memory) path
    ann = photos > MEMORY_MAX_PHOTOS
    parts = {
        "search on local disk": local,
        "IVF-PQ instead of the in-memory path": u.value("ann_search_ms") if ann else 0.0,
        "scanning the partitions' centroids": u.value("exact_scan_ms_per_million") * partitions(photos) / 1e6
        if ann else 0.0,
        # +2 on the IVF path: the probed partitions, then the refine rows, each one more wait on the bucket
        "round trips to the bucket": (trips + (2 if ann else 0)) * BUCKET_RTT_MS,
    }
    return parts


def bucket_read_per_search(photos: int) -> float:
    """Bytes a search reads from the bucket with nothing cached: the probed partitions' PQ codes and row ids, then
    the refine rows' full vectors."""
    if photos <= MEMORY_MAX_PHOTOS:
        return 0.0  # held in memory after the first search
    rows_per_partition = photos / partitions(photos)
    probed = u.NPROBES * rows_per_partition * (u.PQ_BYTES + u.ROW_ID_BYTES)
    return probed + u.REFINE * u.TOP_K * u.DIM * 4


def replica_memory_bytes(photos: int) -> float:
    """A replica holding the index in memory: the measured process (model loaded) + PQ codes, row ids and the
    centroids' share for every photo."""
    per_photo = u.PQ_BYTES + u.ROW_ID_BYTES + u.DIM * 4 / u.ROWS_PER_PARTITION
    return u.value("replica_base_mb") * 1e6 + photos * per_photo


def shards_needed(photos: int, prices: PriceTable) -> int:
    """Instances of the CPU size that together hold the index in memory, each with its own process (and model)."""
    room = prices.cpu_instance_memory_gb * BYTES_PER_GB - u.value("replica_base_mb") * 1e6
    if room <= 0:
        raise CapacityError(f"a {prices.cpu_instance} has {prices.cpu_instance_memory_gb:g} GB, less than a replica "
                            f"needs before any index ({u.value('replica_base_mb'):g} MB): price a larger instance")
    index = replica_memory_bytes(photos) - u.value("replica_base_mb") * 1e6
    return max(1, math.ceil(index / room))


def replicas_needed(size: SystemSize, prices: PriceTable) -> int:
    """Replicas whose CPU the average search load fills to TARGET_CPU_SHARE (at least one)."""
    cpu_s = size.searches_per_month * u.value("search_cpu_s")
    capacity = HOURS_PER_MONTH * 3600 * prices.cpu_instance_vcpus * TARGET_CPU_SHARE
    return max(1, math.ceil(cpu_s / capacity))


def reembed_seconds(size: SystemSize) -> float:
    """Wall time of a full re-embed on `workers` machines like the measured one (each embeds at the measured rate)."""
    return size.photos / (u.value("embed_images_per_s") * size.workers)


def instance_embed_rate(prices: PriceTable) -> float:
    """Images/s one CPU instance embeds: the measured 2-core rate, in proportion to the instance's vCPUs."""
    return u.value("embed_images_per_s") * prices.cpu_instance_vcpus / MACHINE_CORES


def gpu_break_even(prices: PriceTable) -> float:
    """Images/s a GPU instance must embed to cost less per photo than the CPU instance at its measured rate."""
    return prices.gpu_per_hour / prices.cpu_per_hour * instance_embed_rate(prices)


def figures(size: SystemSize, prices: PriceTable = DEFAULT_PRICES) -> tuple[Figure, ...]:
    """The capacity model at `size`, each figure with its basis."""
    n = size.photos
    per_photo = bytes_per_photo(size)
    stored = n * sum(per_photo.values())
    w = size.workers
    build_1 = index_build_core_s(n) / MACHINE_CORES
    build_w = index_build_core_s(n, workers=w) / MACHINE_CORES
    sqrt_parts = max(1, round(math.sqrt(n)))
    build_sqrt_w = index_build_core_s(n, sqrt_parts, workers=w) / MACHINE_CORES
    latency = search_latency_ms(n)
    read = bucket_read_per_search(n)
    memory = replica_memory_bytes(n)
    replicas = size.replicas or replicas_needed(size, prices)
    gpu = UNITS["gpu_images_per_s"]
    return (
        Figure("photos", "photos", n, f"{n:,}", "given", f"{size.products:,} products x {size.photos_per_product}"),
        Figure("stored_bytes", "stored in the bucket", stored, format_bytes(stored), EXTRAPOLATED,
               "photos x (" + " + ".join(f"{k} {format_bytes(v)}" for k, v in per_photo.items())
               + ("); every part measured" if size.photo_bytes is None else "); the photo's size given, the rest "
                  "measured") + " (vpm/core/capacity_units.py)"),
        Figure("write_requests", "write requests to fill it", n * _puts_per_photo(), f"{n * _puts_per_photo():,.0f}",
               DERIVED, f"{u.value('file_puts_per_photo'):g} PUTs a photo's files + "
               f"{u.value('table_files_per_photo'):g} table files a photo (bulk import, measured)"),
        Figure("reembed_s", "a full re-embed", reembed_seconds(size),
               f"{format_duration(reembed_seconds(size))} on {w} workers "
               f"({format_duration(n / u.value('embed_images_per_s'))} on one)", EXTRAPOLATED,
               f"photos / ({u.value('embed_images_per_s'):g} images/s a 2-core worker, measured, x {w}); "
               "workers assumed not to wait on each other or the bucket"),
        Figure("reembed_gpu", "the same on GPU workers", None,
               f"not measured; a {prices.gpu_instance} costs less than the CPU path only above "
               f"{gpu_break_even(prices):,.0f} images/s", NOT_MEASURED, gpu.source),
        Figure("index_build_s", "an IVF-PQ index build, as built today", build_1,
               f"{format_duration(build_1)} on one 2-core machine; {format_duration(build_w)} on {w} workers",
               EXTRAPOLATED,
               f"{partitions(n):,} partitions (a partition per {u.ROWS_PER_PARTITION:,} rows); CPU = fixed + rows x "
               f"partitions x k, fitted to the builds measured at {_measured_sizes()} photos; on workers, the rows x "
               "partitions part split evenly (not measured)"),
        Figure("index_build_sqrt_s", "the same with sqrt(rows) partitions (LanceDB's default)", build_sqrt_w,
               f"{format_duration(build_sqrt_w)} on {w} workers ({sqrt_parts:,} partitions)", EXTRAPOLATED,
               "the same fit with fewer, larger partitions"),
        Figure("bucket_read_bytes", "read from the bucket by a search, nothing cached", read,
               "none after the first search (in memory)" if not read else
               f"{format_bytes(read)} in about {u.value('search_requests'):,.0f} requests", DERIVED,
               f"{u.NPROBES} probed partitions x rows each x {u.PQ_BYTES + u.ROW_ID_BYTES} B (PQ code + row id) + "
               f"{u.REFINE * u.TOP_K} refine rows x {u.DIM * 4:,} B; requests measured on moto at 10k"),
        Figure("search_cpu_s", "CPU a search costs", u.value("search_cpu_s"),
               f"{u.value('search_cpu_s') * 1000:,.0f} ms of a core", DERIVED, UNITS["search_cpu_s"].source),
        Figure("search_latency_ms", f"a warm search, bucket {BUCKET_RTT_MS} ms away", sum(latency.values()),
               f"{sum(latency.values()):,.0f} ms", EXTRAPOLATED,
               " + ".join(f"{k} {v:,.0f} ms" for k, v in latency.items() if v)),
        Figure("replica_memory_bytes", "memory a replica needs, index held in memory", memory, format_bytes(memory),
               EXTRAPOLATED,
               f"{u.value('replica_base_mb'):g} MB measured (serving, CLIP loaded) + "
               f"{u.PQ_BYTES + u.ROW_ID_BYTES + u.DIM * 4 / u.ROWS_PER_PARTITION:.1f} B a photo (PQ code, row id, "
               "centroids' share)"),
        Figure("replicas", "search replicas", replicas,
               f"{replicas:,}" + ("" if size.replicas else " (as the load needs)"),
               "given" if size.replicas else DERIVED,
               f"{size.searches_per_month:,} searches x {u.value('search_cpu_s'):g} core-s over "
               f"{prices.cpu_instance_vcpus} vCPUs x {HOURS_PER_MONTH} h at {TARGET_CPU_SHARE:.0%} busy (assumed)"),
    )


def _measured_sizes() -> str:
    return ", ".join(format_count(n) for n, _ in u.build_points())


def _puts_per_photo() -> float:
    return u.value("file_puts_per_photo") + u.value("table_files_per_photo")


def limits(size: SystemSize, prices: PriceTable = DEFAULT_PRICES) -> tuple[Limit, ...]:
    """The parts that break at this size, in the order they break as a catalog grows, each with its replacement."""
    n, w = size.photos, size.workers
    out: list[Limit] = []
    latency = search_latency_ms(n)
    waiting = latency["round trips to the bucket"]
    if waiting > sum(latency.values()) - waiting:
        out.append(Limit(
            "searching the bucket", f"{waiting:,.0f} ms of a {sum(latency.values()):,.0f} ms search is waiting on "
            f"the bucket {BUCKET_RTT_MS} ms away",
            "replicas holding the index locally (the vectors table's index on local disk or in memory, refreshed "
            "when the table's version changes), so a search waits on no round trip"))
    build_1 = index_build_core_s(n) / MACHINE_CORES
    if build_1 > 8 * 3600:
        out.append(Limit(
            "the index build on one machine", f"{format_duration(build_1)} for {partitions(n):,} partitions of "
            f"{u.ROWS_PER_PARTITION:,} rows: the work grows with rows x partitions, so with the square of the catalog",
            "more, larger IVF partitions (about sqrt(rows), LanceDB's default) built on the cluster "
            "(python -m vpm index --cluster ray, a partition range per worker)"))
    if reembed_seconds(size) > 24 * 3600:
        out.append(Limit(
            f"a re-embed on {w} workers", f"{format_duration(reembed_seconds(size))}",
            f"more workers (the Ray path scales by machines), or GPU workers once one is measured above "
            f"{gpu_break_even(prices):,.0f} images/s"))
    memory = replica_memory_bytes(n)
    if memory > prices.cpu_instance_memory_gb * BYTES_PER_GB:
        out.append(Limit(
            "one replica holding the whole index", f"it needs {format_bytes(memory)}, more than a "
            f"{prices.cpu_instance}", "larger replicas (memory-optimised instances, not priced here) or the index "
            "split across replicas, which a second VectorIndex on a managed engine (a Qdrant cluster, Amazon S3 "
            "Vectors) does for us"))
    if n > u.S3_VECTORS_MAX_PER_INDEX:
        out.append(Limit(
            "one index", f"{n:,} photos, more than the {u.S3_VECTORS_MAX_PER_INDEX:,} vectors an Amazon S3 Vectors "
            "index holds (published)", "several indexes searched together, or a sharded Qdrant cluster"))
    return tuple(out)


# ------------------------------------------------------------------------------------------------- the bill


def catalog_at(size: SystemSize) -> CatalogSize:
    """The catalog `size` describes, as the bucket would list it."""
    n = size.photos
    per_photo = bytes_per_photo(size)
    parts = (("keypoints", per_photo["keypoints"]), ("vectors and products", per_photo["vector, product row and indexes"]),
             ("package text", per_photo["package text"]))
    files = math.ceil(n * u.value("table_files_per_photo"))
    return CatalogSize(
        images=n, image_bytes=round(n * per_photo["photo"]), thumbnails=n,
        thumbnail_bytes=round(n * per_photo["thumbnail"]), metadata_objects=files,
        metadata_bytes=round(n * sum(b for _label, b in parts)),
        parts=tuple((label, 0, round(n * b)) for label, b in parts),
    )


@dataclass(frozen=True)
class SystemEstimate:
    size: SystemSize
    figures: tuple[Figure, ...]
    limits: tuple[Limit, ...]
    bill: Estimate

    def figure(self, key: str) -> Figure:
        return next(f for f in self.figures if f.key == key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "size": self.size.as_dict(),
            "units": [unit.as_dict() for unit in UNITS.values()],
            "figures": [asdict(f) for f in self.figures],
            "limits": [asdict(limit) for limit in self.limits],
            **self.bill.as_dict(),
        }

    def as_text(self) -> str:
        s = self.size
        out = [f"The whole system: {s.products:,} products x {s.photos_per_product} photo(s) = {s.photos:,} photos, "
               f"{s.searches_per_month:,} searches a month", "", "Capacity (each figure: how it was reached)"]
        for f in self.figures:
            out.append(f"  {f.what:<52} {f.text}")
            out.append(f"      [{f.basis}] {f.how}")
        out += ["", "What breaks at this size, and what replaces it"]
        out += [f"  - {x.part}: {x.why}\n      -> {x.replacement}" for x in self.limits] or ["  nothing measured breaks"]
        out += ["", self.bill.as_text(), "", "Unit costs (vpm/core/capacity_units.py; docs/scaling.md)"]
        for unit in UNITS.values():
            shown = "not measured" if unit.value is None else f"{unit.value:,g} {unit.unit}"
            out.append(f"  {unit.what:<60} {shown} [{unit.basis}]")
            out.append(f"      {unit.source}")
        return "\n".join(out)


def system_estimate(size: SystemSize, prices: PriceTable = DEFAULT_PRICES) -> SystemEstimate:
    """The capacity model at `size` and its bill: what the bucket, the CDN and the replicas cost a month, and what a
    first upload, a full re-embed and an index build cost once."""
    n = size.photos
    catalog = catalog_at(size)
    per_photo = bytes_per_photo(size)
    traffic = Traffic(searches_per_month=size.searches_per_month, images_per_search=size.images_per_search,
                      use_cdn=size.use_cdn, serve_thumbnails=size.serve_thumbnails,
                      avg_thumbnail_bytes=round(per_photo["thumbnail"]), avg_image_bytes=round(per_photo["photo"]),
                      app_starts_per_month=0)  # a replica reads the index as it searches, not every table at start
    base = estimate(catalog, traffic, prices)
    found = figures(size, prices)
    replicas = int(next(f.value for f in found if f.key == "replicas"))
    needed = replicas_needed(size, prices)
    memory = replica_memory_bytes(n)

    search_gets = size.searches_per_month * u.value("search_requests") if n > MEMORY_MAX_PHOTOS else 0
    replica_hours = replicas * HOURS_PER_MONTH
    replica_note = (f"{replicas:,} always on; the load needs {needed:,} ({size.searches_per_month:,} searches x "
                    f"{u.value('search_cpu_s'):g} core-s, at {TARGET_CPU_SHARE:.0%} busy)")
    if replicas < needed:
        replica_note += f"; {replicas:,} is too few: searches will queue"
    if memory > prices.cpu_instance_memory_gb * BYTES_PER_GB:
        replica_note += (f"; priced as today's replicas, which read the index from the bucket: holding it in memory "
                         f"instead takes {format_bytes(memory)}, {shards_needed(n, prices):,} instances of this size a replica")
    monthly = (
        CostLine("S3 GET requests: searches reading the index", search_gets, "requests", prices.get_per_1000,
                 "per 1,000 requests", search_gets / 1000 * prices.get_per_1000,
                 f"{u.value('search_requests'):g} requests a search (measured on moto, IVF-PQ path); none while the "
                 f"photos fit in memory ({MEMORY_MAX_PHOTOS:,}) or once replicas hold the index locally; in-region "
                 "transfer is free"),
        CostLine(f"Search replicas: {prices.cpu_instance}", replica_hours, "instance-hours", prices.cpu_per_hour,
                 "per instance-hour", replica_hours * prices.cpu_per_hour, replica_note, group="compute"),
    )
    embed_hours = n / instance_embed_rate(prices) / 3600
    build_hours = index_build_core_s(n) / prices.cpu_instance_vcpus / 3600
    one_time = (
        CostLine("Full re-embed: compute", embed_hours, "instance-hours", prices.cpu_per_hour, "per instance-hour",
                 embed_hours * prices.cpu_per_hour,
                 f"{n:,} photos at {instance_embed_rate(prices):g} images/s an instance (measured on 2 cores): "
                 f"{format_duration(reembed_seconds(size))} on {size.workers} workers; a {prices.gpu_instance} at "
                 f"${prices.gpu_per_hour:g}/h is cheaper only above {gpu_break_even(prices):,.0f} images/s "
                 "(a GPU's rate is not measured here)", group="compute"),
        CostLine("Full re-embed: S3 GET requests", n, "requests", prices.get_per_1000, "per 1,000 requests",
                 n / 1000 * prices.get_per_1000, "each photo read once; in-region transfer is free"),
        CostLine("Index build: compute", build_hours, "instance-hours", prices.cpu_per_hour, "per instance-hour",
                 build_hours * prices.cpu_per_hour,
                 f"IVF-PQ over {n:,} photos in {partitions(n):,} partitions, extrapolated from the builds measured "
                 f"at {_measured_sizes()} photos (about the same instance-hours on more workers)", group="compute"),
    )
    # No replica reads every table file at start (it reads the index as it searches): that line is the bucket's.
    kept = tuple(x for x in base.monthly if not x.item.endswith("at app start"))
    bill = Estimate(catalog, traffic, prices, base.one_time + one_time, kept + monthly,
                    one_time_title="One-time (first upload, a full re-embed, an index build)")
    return SystemEstimate(size, found, limits(size, prices), bill)


# ------------------------------------------------------------------------------------- the doc's comparison


def comparison_markdown(sizes: tuple[int, ...] = DOC_SIZES, **assumptions: Any) -> str:
    """The table docs/scaling.md shows: the capacity figures and the bill at several sizes, one column each."""
    estimates = [system_estimate(SystemSize(products=n, **assumptions)) for n in sizes]
    head = "| | " + " | ".join(f"{format_count(n)} products" for n in sizes) + " | basis |"
    rows = [head, "|---" * (len(sizes) + 2) + "|"]
    for key in ("stored_bytes", "reembed_s", "index_build_s", "index_build_sqrt_s", "bucket_read_bytes",
                "search_latency_ms", "replica_memory_bytes", "replicas"):
        first = estimates[0].figure(key)
        cells = [e.figure(key).text.replace("|", "/") for e in estimates]
        rows.append(f"| {first.what} | " + " | ".join(cells) + f" | {first.basis} |")
    groups: list[str] = []
    for e in estimates:
        groups += [g for g in e.bill.monthly_by_group() if g not in groups]
    for group in groups:
        cells = [format_usd(e.bill.monthly_by_group().get(group, 0.0)) for e in estimates]
        rows.append(f"| monthly: {group} | " + " | ".join(cells) + " | prices x the figures above |")
    rows.append("| **monthly total** | " + " | ".join(f"**{format_usd(e.bill.monthly_total)}**" for e in estimates)
                + " | |")
    rows.append("| one-time: upload, re-embed, index build | "
                + " | ".join(format_usd(e.bill.one_time_total) for e in estimates) + " | |")
    return "\n".join(rows)


# docs/scaling.md's unit tables: which units each shows.
DOC_UNIT_GROUPS = {
    "photo": ("photo_bytes", "thumbnail_bytes", "keypoint_bytes", "text_bytes", "table_bytes", "file_puts_per_photo",
              "table_files_per_photo", "embed_images_per_s", "gpu_images_per_s", "ingest_cpu_s"),
    "search": ("search_cpu_s", "search_requests", "api_search_local_ms", "api_search_bucket_ms", "ann_search_ms",
               "exact_scan_ms_per_million"),
    "index": ("replica_base_mb", "catalog_process_1m_mb", "fill_products_per_s", "ann_build_cpu_s_100k",
              "ann_build_cpu_s_200k", "ann_build_cpu_s_500k", "ann_build_cpu_s_1000k"),
}


def units_markdown(group: str) -> str:
    """One of docs/scaling.md's unit tables, from vpm.core.capacity_units as the model uses them."""
    rows = ["| what | value | basis | from |", "|---|---|---|---|"]
    for key in DOC_UNIT_GROUPS[group]:
        unit = UNITS[key]
        shown = "not measured" if unit.value is None else f"{unit.value:,g} {unit.unit}"
        rows.append(f"| {unit.what} | {shown} | {unit.basis} | {unit.source.replace('|', '/')} |")
    return "\n".join(rows)
