"""Copy the local catalog to S3 safely: check -> plan -> execute -> verify.

The source is the local folder (VPM_DATA_DIR), read through the engine; the target is the bucket the S3
settings name, whether or not S3_ENABLED is on yet. Rules (docs/architecture.md, "Data safety"):
- copy, never delete: the local folder is only read;
- skip a bucket object with the same size and SHA-256; a different one at the same key is a conflict, reported
  and left alone unless `overwrite`;
- verify every upload from the SHA-256 S3 returns on the PUT (a HEAD only where a backend returns none);
- decide what to skip from one listing per prefix (size and ETag), a HEAD only where that cannot tell;
- write the product rows only after every file they point at is verified, through the engine (insert-if-absent,
  or replace with `overwrite`); then the vectors, which are derived data;
- a dry run (`plan`) writes nothing anywhere and never creates a table in the bucket.
A re-run after success writes nothing; a re-run after an interruption does only what is left.

Against a bucket tens of milliseconds away every serial round trip counts: a PUT goes with its body at once (no
wait for "100 Continue"), as many uploads are in flight as the bucket takes (flow.py), and what the plan and the
verification ask the bucket is asked at the same time, not one question after another.

Modules: target (the two ends, the plan's fingerprint), checks (through the Storage contract), plan (with files:
what happens to each file, and merge: to each product), flow (how many uploads in flight), execute (transfer,
rows, vectors, verify), ledger (a re-run decided from listings), report (results and text), size (the catalog's
size for the cost estimate).
"""

from __future__ import annotations

import sys
import time

from vpm.core.config import Settings
from vpm.core.health import Check
from vpm.core.storage import S3Storage, Storage
from vpm.migration import ledger
from vpm.migration.checks import run_checks
from vpm.migration.execute import content_type_for, execute_plan, verify
from vpm.migration.files import CONFLICT, MISSING, OVERWRITE, SKIP, UPLOAD, PlanItem, Progress
from vpm.migration.flow import InFlight
from vpm.migration.merge import Merge, merge_products, same_product
from vpm.migration.plan import (
    NOT_COMPARED,
    NOT_RUNNABLE,
    MigrationPlan,
    ModelPlan,
    ProductsPlan,
    make_plan,
    plan_from_ledger,
)
from vpm.migration.report import FAILED, SKIPPED, UPLOADED, ItemResult, MigrationReport, ProductsResult, VectorsResult
from vpm.migration.size import catalog_size, local_catalog_size
from vpm.migration.target import MigrationError, Source, Target, half_set_keys, plan_fingerprint, require_bucket

DEFAULT_WORKERS = 8  # uploads in flight at the start; without --workers the number then follows the bucket
MAX_WORKERS = 32  # S3Storage's connection pool holds 32; more threads would only queue for a connection
PLAN_WORKERS = 16  # the plan's threads: hashing local files, and a HEAD where a listing cannot tell


def _preload_lancedb() -> None:
    """Import LanceDB on a background thread (seconds: its REST client's models alone take ~2 s here), so the
    hashing of the local files for the plan happens meanwhile."""
    import threading

    if "lancedb" in sys.modules:
        return

    def load() -> None:
        try:
            import lancedb  # noqa: F401
        except ImportError:  # the engine says so when a table is opened
            pass

    threading.Thread(target=load, name="vpm-import-lancedb", daemon=True).start()


class Migration:
    """A local catalog and the bucket it goes to. The storages are injectable (tests, fault injection)."""

    def __init__(self, settings: Settings, *, source_storage: Storage | None = None,
                 target_storage: S3Storage | None = None, workers: int | None = None):
        """`workers`: uploads in flight, fixed; None (the default) lets the number follow what the bucket takes
        (flow.py), from DEFAULT_WORKERS up to MAX_WORKERS."""
        if workers is not None and not 1 <= workers <= MAX_WORKERS:
            raise MigrationError(f"workers must be between 1 and {MAX_WORKERS}, got {workers}")
        self.settings = settings
        self.workers = workers
        self.source = Source(settings, source_storage)
        if not ledger.kept(self.fingerprint(), self.source.storage):  # no quick re-run: the plan opens tables,
            _preload_lancedb()  # so LanceDB imports while the S3 client is made and the bucket is asked
        self.target = Target(settings, target_storage)

    def fingerprint(self, *, overwrite: bool = False) -> str:
        """What a plan made now would carry: compare with `plan.fingerprint()` to know it still applies."""
        return plan_fingerprint(self.settings, overwrite=overwrite)

    def check(self) -> list[Check]:
        """Everything the migration needs, one line each, with the fix. Writes only a probe, then removes it."""
        return run_checks(self.settings, self.source, self.target)

    def plan(self, *, overwrite: bool = False, progress: Progress | None = None) -> MigrationPlan:
        """Compare the local catalog with the bucket. Reads only; writes nothing anywhere.

        Without AWS credentials the bucket cannot be read: the plan is then the local catalog's alone (file by
        file, bytes and cost), with `compared` False and a warning saying the bucket was not checked; it can be
        looked at, not run."""
        # Half a key pair is not "no credentials": the full plan names the missing half.
        compare = bool(half_set_keys(self.settings)) or self.target.storage.credentials_source() is not None
        if compare and not overwrite:  # a re-run after a verified run, nothing changed since: decided from listings
            quick = plan_from_ledger(self.settings, self.source, self.target)
            if quick is not None:
                return quick
        _preload_lancedb()  # the full plan opens the tables: import LanceDB while the local files are hashed
        return make_plan(self.settings, self.source, self.target, overwrite=overwrite,
                         workers=self.workers or PLAN_WORKERS,
                         progress=progress, compare=compare)

    def execute(self, plan: MigrationPlan, *, progress: Progress | None = None) -> MigrationReport:
        """Run exactly `plan`: files, then product rows, then vectors, then verification."""
        if not plan.compared:
            raise MigrationError(NOT_RUNNABLE)
        if plan.fingerprint() != self.fingerprint(overwrite=plan.overwrite):
            raise MigrationError("this plan was made with other settings (bucket, prefixes, credentials or "
                                 "--overwrite): preview again, then migrate")
        gate = InFlight(self.workers or DEFAULT_WORKERS, self.workers or MAX_WORKERS, fixed=self.workers is not None,
                        throttles=self.target.throttles)
        return execute_plan(plan, self.source, self.target, gate, progress, time.monotonic)

    def verify(self, plan: MigrationPlan) -> list[Check]:
        return verify(plan, self.target)


__all__ = [
    "CONFLICT",
    "DEFAULT_WORKERS",
    "FAILED",
    "MAX_WORKERS",
    "MISSING",
    "NOT_COMPARED",
    "NOT_RUNNABLE",
    "OVERWRITE",
    "SKIP",
    "SKIPPED",
    "UPLOAD",
    "UPLOADED",
    "ItemResult",
    "Merge",
    "Migration",
    "MigrationError",
    "MigrationPlan",
    "MigrationReport",
    "ModelPlan",
    "PlanItem",
    "ProductsPlan",
    "ProductsResult",
    "Progress",
    "Source",
    "Target",
    "VectorsResult",
    "catalog_size",
    "content_type_for",
    "local_catalog_size",
    "merge_products",
    "plan_fingerprint",
    "require_bucket",
    "same_product",
]
