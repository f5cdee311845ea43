"""Health checks shared by the Health page, `python -m vpm health` and `GET /api/health`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

from .catalog import CatalogError
from .storage import EndpointNotS3, StorageError

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


def storage_checks(matcher) -> list[Check]:
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


def as_report(checks: list[Check]) -> dict:
    return {"status": overall(checks), "checks": [c.as_dict() for c in checks]}


def model_check(matcher) -> Check:
    """The active model; a warning when the configured one could not be loaded and the fallback runs."""
    from .embeddings import EmbeddingError

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


def index_check(matcher) -> Check:
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

    from .embeddings import EmbeddingError

    try:
        return _run("index", status, fix)
    except EmbeddingError as err:
        return Check("index", "fail", str(err), "check VPM_MODEL and VPM_DEVICE")


def full_checks(matcher) -> list[Check]:
    """Storage checks, then the model and the index (skipped when storage or catalog already failed)."""
    checks = storage_checks(matcher)
    checks.append(model_check(matcher))
    if overall(checks) != "fail":
        checks.append(index_check(matcher))
    return checks
