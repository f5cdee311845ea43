"""Carry out a plan, in the order that keeps the bucket's catalog valid wherever a run is cut off:

1. files: upload (guarded against a change since the plan) and verify each one (size and SHA-256 as stored);
2. product rows, only when every file arrived: insert-if-absent, or replace with --overwrite, in batches;
3. vectors (derived data, last): each local model's vectors of the migrated photos, upserted in batches.

Every engine write is one atomic commit, so a run cut off anywhere leaves tables that open, rows that point
only at verified files, and vectors only of products already there; a re-run does what is left.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass

from vpm.backends.engine import chunks
from vpm.core.catalog import CatalogError
from vpm.core.health import Check
from vpm.core.storage import ObjectInfo, PreconditionFailed, StorageError
from vpm.migration import ledger
from vpm.migration.files import (
    CONFLICT as PLAN_CONFLICT,
)
from vpm.migration.files import (
    MISSING,
    OVERWRITE,
    SKIP,
    UPLOAD,
    PlanItem,
    Progress,
    list_folders,
    local_digest,
    remote_objects,
    remote_sha256,
    run_all,
)
from vpm.migration.flow import InFlight
from vpm.migration.merge import merge_products
from vpm.migration.plan import MigrationPlan
from vpm.migration.report import (
    CONFLICT,
    FAILED,
    SKIPPED,
    UPLOADED,
    ItemResult,
    MigrationReport,
    ProductsResult,
    VectorsResult,
)
from vpm.migration.target import Source, Target
from vpm.migration.text import few

_EXTRA_TYPES = {".heic": "image/heic", ".heif": "image/heif", ".webp": "image/webp", ".avif": "image/avif"}


def content_type_for(key: str) -> str:
    ext = "." + key.rpartition(".")[2].lower() if "." in key else ""
    return _EXTRA_TYPES.get(ext) or mimetypes.guess_type(key)[0] or "application/octet-stream"


# -------------------------------------------------------------------------------------------------- files


class Counter:
    """Files and bytes done, reported to the caller's progress callback."""

    def __init__(self, files: int, total_bytes: int, progress: Progress | None):
        self.files_total, self.bytes_total, self.progress = files, total_bytes, progress
        self.files_done = self.bytes_done = self.bytes_seen = 0

    def add(self, uploaded_bytes: int, planned_bytes: int) -> None:
        self.files_done += 1
        self.bytes_done += uploaded_bytes
        self.bytes_seen += planned_bytes
        self.report()

    def report(self) -> None:
        if self.progress:
            self.progress(self.files_done, self.files_total, self.bytes_seen, self.bytes_total)


def transfer_files(plan: MigrationPlan, source: Source, target: Target, gate: InFlight, counter: Counter
                   ) -> list[ItemResult]:
    """Every planned file, as many uploads in flight as `gate` lets through at a time."""

    def one(item: PlanItem) -> ItemResult:
        if item.action == SKIP:
            return _result(item, SKIPPED, item.reason)
        if item.action == PLAN_CONFLICT:
            return _result(item, CONFLICT, item.reason)
        if item.action == MISSING:
            return _result(item, FAILED, item.reason, size=0)
        with gate.slot():
            return upload(item, source, target)

    def done(item: PlanItem, result: ItemResult) -> None:
        if item.action in (UPLOAD, OVERWRITE):
            counter.add(result.size if result.status == UPLOADED else 0, item.size)

    counter.report()
    if not any(i.action in (UPLOAD, OVERWRITE) for i in plan.items):  # nothing to send: no threads needed
        return [one(item) for item in plan.items]
    return run_all(one, plan.items, gate.cap, on_done=done, on_stop=gate.stop)


def _result(item: PlanItem, status: str, reason: str = "", *, size: int | None = None) -> ItemResult:
    return ItemResult(item.kind, item.key, status, item.size if size is None else size, reason, item.product_ids)


def upload(item: PlanItem, source: Source, target: Target) -> ItemResult:
    """Stream one file up (guarded against a change since the plan) and verify it from what S3 acknowledged.

    The PUT carries the file's SHA-256, which S3 checks against the bytes it receives and returns: equal to the
    plan's, it proves the bucket holds exactly the planned bytes, with no HEAD after it. Only a backend that does
    not return a checksum is asked with a HEAD. Files above the multipart threshold go up in parts, each part's
    checksum checked as it is acknowledged; no file is ever held whole in memory.
    """
    local = source.storage
    try:
        info = local.head(item.source_key)  # the digest is remembered per (inode, mtime, size): a stat
        size, sha = local_digest(local, item.source_key, info)
    except (StorageError, OSError) as err:
        return _result(item, FAILED, f"cannot read {item.source_key}: {err}", size=0)
    if sha != item.sha256 or size != item.size:
        return _result(item, FAILED, f"{item.source_key} changed since the plan was made; re-run the migration", size=0)
    bucket = target.storage
    try:
        try:
            with local.open(item.source_key) as stream:
                stored = bucket.upload(item.key, stream, content_type_for(item.key), size=size,
                                       metadata={"sha256": item.sha256}, if_none_match=item.action == UPLOAD,
                                       if_match=item.remote_etag if item.action == OVERWRITE else None)
        except PreconditionFailed:
            # Someone (or a retried request of ours) wrote this key since the plan: look before judging.
            remote_sha, _ = remote_sha256(bucket, item.key)
            if remote_sha == item.sha256:
                return _result(item, SKIPPED, "identical object appeared meanwhile")
            if item.action == UPLOAD:
                return _result(item, CONFLICT, "a different object appeared at this key since the plan")
            return _result(item, FAILED, "the bucket object changed since the plan; re-run to see the new conflict",
                           size=0)
        stored_size, stored_sha = stored.size, stored.sha256
        if stored_sha is None:  # the backend did not return the checksum it stored: ask it
            head = bucket.head(item.key)
            stored_size, stored_sha = head.size, head.sha256 or head.metadata.get("sha256")
    except (StorageError, OSError) as err:
        return _result(item, FAILED, str(err), size=0)
    if stored_size != item.size or stored_sha != item.sha256:
        if item.action == UPLOAD:  # ours alone (created if-none-match): leave no wrong bytes under the key
            with suppress(StorageError):
                bucket.delete(item.key)
        return _result(item, FAILED, f"verification failed: bucket has {stored_size} bytes, SHA-256 {stored_sha}; "
                                     f"expected {item.size} bytes, {item.sha256} (did {item.source_key} change "
                                     "during the upload? re-run the migration)", size=0)
    return _result(item, UPLOADED, "replaced the bucket's different object" if item.action == OVERWRITE else "")


# ----------------------------------------------------------------------------------------------- products


@dataclass
class _Tally:
    added: list[str]
    replaced: list[str]
    unchanged: list[str]
    conflicts: list[str]

    def detail(self, kept: int, held: list[str]) -> str:
        text = (f"{len(self.added)} added, {len(self.replaced)} replaced, {len(self.unchanged)} unchanged, "
                f"{kept} bucket-only kept")
        if self.conflicts:
            text += f"; {len(self.conflicts)} differ in the bucket and were left as they are: {few(self.conflicts)}"
        if held:
            text += f"; {len(held)} held back because a file is in conflict: {few(held)}"
        return text


def write_products(plan: MigrationPlan, target: Target, results: list[ItemResult],
                   old_catalog: Callable[[], bool] | None = None) -> tuple[ProductsResult, object | None]:
    """The product rows, once every file they point at is verified, and the products table written to (None when
    none was opened). A product someone changed since the plan is judged as it is now: one the plan would add
    is inserted only if still absent (and judged again if not), one it would replace is read again first.
    `old_catalog`: whether the bucket holds a products.json to upgrade (asked while the files went up)."""
    failed = [r for r in results if r.status == FAILED]
    if failed:
        return ProductsResult("not written", f"{len(failed)} photos or thumbnails did not arrive: the bucket's "
                                             "catalog was left as it was, so it never points at a missing object"), None
    store = None
    if (old_catalog or target.has_old_catalog)():  # the app's own upgrade first, as the plan said: its products
        try:  # become rows
            store = target.catalog_for_writing()
        except (StorageError, CatalogError) as err:
            return ProductsResult("not written", f"could not upgrade the bucket's products.json first ({err})"), None
    return _write_rows(plan, target, results, store)


def _write_rows(plan: MigrationPlan, target: Target, results: list[ItemResult], store
                ) -> tuple[ProductsResult, object | None]:
    held = {pid for r in results if r.status == CONFLICT for pid in r.product_ids}
    planned = plan.products
    tally = _Tally([], [], list(planned.unchanged), list(planned.conflicts))
    held_back = sorted(set(planned.held_back) | {p.id for p in planned.to_write if p.id in held})
    todo = [p for p in planned.to_write if p.id not in held]
    if not todo:
        return _products_result("unchanged", tally, planned.kept, held_back), store
    new = set(planned.added)
    try:
        store = store if store is not None else target.catalog_for_writing()
        for batch in chunks(todo):
            _write_batch(store, batch, plan.overwrite, tally, new)
    except (StorageError, CatalogError) as err:
        status = "incomplete" if tally.added or tally.replaced else "not written"
        result = _products_result(status, tally, planned.kept, held_back)
        return ProductsResult(status, f"could not write the products ({err}); so far: {result.detail}",
                              result.added, result.replaced, result.unchanged, result.kept, result.conflicts,
                              result.held_back), None
    return _products_result("written", tally, planned.kept, held_back), store


def _write_batch(store, batch, overwrite: bool, tally: _Tally, new: set[str]) -> None:
    # What the plan found absent goes straight to the insert-if-absent (no read before it: a bucket far away
    # answers each read after a round trip); what it would replace is read again first.
    again = [p for p in batch if p.id not in new]
    merge = merge_products(store.get_many([p.id for p in again]) if again else {}, again, overwrite=overwrite)
    merge.to_add.extend(p for p in batch if p.id in new)
    taken = set(store.add(merge.to_add))  # insert-if-absent: ids someone added meanwhile are left alone
    if taken:  # judge those against what is there now, as the plan would have
        late = merge_products(store.get_many(sorted(taken)), [p for p in merge.to_add if p.id in taken],
                              overwrite=overwrite)
        merge.to_replace.extend(late.to_replace)
        tally.unchanged += late.unchanged
        tally.conflicts += late.conflicts
    if merge.to_replace:
        store.upsert(merge.to_replace)
    tally.added += [p.id for p in merge.to_add if p.id not in taken]
    tally.replaced += [p.id for p in merge.to_replace]
    tally.unchanged += merge.unchanged
    tally.conflicts += merge.conflicts


def _products_result(status: str, tally: _Tally, kept: int, held: list[str]) -> ProductsResult:
    return ProductsResult(status, tally.detail(kept, held), tuple(tally.added), tuple(tally.replaced),
                          tuple(tally.unchanged), kept, tuple(tally.conflicts), tuple(held))


# ------------------------------------------------------------------------------------------------ vectors


def copy_vectors(plan: MigrationPlan, source: Source, target: Target, products: ProductsResult
                 ) -> list[VectorsResult]:
    """Each model's vectors of the photos whose product row is now ours in the bucket."""
    if products.status == "not written":
        return [VectorsResult(m.model_id, "not copied", 0, len(m.to_copy), "the products were not written")
                for m in plan.vectors if m.to_copy]
    ours = products.in_bucket
    return [copy_model_vectors(model, [v for v in model.to_copy if v.product_id in ours], source, target)
            for model in plan.vectors]


def copy_model_vectors(model, entries, source: Source, target: Target) -> VectorsResult:
    if not entries:
        return VectorsResult(model.model_id, "unchanged", 0, 0)
    from vpm.core.vector_index import PhotoVector  # numpy: only when there are vectors to copy

    copied = 0
    try:
        local = source.vectors(model.model_id)
        bucket = target.vectors_for_writing(model.model_id, model.dim, target.has_vectors_table(model.model_id))
        for batch in chunks(entries):
            found = local.vectors_for_shas({v.sha256 for v in batch})
            rows = [PhotoVector(v.key, v.product_id, v.sha256, v.category, found[v.sha256])
                    for v in batch if v.sha256 in found]
            bucket.upsert(rows)
            copied += len(rows)
    except (StorageError, ValueError) as err:
        return VectorsResult(model.model_id, "incomplete", copied, len(entries), f"stopped: {err}")
    detail = "" if copied == len(entries) else f"{len(entries) - copied} vanished locally since the plan"
    return VectorsResult(model.model_id, "copied", copied, len(entries), detail)


# ------------------------------------------------------------------------------------------------- verify


def verify(plan: MigrationPlan, target: Target, results: list[ItemResult] | None = None) -> list[Check]:
    """After the run: every planned file is in the bucket with its size, the bucket's products point only at
    objects that exist, and the migrated photos have their vectors. Listings and table reads, no downloads."""
    return verify_run(plan, target, results)[0]


def verify_run(plan: MigrationPlan, target: Target, results: list[ItemResult] | None = None, store=None
               ) -> tuple[list[Check], dict[str, ObjectInfo] | None]:
    """verify, and the listing it was made from (the ledger keeps its facts: no second listing). The listing
    and the read of the bucket's products run at the same time; `store`: the products table just written."""
    conflicted = {r.key for r in results or () if r.status == CONFLICT}
    migrated = [i for i in plan.items if i.action != MISSING and i.key not in conflicted]
    folders = ledger.bucket_prefixes([i.key for i in plan.items], target.settings.metadata_prefix)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vpm-verify")
    try:
        listing = pool.submit(list_folders, target.storage, folders)
        store = store if store is not None else target.catalog_for_reading()
        referenced = _referenced_keys(store) if store is not None else set()
        listed = dict(listing.result())
        outside = {k for k in referenced if not k.startswith(tuple(folders))}  # a bucket-only product's elsewhere
        listed.update(remote_objects(target.storage, outside))
        sizes = {key: (info.size, info.etag) for key, info in listed.items()}
        checks = [_files_check(migrated, sizes), _catalog_check(store, referenced, sizes)]
        checks += _vectors_checks(plan, target, store)
    except (StorageError, CatalogError) as err:
        return [Check("bucket catalog readable", "fail", str(err), "re-run the migration, or restore the tables")], None
    finally:
        pool.shutdown(wait=True)
    return checks, listed


def _referenced_keys(store) -> set[str]:
    return {key for batch in store.iter_batches() for product in batch for key in product.file_keys()}


def _files_check(migrated: list[PlanItem], sizes: dict[str, tuple[int, str]]) -> Check:
    wrong = [i.key for i in migrated if sizes.get(i.key, (None,))[0] != i.size]
    if wrong:
        return Check("files in bucket", "fail", f"{len(wrong)} files missing or different: {few(wrong)}",
                     "re-run the migration")
    return Check("files in bucket", "pass", f"{len(migrated)} files present with the expected size")


def _catalog_check(store, referenced: set[str], sizes: dict[str, tuple[int, str]]) -> Check:
    if store is None:
        return Check("bucket catalog complete", "pass", "no products in the bucket yet")
    dangling = sorted(referenced - set(sizes))
    if dangling:
        return Check("bucket catalog complete", "fail",
                     f"the products point at {len(dangling)} missing objects: {few(dangling)}",
                     "re-run the migration, or restore those objects")
    return Check("bucket catalog complete", "pass", f"{store.count()} products, every file they point at exists")


def _vectors_checks(plan: MigrationPlan, target: Target, store) -> list[Check]:
    """For each model: the planned photos whose product is in the bucket now have a vector there."""
    checks = []
    for model in plan.vectors:
        present = store.get_many(sorted({v.product_id for v in model.to_copy})) if store and model.to_copy else {}
        expected = [v.key for v in model.to_copy
                    if v.product_id in present and any(p.key == v.key for p in present[v.product_id].photos)]
        if not expected:
            continue
        have: set[str] = set()
        if target.has_vectors_table(model.model_id):
            have = target.vectors_for_reading(model.model_id).photo_keys_with_vectors(expected)
        lacking = [k for k in expected if k not in have]
        if lacking:
            checks.append(Check(f"{model.model_id} vectors", "fail",
                                f"{len(lacking)} migrated photos have no vector in the bucket: {few(lacking)}",
                                "re-run the migration to copy the rest"))
        else:
            checks.append(Check(f"{model.model_id} vectors", "pass",
                                f"{len(expected)} migrated photos have their vector in the bucket"))
    return checks


def execute_plan(plan: MigrationPlan, source: Source, target: Target, gate: InFlight,
                 progress: Progress | None, clock: Callable[[], float]):
    """Files, then product rows, then vectors, then verification. A KeyboardInterrupt from `progress` (Ctrl-C)
    stops the uploads not yet started and propagates; what is in the bucket then is complete and valid."""
    started = clock()
    todo = plan.to_upload
    counter = Counter(len(todo), sum(i.size for i in todo), progress)
    if plan.ledger is not None:  # nothing to do, and the listing showed both sides as the verified run left them
        results = transfer_files(plan, source, target, gate, counter)
        products = _products_result("unchanged", _Tally([], [], list(plan.products.unchanged), []),
                                    plan.products.kept, [])
        report = MigrationReport(plan.target, results, products, copy_vectors(plan, source, target, products),
                                 0, 0.0)
        report.verification = ledger.verification(plan.ledger)
        report.duration_s = clock() - started
        return report
    # Whether the bucket holds an old products.json to upgrade: asked while the files go up, not after them.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vpm-look")
    try:
        old_catalog = pool.submit(target.has_old_catalog)
        results = transfer_files(plan, source, target, gate, counter)
        products, store = write_products(plan, target, results, old_catalog.result)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    vectors = copy_vectors(plan, source, target, products)
    report = MigrationReport(plan.target, results, products, vectors, counter.bytes_done, 0.0,
                             in_flight={"most": gate.most, "limit": gate.limit, "slow_downs": gate.backoffs})
    report.verification, listed = verify_run(plan, target, results, store)
    ledger.record(plan, report, source.storage, target.storage, target.settings.metadata_prefix, listed)
    report.duration_s = clock() - started
    return report

