"""Health checks shared by the Health page, `python -m vpm health` and `GET /api/health`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from vpm.core.catalog import CatalogError
from vpm.core.storage import EndpointNotS3, StorageError

if TYPE_CHECKING:  # the matcher imports this module; annotations only
    from vpm.core.consistency import ConsistencyReport, VectorCoverage
    from vpm.core.matcher import Matcher

Status = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def overall(checks: list[Check]) -> Status:
    statuses = {c.status for c in checks}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"


def _run(name: str, fn: Callable[[], tuple[Status, str, str] | str], fix: str) -> Check:
    try:
        result = fn()
    except EndpointNotS3 as err:  # no bucket, region or permission fix helps while the address is wrong
        return Check(name, "fail", str(err), err.fix)
    except (StorageError, CatalogError, OSError) as err:
        return Check(name, "fail", str(err), fix)
    if isinstance(result, str):
        return Check(name, "pass", result)
    return Check(name, *result)


def storage_checks(matcher: Matcher) -> list[Check]:
    """Reachable, readable, writable, catalog parses. Stops early: a missing bucket makes the rest noise."""
    storage = matcher.storage
    checks = [
        _run(
            "storage reachable",
            lambda: (storage.check_access(), storage.description)[1],
            "check S3_BUCKET_NAME, S3_REGION and credentials" if storage.backend == "s3" else "check VPM_DATA_DIR",
        )
    ]
    if checks[-1].status == "fail":
        return checks

    def read_write() -> str:
        # A probe under the metadata prefix: proves put/get/delete permissions, then is removed.
        key = f"{matcher.settings.metadata_prefix}healthcheck-{uuid.uuid4().hex}.txt"
        payload = b"vpm health probe"
        storage.put(key, payload, "text/plain")
        try:
            if storage.get(key) != payload:
                raise StorageError(f"read back different bytes from {key}")
        finally:
            storage.delete(key)
        return "put, get and delete of a probe object succeeded"

    checks.append(_run("storage read/write", read_write, "grant s3:GetObject, s3:PutObject, s3:DeleteObject"))

    def catalog() -> str:
        counts = matcher.category_counts()
        return f"{sum(counts.values())} products in {len(counts)} categories ({matcher.where.description})"

    checks.append(_run("catalog readable", catalog, "restore the catalog tables from a backup, or see the log"))
    return checks


# The files check reads at most this many products and lists at most this many files of each folder: the whole
# catalog up to this size, a bounded sample beyond it (it says so), so a health probe stays quick at any size.
FILES_CHECK_LIMIT = 2_000
_SHOWN = 3  # keys named in a check's line; the Storage browser lists them all


def files_check(matcher: Matcher, limit: int = FILES_CHECK_LIMIT) -> Check:
    """The Storage browser's consistency check in one line: files that products point at but storage lacks (fail),
    files no product uses (warn; only "pass" with a note while they are all minutes old: an add writes its photo
    before its product)."""
    from vpm.core.consistency import consistency_report

    return _run("catalog files", lambda: files_verdict(consistency_report(matcher, vectors=False, limit=limit), limit),
                f"see {_BROWSER}")


_BROWSER = "the Storage browser's Consistency tab"
_REPAIR = "python -m vpm check --repair"


def files_verdict(report: ConsistencyReport, limit: int | None = None) -> tuple[Status, str, str]:
    """(status, detail, fix) of the "catalog files" check from a consistency report: the one verdict that
    `vpm health`, GET /api/health, `vpm check` and the Storage browser give. `limit`: the report's, if any."""
    from vpm.core.consistency import RECENT_SECONDS
    from vpm.core.presentation import format_bytes, plural

    parts: list[str] = []
    verdict: Status = "pass"
    fixes: list[str] = []
    if report.missing:
        verdict = "fail"
        named = "; ".join(f"{m.key} ({m.kind} of {m.product_id})" for m in report.missing[:_SHOWN])
        more = f"; and {len(report.missing) - _SHOWN} more" if len(report.missing) > _SHOWN else ""
        parts.append(f"{plural(len(report.missing), 'file')} that products point at "
                     f"{'is' if len(report.missing) == 1 else 'are'} missing: {named}{more}")
        fixes.append("restore the missing files, or delete and re-add those products on the Catalog page")
    old = [o for o in report.orphans if not o.recent]
    if report.orphans:
        named = ", ".join(o.key for o in report.orphans[:_SHOWN])
        more = f" and {len(report.orphans) - _SHOWN} more" if len(report.orphans) > _SHOWN else ""
        text = (f"{plural(len(report.orphans), 'orphan file')} that no product uses "
                f"({format_bytes(report.orphan_bytes)}): {named}{more}")
        if not report.catalog_exists:
            text += "; the catalog tables do not exist, so every file looks orphaned"
            fixes.append("restore the catalog before deleting any file")
        elif old:
            fixes.append(f"review and delete the orphans in {_BROWSER}, or with {_REPAIR}")
        else:
            text += (f" (written in the last {RECENT_SECONDS // 60} minutes: maybe a product being added right "
                     "now)")
        parts.append(text)
        if old or not report.catalog_exists:
            verdict = "warn" if verdict == "pass" else verdict
    files = f"{plural(report.image_files, 'image')}, {plural(report.thumbnail_files, 'thumbnail')}"
    if not parts and not report.products and not report.image_files + report.thumbnail_files:
        parts.append("no products and no photo files yet")
    elif not parts and report.complete:
        parts.append(f"every file of {plural(report.products, 'product')} is there, and every file belongs to a "
                     f"product ({files})")
    elif not parts:
        parts.append(f"no file missing and no orphan among those looked at ({files})")
    detail = "; ".join(parts)
    if not report.complete:
        detail += (f" (a quick check: {report.products:,} of {report.products_in_catalog:,} products and at most "
                   f"{limit or 0:,} files of each folder were looked at; {_BROWSER} and python -m vpm check "
                   "check them all)")
    fix = "; ".join(fixes)
    if fix and report.missing:
        fix += f" ({_BROWSER} lists them all)"
    return verdict, detail, fix


def coverage_check(name: str, coverage: VectorCoverage) -> Check:
    """A vectors or keypoints coverage as a check: photos without them are a warning (they are derived data:
    searches still run, and `vpm index` or `vpm check --repair` fills them in)."""
    if coverage.state == "ok":
        return Check(name, "pass", coverage.detail)
    fix = f"run python -m vpm index, or {_REPAIR}"
    if coverage.state == "missing":
        return Check(name, "warn", coverage.detail, fix)
    return Check(name, "warn", f"unknown: {coverage.detail}", f"run {_REPAIR} to see which table cannot be read")


def keypoints_check(matcher: Matcher, limit: int | None = FILES_CHECK_LIMIT) -> Check:
    """Photos without stored keypoints (their matches go unverified), over at most `limit` products."""
    from vpm.core.consistency import keypoint_coverage

    return coverage_check("keypoints", keypoint_coverage(matcher, limit))


def as_report(checks: list[Check]) -> dict:
    return {"status": overall(checks), "checks": [c.as_dict() for c in checks]}


def model_check(matcher: Matcher) -> Check:
    """The active model; a warning when the configured one could not be loaded and the fallback runs."""
    from vpm.models.embeddings import EmbeddingError

    try:
        embedder = matcher.embedder
    except EmbeddingError as err:
        return Check("model", "fail", str(err), "check VPM_MODEL and VPM_DEVICE")
    kind = "text and image search" if embedder.supports_text else "image search only"
    if embedder.fallback_reason:
        return Check(
            "model",
            "warn",
            f"using the built-in {embedder.model_id} ({kind}) because {matcher.settings.vpm_model} could not be "
            f"loaded: {embedder.fallback_reason}",
            "download the model once with network access, or set VPM_MODEL to a local folder",
        )
    runtime = getattr(embedder, "runtime", "torch")
    reason = getattr(embedder, "runtime_reason", None)
    on = f"on {runtime}" + (f" ({reason})" if reason else "")
    return Check("model", "pass", f"{embedder.display_name} ({embedder.model_id}, {embedder.dim}-d, {kind}, {on})")


def index_check(matcher: Matcher) -> Check:
    """Vectors cached for N/M products of the active model."""
    fix = "run python -m vpm index"

    def status() -> tuple[Status, str, str]:
        s = matcher.index_status()
        detail = f"vectors for {s.vectors}/{s.photos} photos of {s.products} products ({s.model_id})"
        if s.problems:
            return "warn", detail + "; some photos cannot be embedded: " + "; ".join(s.problems[:3]), fix
        if s.missing:
            return "warn", detail + f"; {s.missing} missing (they are embedded before the next search)", fix
        return "pass", detail, ""

    from vpm.models.embeddings import EmbeddingError

    try:
        return _run("index", status, fix)
    except EmbeddingError as err:
        return Check("index", "fail", str(err), "check VPM_MODEL and VPM_DEVICE")


@dataclass(frozen=True)
class IndexSummary:
    headline: str  # short, for a metric: "ready", "3 to embed", "empty", "unknown"
    detail: str  # one sentence for help text


def index_summary(matcher: Matcher, products: int) -> IndexSummary:
    """The search index state for status displays, from two counts; never loads the model."""
    if not products:
        return IndexSummary("empty", "No products yet, so nothing to index.")
    from vpm.models.model_outlook import for_matcher

    try:
        # The model that runs, or will on the first search (the offline fallback when the configured one cannot
        # load): counting the configured model's vectors would call a freshly imported catalog unindexed.
        model_id = for_matcher(matcher).model_id
        note = "" if matcher.model_loaded else " (not loaded yet)"
        vectors = matcher.vector_index(model_id).count() if matcher.has_vector_index(model_id) else 0
        photos = matcher.catalog.photo_count()
    except (CatalogError, StorageError) as err:  # derived data: never the reason a status display fails
        return IndexSummary("unknown", f"the vector index could not be read: {err}")
    if vectors >= photos:
        return IndexSummary("ready", f"{photos} photos of {products} products have a vector for {model_id}{note}.")
    missing = photos - vectors
    return IndexSummary(
        f"{missing} to embed",
        f"about {missing} of {photos} photos have no vector for {model_id}{note}; they are embedded before "
        "the next search.",
    )


def local_catalog_waiting(settings) -> int:
    """With S3 on: how many products the local catalog (VPM_DATA_DIR) holds, so an empty bucket can point at
    Migration; 0 when S3 is off, when there is no local catalog, or when it cannot be read."""
    if not settings.s3_enabled:
        return 0
    from vpm.core.wiring import build_matcher

    folder = settings.vpm_data_dir.expanduser()
    if not ((folder / settings.metadata_prefix / "products.lance").is_dir() or (folder / settings.s3_metadata_key).is_file()):
        return 0  # checked first, so a bucket-only install never gets a local folder made for it
    local = settings.model_copy(update={"s3_enabled": False})
    try:
        matcher = build_matcher(local)
        return matcher.count_products() if matcher.catalog_exists() else 0
    except (CatalogError, StorageError, OSError):
        return 0


def model_not_loaded_check(matcher: Matcher) -> Check:
    """The model line before the model is loaded: the index coverage, read from counts without loading it."""
    try:
        products = matcher.count_products()
    except (CatalogError, StorageError):
        products = 0  # the catalog check already says why
    index = index_summary(matcher, products)
    status: Status = "pass" if index.headline in ("ready", "empty") else "warn"
    return Check(
        "model and index",
        status,
        f"{index.detail[:1].upper()}{index.detail[1:]} The model loads on the first search.",
        "they are embedded before the next search; or load and check the model",
    )


def checks_for(matcher: Matcher, *, load_model: bool) -> list[Check]:
    """The one answer to "is it healthy" for every face (Health page, `vpm health`, GET /api/health).

    The model takes seconds and hundreds of MB to load, so unless asked (`load_model`) it is checked only when
    it is loaded already; before that the index is judged from counts. A failed storage or catalog check
    stops there: the rest would only repeat it.
    """
    if load_model:
        return full_checks(matcher)
    found = storage_checks(matcher)
    if overall(found) == "fail":
        return found
    found.append(files_check(matcher))
    found.append(keypoints_check(matcher))
    found.append(model_check(matcher) if matcher.model_loaded else model_not_loaded_check(matcher))
    return found


def full_checks(matcher: Matcher) -> list[Check]:
    """Storage checks and the files, then the model and the index (skipped when storage or catalog already
    failed)."""
    checks = storage_checks(matcher)
    storage_ok = overall(checks) != "fail"
    if storage_ok:
        checks.append(files_check(matcher))
        checks.append(keypoints_check(matcher))
    checks.append(model_check(matcher))
    if storage_ok and checks[-1].status != "fail":
        checks.append(index_check(matcher))
    return checks
