"""`vpm check` and `vpm check --repair`, and the same actions on the Storage browser page.

The check is the one consistency verdict every face gives (vpm/core/health.py turns vpm/core/consistency.py's report into
checks): missing files fail, orphan files and photos without vectors or keypoints warn; here with every table
opened and the whole catalog walked, not the bounded sample a health probe reads.

The repair does three things, each said before it is done:
- a table that will not open gets its unreadable newest version files set aside (vpm/backends/table_repair.py: moved into
  the catalog's `set-aside/` folder, never deleted) and opens at its newest readable version;
- orphan files are deleted, except files written in the last few minutes (an add writes its photo before the
  product row, so a new file may belong to a product being added right now) and files that may belong to a change
  set aside earlier; each is checked against the catalog again just before it goes (consistency.delete_orphans);
- photos without vectors, keypoints or package text are embedded by the same code `vpm index` runs
  (Matcher.reindex).
The faces ask for consent (the command line on a terminal or with --yes; the page with a checkbox); this module
decides what is planned and does it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from vpm.backends import table_repair
from vpm.backends.table_repair import SetAsideRecord, SetAsideResult, TableState
from vpm.core.consistency import (
    RECENT_SECONDS,
    ConsistencyReport,
    DeleteResult,
    Orphan,
    VectorCoverage,
    consistency_report,
    delete_orphans,
    keypoint_coverage,
)
from vpm.core.health import Check, Status, coverage_check, files_verdict, overall
from vpm.core.storage import StorageError

if TYPE_CHECKING:
    from vpm.core.indexing import IndexStatus
    from vpm.core.matcher import Matcher

log = logging.getLogger(__name__)

PRODUCTS = "products"
REPAIR_COMMAND = "python -m vpm check --repair"


@dataclass(frozen=True)
class CheckResult:
    """What `vpm check` found: every table, the files, the vectors and keypoints, and the checks they make."""

    storage: str
    tables: list[TableState]
    checks: list[Check]
    report: ConsistencyReport | None = None  # None when the products table does not open (or storage is out of reach)
    keypoints: VectorCoverage | None = None
    set_asides: list[SetAsideRecord] = field(default_factory=list)  # earlier repairs, still kept

    @property
    def status(self) -> Status:
        return overall(self.checks)

    @property
    def damaged(self) -> list[TableState]:
        return [t for t in self.tables if not t.readable]

    @property
    def fixable(self) -> list[TableState]:
        """Damaged tables that setting versions aside brings back."""
        return [t for t in self.damaged if t.plan is not None]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "storage": self.storage,
            "checks": [c.as_dict() for c in self.checks],
            "tables": [t.as_dict() for t in self.tables],
            "files": self.report.as_dict() if self.report is not None else None,
            "keypoints": self.keypoints.as_dict() if self.keypoints is not None else None,
            "set_aside_earlier": [{"folder": r.folder, "table": r.table, "versions": r.versions} for r in self.set_asides],
        }

    def lines(self) -> list[str]:
        """The verdict for people, one check a line (a fix under it), as `vpm health` prints it."""
        lines = [f"[{c.status.upper():4}] {c.name}: {c.detail}" + (f"\n       fix: {c.fix}" if c.fix and c.status != "pass" else "")
                 for c in self.checks]
        lines += [f"       set aside earlier: {r.folder} ({r.table}, {_versions(r.versions)})" for r in self.set_asides]
        return lines


def check(matcher: Matcher, *, min_age_seconds: float | None = None) -> CheckResult:
    """The whole verdict, read-only: storage, every table, then (when the products table opens) every file, the
    vectors of the model that runs (or will) and the keypoints. Loads no model. Orphans younger than
    `min_age_seconds` (RECENT_SECONDS) are marked recent."""
    min_age = RECENT_SECONDS if min_age_seconds is None else min_age_seconds
    storage, where = matcher.storage, matcher.where
    try:
        storage.check_access()
        tables = table_repair.probe_all(storage, where)
        earlier = list(table_repair.records(storage, where))
    except StorageError as err:
        return CheckResult(storage.description, [], [Check("storage reachable", "fail", str(err),
                                                           "check the storage settings (VPM_DATA_DIR, or S3_*)")])
    checks = [_tables_check(tables)]
    if any(t.name == PRODUCTS and not t.readable for t in tables):
        return CheckResult(storage.description, tables, checks, set_asides=earlier)
    try:
        report = consistency_report(matcher, min_age_seconds=min_age)
    except StorageError as err:  # the catalog's own clear error (a damaged table included)
        checks.append(Check("catalog files", "fail", str(err), f"see {REPAIR_COMMAND}"))
        return CheckResult(storage.description, tables, checks, set_asides=earlier)
    keypoints = keypoint_coverage(matcher)
    checks += [Check("catalog files", *files_verdict(report)), coverage_check("search vectors", report.vectors),
               coverage_check("keypoints", keypoints)]
    return CheckResult(storage.description, tables, checks, report, keypoints, earlier)


def _tables_check(tables: list[TableState]) -> Check:
    damaged = [t for t in tables if not t.readable]
    if not tables:
        return Check("catalog tables", "pass", "no tables yet (an empty catalog)")
    if not damaged:
        listed = ", ".join(f"{t.name} ({t.rows:,} rows)" for t in tables)
        return Check("catalog tables", "pass", f"every table opens: {listed}")
    fixable = [t for t in damaged if t.plan is not None]
    fix = f"{REPAIR_COMMAND} sets the damaged versions aside (it keeps them)" if fixable else ""
    if len(fixable) < len(damaged):
        fix = "; ".join(filter(None, [fix, "restore the other tables from a backup (the vector and keypoint tables are "
                                           "made again by python -m vpm index --rebuild)"]))
    return Check("catalog tables", "fail", "; ".join(t.problem for t in damaged), fix)


def _versions(numbers: list[int]) -> str:
    return f"version {numbers[0]}" if len(numbers) == 1 else "versions " + ", ".join(str(v) for v in sorted(numbers))


# ----------------------------------------------------------------------------------------------- tables


def set_aside_damaged(matcher: Matcher, tables: list[TableState]) -> list[SetAsideResult]:
    """Set aside the unreadable newest versions of each of `tables` that has a plan (table_repair.set_aside);
    raises table_repair.RepairError at the first that fails (the ones before it stay repaired)."""
    return [table_repair.set_aside(matcher.storage, matcher.where, t) for t in tables if t.plan is not None]


# ----------------------------------------------------------------------------------------------- orphans


@dataclass(frozen=True)
class OrphanPlan:
    """Which orphan files a repair deletes, and which it keeps and why."""

    delete: list[Orphan]
    keep: list[tuple[Orphan, str]]
    refused: str = ""  # why nothing at all may be deleted (no catalog)

    @property
    def delete_bytes(self) -> int:
        return sum(o.size for o in self.delete)

    def lines(self) -> list[str]:
        from vpm.core.presentation import format_bytes, plural

        if self.refused:
            return [f"no orphan file is deleted: {self.refused}"]
        lines = []
        if self.delete:
            lines.append(f"{plural(len(self.delete), 'orphan file')} ({format_bytes(self.delete_bytes)}) will be "
                         "deleted (each is checked against the catalog again just before):")
            lines += [f"  {o.key}" for o in self.delete]
        if self.keep:
            lines.append(f"{plural(len(self.keep), 'orphan file')} will stay:")
            lines += [f"  {o.key}: {why}" for o, why in self.keep]
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {"delete": [o.key for o in self.delete], "keep": [{"key": o.key, "reason": why} for o, why in self.keep],
                "refused": self.refused}


def plan_orphans(matcher: Matcher, report: ConsistencyReport, *, include_recent: bool = False,
                 records: list[SetAsideRecord] | None = None) -> OrphanPlan:
    """What deleting `report`'s orphans would do. Kept: files written in the last RECENT_SECONDS (unless
    `include_recent`), and files written between an earlier set-aside's last readable version and the set-aside
    itself (they may belong to a product of a change set aside). Nothing at all when the catalog does not exist."""
    if not report.catalog_exists:
        return OrphanPlan([], [(o, "the catalog tables do not exist") for o in report.orphans],
                          "the catalog tables do not exist, so every file looks orphaned: restore the catalog first")
    if records is None:
        records = list(table_repair.records(matcher.storage, matcher.where))
    windows = _set_aside_windows(records)
    minutes = f"{RECENT_SECONDS / 60:g}"
    delete: list[Orphan] = []
    keep: list[tuple[Orphan, str]] = []
    for orphan in report.orphans:
        written = _utc(orphan.last_modified)
        held = next((r for start, end, r in windows if start <= written <= end), None)
        if orphan.recent and not include_recent:
            keep.append((orphan, f"written in the last {minutes} minutes: it may belong to a product being added "
                                 "right now"))
        elif held is not None:
            keep.append((orphan, f"written around the {held.table} changes set aside in {held.folder}: it may "
                                 "belong to one of their products (remove that folder once they are given up)"))
        else:
            delete.append(orphan)
    return OrphanPlan(delete, keep)


def _set_aside_windows(records: list[SetAsideRecord]) -> list[tuple[datetime, datetime, SetAsideRecord]]:
    """(from, to, record): when the photos of the products changes a set-aside holds may have been written."""
    margin = timedelta(seconds=SET_ASIDE_MARGIN)
    windows = []
    for r in records:
        if r.table != PRODUCTS or r.set_aside_at is None:
            continue
        start = (r.readable_version_committed_at or r.set_aside_at - timedelta(days=365 * 100)) - margin
        windows.append((start, r.set_aside_at, r))
    return windows


def delete_planned(matcher: Matcher, plan: OrphanPlan, *, include_recent: bool = False) -> DeleteResult:
    """Delete the plan's files; consistency.delete_orphans asks the catalog afresh first and keeps any file a
    product references by then (or written since, unless `include_recent`)."""
    keys = [o.key for o in plan.delete]
    return delete_orphans(matcher, keys, set(keys), min_age_seconds=0 if include_recent else RECENT_SECONDS)


# An add writes its photos before the row that points at them, minutes before at most: photos written this long
# before the last readable version of a set-aside table may still belong to a change set aside.
SET_ASIDE_MARGIN = 10 * 60


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# ------------------------------------------------------------------------------------------------ embedding


@dataclass(frozen=True)
class EmbedPlan:
    """Photos a repair embeds (vectors of the model that runs), finds keypoints for, or reads the text of."""

    vectors: int
    keypoints: int
    text: int
    model_id: str | None

    @property
    def needed(self) -> bool:
        return bool(self.vectors or self.keypoints or self.text)

    def line(self) -> str:
        from vpm.core.presentation import plural

        parts = []
        if self.vectors:
            model = f" for {self.model_id}" if self.model_id else ""
            parts.append(f"embed {plural(self.vectors, 'photo')} without a search vector{model}")
        if self.keypoints:
            parts.append(f"find the keypoints of {plural(self.keypoints, 'photo')}")
        if self.text:
            parts.append(f"read the package text of about {plural(self.text, 'photo')}")
        return ("; ".join(parts) + " (as python -m vpm index does)") if parts else "every photo has its vectors and keypoints"

    def as_dict(self) -> dict[str, Any]:
        return {"vectors": self.vectors, "keypoints": self.keypoints, "text": self.text, "model_id": self.model_id}


def plan_embedding(matcher: Matcher, found: CheckResult) -> EmbedPlan:
    """From a check: how many photos lack vectors or keypoints, and (with VPM_PACKAGE_TEXT) package text."""
    vectors = found.report.vectors if found.report is not None else None
    keypoints = found.keypoints
    text = 0
    if matcher.package_text_default and found.report is not None:
        try:  # an estimate from two counts; the table is never created by looking
            photos = matcher.catalog.photo_count()
            text = max(0, photos - matcher.texts.count()) if matcher.has_text_table() else photos
        except StorageError as err:
            log.info("package text coverage unknown: %s", err)
    return EmbedPlan(
        vectors.missing_photos if vectors is not None and vectors.state == "missing" else 0,
        keypoints.missing_photos if keypoints is not None and keypoints.state == "missing" else 0,
        text,
        # Named only once loaded: before that it is a prediction, and the model that loads says what it is.
        vectors.model_id if vectors is not None and matcher.model_loaded else None,
    )


def embed_missing(matcher: Matcher, progress: Callable[..., None] | None = None) -> IndexStatus:
    """What `vpm index` runs: the missing vectors, keypoints and package text, then stale rows dropped."""
    return matcher.reindex(progress=progress)
