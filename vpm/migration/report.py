"""What a migration did, and how plans and reports read: as text for the CLI, as dicts for --json and the page.

A plan is read from its JSON document (`MigrationPlan.as_dict()`), so the text and --json say the same things
and this module needs nothing of plan.py: the arrows go plan -> report, never back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vpm.core.costs import format_usd
from vpm.core.health import Check, overall
from vpm.core.presentation import format_bytes
from vpm.migration.files import ACTIONS, SKIP, UPLOAD

# What happened to one file.
UPLOADED, SKIPPED, CONFLICT, FAILED = "uploaded", "skipped", "conflict", "failed"


@dataclass(frozen=True)
class ItemResult:
    kind: str
    key: str
    status: str  # uploaded | skipped | conflict | failed
    size: int
    reason: str = ""
    product_ids: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "product_ids": list(self.product_ids)}


@dataclass(frozen=True)
class ProductsResult:
    """What happened to the bucket's product rows."""

    status: str  # "written" | "unchanged" | "not written" | "incomplete"
    detail: str
    added: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    kept: int = 0
    conflicts: tuple[str, ...] = ()
    held_back: tuple[str, ...] = ()

    @property
    def rows_written(self) -> int:
        return len(self.added) + len(self.replaced)

    @property
    def in_bucket(self) -> set[str]:
        """Local products whose row in the bucket is now exactly ours."""
        return set(self.added) | set(self.replaced) | set(self.unchanged)

    @property
    def complete(self) -> bool:
        return self.status in ("written", "unchanged") and not self.conflicts and not self.held_back

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "detail": self.detail, "added": list(self.added), "replaced": list(self.replaced),
            "unchanged": len(self.unchanged), "kept": self.kept, "conflicts": list(self.conflicts),
            "held_back": list(self.held_back), "rows_written": self.rows_written,
        }


@dataclass(frozen=True)
class VectorsResult:
    """One model's vectors."""

    model_id: str
    status: str  # "copied" | "unchanged" | "not copied" | "incomplete"
    copied: int
    planned: int
    detail: str = ""

    @property
    def complete(self) -> bool:
        return self.status in ("copied", "unchanged")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MigrationReport:
    target: str
    results: list[ItemResult]
    products: ProductsResult
    vectors: list[VectorsResult]
    bytes_uploaded: int
    duration_s: float
    verification: list[Check] = field(default_factory=list)
    # How many uploads were in flight at most, and how often the bucket asked to slow down (flow.py).
    in_flight: dict[str, int] = field(default_factory=dict)

    def with_status(self, status: str) -> list[ItemResult]:
        return [r for r in self.results if r.status == status]

    @property
    def uploaded(self) -> list[ItemResult]:
        return self.with_status(UPLOADED)

    @property
    def skipped(self) -> list[ItemResult]:
        return self.with_status(SKIPPED)

    @property
    def conflicts(self) -> list[ItemResult]:
        return self.with_status(CONFLICT)

    @property
    def failed(self) -> list[ItemResult]:
        return self.with_status(FAILED)

    @property
    def vectors_copied(self) -> int:
        return sum(v.copied for v in self.vectors)

    @property
    def ok(self) -> bool:
        """Nothing failed or left in conflict, and the bucket's catalog is complete and verified."""
        return (not self.failed and not self.conflicts and self.products.complete
                and all(v.complete for v in self.vectors) and overall(self.verification) != "fail")

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def rows(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.results]

    def as_dict(self) -> dict[str, Any]:
        def summary(items: list[ItemResult]) -> dict[str, int]:
            return {"files": len(items), "bytes": sum(i.size for i in items)}

        return {
            "ok": self.ok,
            "target": self.target,
            "uploaded": summary(self.uploaded),
            "skipped": summary(self.skipped),
            "conflicts": [r.as_dict() for r in self.conflicts],
            "failed": [r.as_dict() for r in self.failed],
            "bytes_uploaded": self.bytes_uploaded,
            "duration_s": round(self.duration_s, 3),
            "files_per_s": round(len(self.uploaded) / self.duration_s, 1) if self.duration_s > 0 else None,
            "products": self.products.as_dict(),
            "vectors": [v.as_dict() for v in self.vectors],
            "uploads_in_flight": dict(self.in_flight),
            "verification": [c.as_dict() for c in self.verification],
            "items": self.rows(),
        }

    def as_text(self) -> str:
        return report_text(self)


# ------------------------------------------------------------------------------------------------- text


def plan_vectors_line(products: Mapping[str, Any], vectors: Sequence[Mapping[str, Any]]) -> str:
    """From a plan's document: its "products" and its "vectors" (one dict a model)."""
    if products["action"] == "blocked":
        return "none until the products can be written"
    if not vectors:
        return "none to copy (photos without a vector are embedded by the bucket on its first search)"
    parts = []
    for m in vectors:
        text = f"{m['model_id']}: {m['to_copy']} to copy, {m['already_there']} already there"
        if m["without_vector"]:
            text += f", {m['without_vector']} photos without one (embedded by the bucket)"
        parts.append(text)
    return "; ".join(parts)


def report_vectors_line(report: MigrationReport) -> str:
    if not report.vectors:
        return "none copied"
    def line(v: VectorsResult) -> str:
        if v.status == "unchanged":
            return f"{v.model_id}: every vector already there"
        if v.status == "copied":
            return f"{v.model_id}: {v.copied} copied" + (f" ({v.detail})" if v.detail else "")
        return f"{v.model_id}: {v.status}, {v.copied} of {v.planned} copied ({v.detail})"

    return "; ".join(line(v) for v in report.vectors)


def plan_text(plan: Mapping[str, Any], *, list_files: bool = True) -> str:
    """From a plan's document (`MigrationPlan.as_dict()`)."""
    out = [f"Migration plan: {plan['source']} -> {plan['target']}"]
    if list_files:
        for i in plan["items"]:
            note = f"  ({i['reason']})" if i["reason"] else ""
            out.append(f"  {i['action']:<9} {i['key']}  {format_bytes(i['size'])}{note}")
    totals = plan["totals"]
    out.append("")
    for action in ACTIONS:
        if totals[action]["files"] or action in (UPLOAD, SKIP):
            out.append(f"  {action:<9} {totals[action]['files']:>7} files  {format_bytes(totals[action]['bytes']):>10}")
    out.append(f"  {'total':<9} {totals['files']:>7} files  {format_bytes(totals['bytes']):>10}")
    out.append(f"  products: {plan['products']['action']}: {plan['products']['detail']}")
    out.append(f"  vectors: {plan_vectors_line(plan['products'], plan['vectors'])}")
    for warning in plan["warnings"]:
        out.append(f"  warning: {warning}")
    out.append("")
    out.append(f"Estimated cost: {plan_cost_line(plan['estimate'])} (`python -m vpm costs` for the breakdown)")
    return "\n".join(out)


def plan_cost_line(estimate: Mapping[str, Any]) -> str:
    """'migration $0.01 once, then $0.05 a month' at the default traffic, from a plan's "estimate" (the measure of
    the catalog it was made with, as `Estimate.as_dict()` gives it)."""
    return (f"migration {format_usd(estimate['one_time_total'])} once, then {format_usd(estimate['monthly_total'])} "
            f"a month at {estimate['traffic']['searches_per_month']:,} searches a month")


def report_text(report: MigrationReport) -> str:
    rate = f", {format_bytes(report.bytes_uploaded / report.duration_s)}/s" if report.duration_s > 0 else ""
    out = [
        f"Migration to {report.target}: {'done' if report.ok else 'INCOMPLETE'}",
        f"  uploaded  {len(report.uploaded):>7} files  {format_bytes(report.bytes_uploaded):>10}",
        f"  skipped   {len(report.skipped):>7} files  (already in the bucket, identical)",
        f"  conflicts {len(report.conflicts):>7} files",
        f"  failed    {len(report.failed):>7} files",
        f"  duration  {report.duration_s:,.1f} s{rate}",
        f"  products: {report.products.status}: {report.products.detail}",
        f"  vectors: {report_vectors_line(report)}",
    ]
    for r in report.conflicts:
        out.append(f"  conflict: {r.key}: {r.reason}")
    for r in report.failed:
        out.append(f"  failed: {r.key}: {r.reason}")
    for c in report.verification:
        out.append(f"  [{c.status.upper():4}] {c.name}: {c.detail}")
    if report.conflicts or report.products.conflicts:
        out.append("  conflicts are never overwritten: inspect them, then re-run with --overwrite to replace them")
    unfinished = report.products.status in ("not written", "incomplete") or not all(v.complete for v in report.vectors)
    if report.failed or unfinished:
        out.append("  re-run the same command to finish: nothing already verified or written is sent again")
    return "\n".join(out)
