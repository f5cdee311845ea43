"""What the catalog costs on S3 (and CloudFront): a dated, editable price table and a pure estimator.

The table also holds the compute prices (an on-demand CPU and GPU instance an hour) that the whole system's bill
(vpm.core.capacity) uses for search replicas, a re-embed and an index build.
Units: 1 GB = 1024**3 bytes and 1 TB = 1024 GB, which is how AWS bills "GB". Money is USD.
`unit_price` on a line is the list price of the rate that applies (for tiered storage: the highest tier
reached); `usd` is the amount after tiers and free allowances, so it can be less than quantity x unit_price.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import date
from typing import Any

from vpm.core.errors import VpmError
from vpm.core.presentation import format_bytes

BYTES_PER_GB = 1024**3
GB_PER_TB = 1024


class PriceError(VpmError, ValueError):
    """A price table or traffic assumption is invalid; the message names the field and the fix."""


def _check_amount(owner: str, name: str, value: Any, *, whole: bool = False) -> None:
    kind = "a whole number" if whole else "a number"
    ok_type = isinstance(value, int) if whole else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value < 0:
        raise PriceError(f"{owner}.{name} must be {kind} >= 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class PriceTable:
    """List prices for one region, as read from the AWS pricing pages on `as_of`.

    Edit with `dataclasses.replace(DEFAULT_PRICES, put_per_1000=...)` or load from JSON with `from_dict`.
    """

    as_of: date
    source: str
    region: str = "us-east-1"
    # (upper bound in GB, cumulative, or None for "and above"; USD per GB-month)
    storage_tiers: tuple[tuple[float | None, float], ...]
    put_per_1000: float  # PUT, COPY, POST and LIST cost the same
    get_per_1000: float  # GET and HEAD
    transfer_out_per_gb: float  # S3 to the internet
    transfer_out_free_gb: float  # free each month, across the account
    cdn_per_gb: float  # CloudFront to the internet (North America)
    cdn_free_gb: float
    cdn_free_requests: int
    cdn_per_10k_requests: float  # HTTPS
    # The transfer and CDN rates above hold up to this many GB a month; AWS charges less per GB beyond it,
    # so larger volumes are over-estimated (and the line says so).
    transfer_rate_upto_gb: float = 10 * GB_PER_TB
    # Compute (EC2 On-Demand, Linux), read on their own date: the search replicas, a re-embed, an index build.
    # The CPU instance is the size of the 2-core machine every per-photo and per-search time was measured on.
    compute_as_of: date
    compute_source: str
    cpu_instance: str
    cpu_instance_vcpus: int
    cpu_instance_memory_gb: float
    cpu_per_hour: float
    gpu_instance: str
    gpu_per_hour: float

    def __post_init__(self) -> None:
        owner = "PriceTable"
        for name in ("as_of", "compute_as_of"):
            if not isinstance(getattr(self, name), date):
                raise PriceError(f"{owner}.{name} must be a date (YYYY-MM-DD), got {getattr(self, name)!r}")
        for name in ("source", "compute_source", "cpu_instance", "gpu_instance"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise PriceError(f"{owner}.{name} must be a non-empty text, got {getattr(self, name)!r}")
        tiers = tuple(tuple(t) for t in self.storage_tiers)  # accept lists, e.g. from JSON
        object.__setattr__(self, "storage_tiers", tiers)
        if not tiers:
            raise PriceError(f"{owner}.storage_tiers is empty: give at least one (None, price) tier")
        lower = 0.0
        for i, tier in enumerate(tiers):
            if len(tier) != 2:
                raise PriceError(f"{owner}.storage_tiers[{i}] must be (upper GB or None, price), got {tier!r}")
            upper, rate = tier
            _check_amount(owner, f"storage_tiers[{i}] price", rate)
            last = i == len(tiers) - 1
            if upper is None and not last:
                raise PriceError(f"{owner}.storage_tiers[{i}]: only the last tier may be open-ended (None)")
            if upper is None:
                continue
            if last:
                raise PriceError(f"{owner}.storage_tiers must end with an open tier (None, price) for 'and above'")
            _check_amount(owner, f"storage_tiers[{i}] upper bound", upper)
            if upper <= lower:
                raise PriceError(f"{owner}.storage_tiers upper bounds must increase; {upper!r} follows {lower!r}")
            lower = upper
        for name in ("put_per_1000", "get_per_1000", "transfer_out_per_gb", "transfer_out_free_gb",
                     "cdn_per_gb", "cdn_free_gb", "cdn_per_10k_requests", "transfer_rate_upto_gb",
                     "cpu_instance_memory_gb", "cpu_per_hour", "gpu_per_hour"):
            _check_amount(owner, name, getattr(self, name))
        _check_amount(owner, "cdn_free_requests", self.cdn_free_requests, whole=True)
        _check_amount(owner, "cpu_instance_vcpus", self.cpu_instance_vcpus, whole=True)
        if self.cpu_instance_vcpus < 1:
            raise PriceError(f"{owner}.cpu_instance_vcpus must be at least 1, got {self.cpu_instance_vcpus!r}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["as_of"] = self.as_of.isoformat()
        d["compute_as_of"] = self.compute_as_of.isoformat()
        d["storage_tiers"] = [list(t) for t in self.storage_tiers]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PriceTable:
        """The inverse of `as_dict`. Every price is required, so an edited table cannot keep a stale date."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PriceError(
                f"price table has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise PriceError(
                f"price table is missing field(s) {', '.join(missing)}; start from DEFAULT_PRICES.as_dict()"
            )
        values = dict(data)
        for name in ("as_of", "compute_as_of"):
            if isinstance(values[name], str):
                try:
                    values[name] = date.fromisoformat(values[name])
                except ValueError:
                    raise PriceError(f"PriceTable.{name} must be a date (YYYY-MM-DD), got {values[name]!r}") from None
        return cls(**values)


# Prices as stated in our issue for S3 Standard and CloudFront (North America, first 10 TB) in us-east-1; compute
# from EC2 On-Demand (Linux, us-east-1): g5.xlarge as a June 2026 summary of that page quotes it; c7i.large is the
# list price the family has had since its 2023 launch, not re-read on that date (edit it if AWS changed it).
DEFAULT_PRICES = PriceTable(
    as_of=date(2026, 11, 1),
    source="Amazon S3 pricing and Amazon CloudFront pricing pages (aws.amazon.com/s3/pricing, /cloudfront/pricing)",
    region="us-east-1",
    storage_tiers=((50 * GB_PER_TB, 0.023), (500 * GB_PER_TB, 0.022), (None, 0.021)),
    put_per_1000=0.005,
    get_per_1000=0.0004,
    transfer_out_per_gb=0.09,
    transfer_out_free_gb=100,
    cdn_per_gb=0.085,
    cdn_free_gb=1 * GB_PER_TB,
    cdn_free_requests=10_000_000,
    cdn_per_10k_requests=0.01,
    compute_as_of=date(2026, 6, 17),
    compute_source="Amazon EC2 On-Demand pricing, Linux, us-east-1 (aws.amazon.com/ec2/pricing/on-demand); "
                   "g5.xlarge as quoted for June 2026 by factualminds.com's EC2 On-Demand pricing summary; "
                   "c7i.large: its list price since 2023, not re-read on that date",
    cpu_instance="c7i.large (2 vCPU, 4 GiB)",
    cpu_instance_vcpus=2,
    cpu_instance_memory_gb=4,
    cpu_per_hour=0.08925,
    gpu_instance="g5.xlarge (1 NVIDIA A10G, 4 vCPU, 16 GiB)",
    gpu_per_hour=1.006,
)


# What the objects beside the photos are, by a folder in their key: the catalog's LanceDB tables (each a folder of
# many files: data, versions, indexes) and the score calibration. Named for people, biggest first in the text.
_METADATA_PARTS = (("products.lance", "products"), ("vectors-", "vectors"), ("features-", "keypoints"),
                   ("text-", "package text"), ("calibration", "score calibration"),
                   ("products.json", "first-release catalog"), ("embeddings", "first-release catalog"))


def metadata_part(key: str) -> str:
    """What one non-photo object of the catalog is ("vectors", "keypoints"...; "other" when unknown)."""
    for folder in key.split("/"):
        for start, label in _METADATA_PARTS:
            if folder.startswith(start):
                return label
    return "other"


@dataclass(frozen=True)
class CatalogSize:
    """What the catalog holds: originals, thumbnails, and everything else: the files of its LanceDB tables
    (products, vectors, keypoints, package text) and the score calibration, with `parts` saying how much of each."""

    images: int = 0
    image_bytes: int = 0
    thumbnails: int = 0
    thumbnail_bytes: int = 0
    metadata_objects: int = 0
    metadata_bytes: int = 0
    parts: tuple[tuple[str, int, int], ...] = ()  # (what, objects, bytes) of the metadata, biggest first

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name != "parts":
                _check_amount("CatalogSize", f.name, getattr(self, f.name), whole=True)

    def metadata_text(self) -> str:
        """'99 files of the catalog's tables and calibration (14.9 MB: keypoints 12.2 MB, ...)': what the objects
        beside the photos are, for people."""
        files = f"{self.metadata_objects:,} file{'' if self.metadata_objects == 1 else 's'}"
        what = f"{files} of the catalog's tables and calibration ({format_bytes(self.metadata_bytes)}"
        if self.parts:
            what += ": " + ", ".join(f"{label} {format_bytes(size)}" for label, _n, size in self.parts)
        return what + ")"

    @property
    def objects(self) -> int:
        return self.images + self.thumbnails + self.metadata_objects

    @property
    def bytes(self) -> int:
        return self.image_bytes + self.thumbnail_bytes + self.metadata_bytes

    @classmethod
    def from_objects(
        cls, objects: Iterable[tuple[str, int]], image_prefix: str = "images/", thumbnail_prefix: str = "thumbnails/"
    ) -> CatalogSize:
        """Sum (key, size) pairs, e.g. `((o.key, o.size) for o in storage.iter_objects())`."""
        n = {"i": 0, "t": 0, "m": 0}
        b = {"i": 0, "t": 0, "m": 0}
        parts: dict[str, list[int]] = {}
        for key, size in objects:
            kind = "i" if key.startswith(image_prefix) else "t" if key.startswith(thumbnail_prefix) else "m"
            n[kind] += 1
            b[kind] += size
            if kind == "m":
                part = parts.setdefault(metadata_part(key), [0, 0])
                part[0] += 1
                part[1] += size
        ordered = tuple(sorted(((label, count, size) for label, (count, size) in parts.items()),
                               key=lambda part: (-part[2], part[0])))
        return cls(n["i"], b["i"], n["t"], b["t"], n["m"], b["m"], ordered)


DEFAULT_THUMBNAIL_BYTES = 15_000  # a 256 px WebP product thumbnail


@dataclass(frozen=True)
class Traffic:
    """Editable assumptions about use. Sizes left as None come from the catalog."""

    searches_per_month: int = 1000
    images_per_search: int = 10
    use_cdn: bool = False
    serve_thumbnails: bool = True
    avg_thumbnail_bytes: int | None = None  # None: the catalog's average thumbnail, else 15,000
    avg_image_bytes: int | None = None  # None: the catalog's average original
    app_starts_per_month: int = 30  # each start reads the catalog's tables from S3 (counted as all of their files)

    def __post_init__(self) -> None:
        for name in ("searches_per_month", "images_per_search", "app_starts_per_month"):
            _check_amount("Traffic", name, getattr(self, name), whole=True)
        for name in ("avg_thumbnail_bytes", "avg_image_bytes"):
            if getattr(self, name) is not None:
                _check_amount("Traffic", name, getattr(self, name), whole=True)
        for name in ("use_cdn", "serve_thumbnails"):
            if not isinstance(getattr(self, name), bool):
                raise PriceError(f"Traffic.{name} must be true or false, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class CostLine:
    item: str
    quantity: float
    unit: str  # what quantity counts: "requests", "GB", "GB-month"
    unit_price: float
    price_unit: str  # what unit_price is per: "per 1,000 requests", "per GB"
    usd: float  # after tiers and free allowances
    note: str = ""
    group: str = "requests"  # the chart's bar: "storage", "requests", "transfer", "CDN" or "compute"


@dataclass(frozen=True)
class Estimate:
    catalog: CatalogSize
    traffic: Traffic
    prices: PriceTable
    one_time: tuple[CostLine, ...] = field(default_factory=tuple)
    monthly: tuple[CostLine, ...] = field(default_factory=tuple)
    one_time_title: str = "One-time (migration)"

    @property
    def one_time_total(self) -> float:
        return sum(line.usd for line in self.one_time)

    @property
    def monthly_total(self) -> float:
        return sum(line.usd for line in self.monthly)

    def monthly_by_group(self) -> dict[str, float]:
        """Monthly USD per chart bar (storage, requests, transfer, CDN, compute), in the order the lines come."""
        totals: dict[str, float] = {}
        for line in self.monthly:
            totals[line.group] = totals.get(line.group, 0.0) + line.usd
        return totals

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per line, `kind` = "one-time" or "monthly": ready for a DataFrame or a chart."""
        return [{"kind": "one-time", **asdict(line)} for line in self.one_time] + [
            {"kind": "monthly", **asdict(line)} for line in self.monthly
        ]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: everything needed to reproduce and explain the estimate."""
        return {
            "currency": "USD",
            "prices": self.prices.as_dict(),
            "catalog": {**asdict(self.catalog), "objects": self.catalog.objects, "bytes": self.catalog.bytes,
                        "parts": [{"what": what, "objects": n, "bytes": size} for what, n, size in self.catalog.parts]},
            "traffic": asdict(self.traffic),
            "one_time": [asdict(line) for line in self.one_time],
            "monthly": [asdict(line) for line in self.monthly],
            "one_time_total": self.one_time_total,
            "monthly_total": self.monthly_total,
        }

    def as_text(self) -> str:
        """A plain table for the CLI."""
        out = [f"Prices: {self.prices.region}, as of {self.prices.as_of.isoformat()} ({self.prices.source})"]
        if any(line.group == "compute" for line in self.one_time + self.monthly):
            out.append(f"Compute: as of {self.prices.compute_as_of.isoformat()} ({self.prices.compute_source})")
        for title, lines, total in (
            (self.one_time_title, self.one_time, self.one_time_total),
            ("Monthly", self.monthly, self.monthly_total),
        ):
            out += ["", title]
            for line in lines:
                qty = f"{line.quantity:,.4g}" if line.quantity < 1000 else f"{line.quantity:,.0f}"
                out.append(f"  {line.item:<44} {qty:>14} {line.unit:<9} {format_usd(line.usd):>12}")
                note = f"{_fmt_price(line.unit_price)} {line.price_unit}" + (f"; {line.note}" if line.note else "")
                out.append(f"      {note}")
            out.append(f"  {'Total':<44} {'':>14} {'':<9} {format_usd(total):>12}")
        return "\n".join(out)


# ---------------------------------------------------------------------------------------------- prices


def _check_quantity(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise PriceError(f"{name} must be a number >= 0, got {value!r}")


def _storage_tier_rate(gb: float, prices: PriceTable) -> float:
    """The rate of the highest tier `gb` reaches."""
    for upper, rate in prices.storage_tiers:
        if upper is None or gb <= upper:
            return rate
    raise AssertionError("unreachable: the last tier is open-ended")


def storage_cost(gb: float, prices: PriceTable = DEFAULT_PRICES) -> float:
    """USD a month to keep `gb` in S3 Standard, tier by tier."""
    _check_quantity("storage GB", gb)
    cost, lower = 0.0, 0.0
    for upper, rate in prices.storage_tiers:
        if upper is None or gb <= upper:
            return cost + (gb - lower) * rate
        cost += (upper - lower) * rate
        lower = upper
    raise AssertionError("unreachable: the last tier is open-ended")


def transfer_out_cost(gb: float, prices: PriceTable = DEFAULT_PRICES) -> float:
    """USD for `gb` from S3 to the internet in a month, after the free allowance."""
    _check_quantity("transfer GB", gb)
    return max(0.0, gb - prices.transfer_out_free_gb) * prices.transfer_out_per_gb


def _cdn_transfer_cost(gb: float, prices: PriceTable) -> float:
    _check_quantity("CDN GB", gb)
    return max(0.0, gb - prices.cdn_free_gb) * prices.cdn_per_gb


def _cdn_request_cost(requests: float, prices: PriceTable) -> float:
    _check_quantity("CDN requests", requests)
    return max(0.0, requests - prices.cdn_free_requests) / 10_000 * prices.cdn_per_10k_requests


# -------------------------------------------------------------------------------------------- estimate

_LIST_PAGE = 1000  # keys per ListObjectsV2 response


def _fmt_count(n: float) -> str:
    return f"{n:,.0f}"


def _fmt_gb(gb: float) -> str:
    """"976.56 GB", "50 TB", "0.0014 GB"."""
    if 0 < gb < 0.01:
        return f"{gb:.2g} GB"
    value, unit = (gb / GB_PER_TB, "TB") if gb >= GB_PER_TB else (gb, "GB")
    return f"{value:,.2f}".rstrip("0").rstrip(".") + f" {unit}"


def _fmt_price(rate: float) -> str:
    return f"${rate:g}"


def _rate_note(gb: float, prices: PriceTable) -> str:
    if gb > prices.transfer_rate_upto_gb:
        return (f"; over {_fmt_gb(prices.transfer_rate_upto_gb)} AWS charges less per GB, "
                "so this is an upper bound")
    return ""


def _served_bytes(catalog: CatalogSize, traffic: Traffic) -> tuple[int, str]:
    """Average bytes per viewed image, and what it is (for the notes)."""
    if traffic.serve_thumbnails:
        if traffic.avg_thumbnail_bytes is not None:
            return traffic.avg_thumbnail_bytes, "thumbnail"
        if catalog.thumbnails:
            return catalog.thumbnail_bytes // catalog.thumbnails, "thumbnail"
        return DEFAULT_THUMBNAIL_BYTES, "thumbnail (assumed size)"
    if traffic.avg_image_bytes is not None:
        return traffic.avg_image_bytes, "original"
    return (catalog.image_bytes // catalog.images if catalog.images else 0), "original"


def _migration_lines(catalog: CatalogSize, prices: PriceTable) -> tuple[CostLine, ...]:
    n = catalog.objects
    lists = math.ceil(n / _LIST_PAGE)
    return (
        CostLine(
            "Migration: PUT requests", n, "requests", prices.put_per_1000, "per 1,000 requests",
            n / 1000 * prices.put_per_1000,
            f"one PUT per object ({_fmt_count(catalog.images)} images, {_fmt_count(catalog.thumbnails)} thumbnails, "
            f"{_fmt_count(catalog.metadata_objects)} files of the catalog's tables and calibration); files over 8 MB "
            "upload in parts and cost a few more",
        ),
        CostLine(
            "Migration: LIST requests", lists, "requests", prices.put_per_1000, "per 1,000 requests",
            lists / 1000 * prices.put_per_1000,
            f"one listing of the bucket, {_LIST_PAGE:,} keys a page, to skip objects already there; "
            "data transfer into S3 is free",
        ),
    )


def estimate(
    catalog: CatalogSize, traffic: Traffic = Traffic(), prices: PriceTable = DEFAULT_PRICES
) -> Estimate:
    """One-time migration cost and monthly running cost of `catalog` on S3 under `traffic`."""
    # An empty catalog has nothing to show, whatever the search volume.
    views = traffic.searches_per_month * traffic.images_per_search if catalog.images else 0
    served, served_what = _served_bytes(catalog, traffic)
    view_gb = views * served / BYTES_PER_GB
    view_note = (f"{_fmt_count(traffic.searches_per_month)} searches x {traffic.images_per_search} images, "
                 f"each a {served_what} of {format_bytes(served)}")
    if not catalog.images:
        view_note = "the catalog has no images, so searches show none"

    meta_gets = traffic.app_starts_per_month * catalog.metadata_objects
    meta_gb = traffic.app_starts_per_month * catalog.metadata_bytes / BYTES_PER_GB

    stored_gb = catalog.bytes / BYTES_PER_GB
    tiers = ", ".join(
        f"{_fmt_price(rate)} {'over' if upper is None else 'up to'} {_fmt_gb(upper if upper is not None else lower)}"
        for (upper, rate), lower in zip(prices.storage_tiers, [0.0] + [t[0] for t in prices.storage_tiers[:-1]], strict=True)
    )
    storage_note = f"tiered: {tiers}"
    if traffic.serve_thumbnails and catalog.images and not catalog.thumbnails:
        storage_note += "; the catalog has no thumbnails yet, so storing them is not counted"
    monthly = [
        CostLine("S3 Standard storage", stored_gb, "GB-month", _storage_tier_rate(stored_gb, prices),
                 "per GB-month", storage_cost(stored_gb, prices), storage_note, group="storage"),
    ]
    if traffic.use_cdn:
        monthly += [
            CostLine("CloudFront HTTPS requests", views, "requests", prices.cdn_per_10k_requests,
                     "per 10,000 requests", _cdn_request_cost(views, prices),
                     f"{view_note}; first {_fmt_count(prices.cdn_free_requests)} a month free; "
                     "origin fetches from S3 assumed cached, so not counted", group="CDN"),
            CostLine("CloudFront data transfer out", view_gb, "GB", prices.cdn_per_gb, "per GB",
                     _cdn_transfer_cost(view_gb, prices),
                     f"first {_fmt_gb(prices.cdn_free_gb)} a month free; S3 to CloudFront is free"
                     f"{_rate_note(view_gb, prices)}", group="CDN"),
        ]
    else:
        monthly.append(
            CostLine("S3 GET requests: image views", views, "requests", prices.get_per_1000,
                     "per 1,000 requests", views / 1000 * prices.get_per_1000,
                     f"{view_note}, fetched straight from S3"),
        )
    monthly.append(
        CostLine("S3 GET requests: catalog tables at app start", meta_gets, "requests", prices.get_per_1000,
                 "per 1,000 requests", meta_gets / 1000 * prices.get_per_1000,
                 f"{traffic.app_starts_per_month} starts x {_fmt_count(catalog.metadata_objects)} files of the "
                 "catalog's LanceDB tables (products, vectors, keypoints, package text) and its score calibration; "
                 "an upper bound, as if every start read every file"),
    )
    out_gb = meta_gb + (0.0 if traffic.use_cdn else view_gb)
    out_parts = ([] if traffic.use_cdn else [f"image views {_fmt_gb(view_gb)}"]) + [
        f"catalog tables at app start {_fmt_gb(meta_gb)} (free instead if the app runs in AWS {prices.region})"
    ]
    monthly.append(
        CostLine("S3 data transfer out to the internet", out_gb, "GB", prices.transfer_out_per_gb, "per GB",
                 transfer_out_cost(out_gb, prices),
                 f"{' + '.join(out_parts)}; first {_fmt_gb(prices.transfer_out_free_gb)} a month free "
                 "(shared by the whole AWS account)"
                 f"{_rate_note(out_gb, prices)}", group="transfer"),
    )
    return Estimate(catalog, traffic, prices, _migration_lines(catalog, prices), tuple(monthly))


# ------------------------------------------------------------------------------------------ formatting


def format_usd(x: float) -> str:
    """"$1,234.56" for amounts of a cent or more; two significant digits below ("$0.0023"), so a small demo
    catalog does not read $0.00 everywhere; "<$0.000001" for dust."""
    if not math.isfinite(x):
        raise ValueError(f"cannot format {x!r} as dollars")
    sign, x = ("-", -x) if x < 0 else ("", x)
    if x == 0 or x >= 0.01:
        return f"{sign}${x:,.2f}"
    if x < 0.000001:
        return f"{sign}<$0.000001"
    decimals = 1 - math.floor(math.log10(x))  # two significant digits
    text = f"{x:.{decimals}f}".rstrip("0")
    return f"{sign}${text}"
