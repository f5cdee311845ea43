"""What a migration will do, decided before anything is written: the plan (a dry run is this and nothing else).

Three parts, in the order the execution writes them:
1. files: every photo and thumbnail the local products point at (see files.py);
2. product rows: each local product merged with the bucket's product of the same id (see merge.py);
3. vectors: per local model, the vectors of the migrated photos that the bucket's table lacks.
Planning only reads: the bucket's tables are opened for reading when they exist and never created.

Without AWS credentials the bucket cannot be read, yet a person deciding whether to move to S3 still wants the plan:
`compare=False` makes it from the local catalog alone (every file to upload, every product to add, every local
vector to copy, with bytes and cost), says in a warning that the bucket is not compared, and Migrate refuses it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from vpm.backends.engine import chunks  # products or vectors per engine request: bounded IN lists
from vpm.core.catalog import Product
from vpm.core.config import Settings
from vpm.core.costs import Estimate, Traffic, estimate
from vpm.core.storage import StorageError
from vpm.migration import ledger as ledger_module
from vpm.migration.files import (
    ACTIONS,
    CONFLICT,
    MISSING,
    OVERWRITE,
    SKIP,
    UPLOAD,
    KeyMap,
    PlanItem,
    Progress,
    decide_files,
    list_folders,
)
from vpm.migration.merge import merge_products
from vpm.migration.report import plan_cost_line, plan_text, plan_vectors_line
from vpm.migration.size import catalog_size
from vpm.migration.target import MigrationError, Source, Target, half_set_keys, plan_fingerprint
from vpm.migration.text import few


@dataclass(frozen=True)
class ProductsPlan:
    """What happens to the bucket's product rows."""

    action: str  # "write" | "unchanged" | "blocked"
    detail: str
    to_write: tuple[Product, ...] = ()  # local products (with bucket keys) to add, or replace with --overwrite
    added: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()  # identical in the bucket already
    kept: int = 0  # bucket products that are not local: never touched
    conflicts: tuple[str, ...] = ()  # different in the bucket, left alone (no --overwrite)
    held_back: tuple[str, ...] = ()  # not written: one of their files is in conflict

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action, "detail": self.detail, "added": list(self.added), "replaced": list(self.replaced),
            "unchanged": len(self.unchanged), "kept": self.kept, "conflicts": list(self.conflicts),
            "held_back": list(self.held_back),
        }


@dataclass(frozen=True)
class VectorCopy:
    """One photo's vector: read locally by its image hash, written to the bucket under the photo's bucket key."""

    key: str
    product_id: str
    sha256: str
    category: str


@dataclass(frozen=True)
class ModelPlan:
    """One model's vectors."""

    model_id: str
    dim: int
    to_copy: tuple[VectorCopy, ...]
    already_there: int  # migrated photos whose vector the bucket has
    without_vector: int  # migrated photos with no local vector: the bucket embeds them on first search

    def as_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "dim": self.dim, "to_copy": len(self.to_copy),
                "already_there": self.already_there, "without_vector": self.without_vector}


@dataclass
class MigrationPlan:
    source: str
    target: str
    overwrite: bool
    items: list[PlanItem]
    products: ProductsPlan
    vectors: list[ModelPlan]
    estimate: Estimate
    warnings: list[str] = field(default_factory=list)
    made_with: str = ""  # plan_fingerprint of the settings and --overwrite the plan was made with
    ledger: ledger_module.Ledger | None = None  # set when made from the last verified run's ledger (nothing to do)
    compared: bool = True  # False: made from the local catalog alone (no credentials to read the bucket)

    def fingerprint(self) -> str:
        """Migrate runs a plan only with the settings it was made with (the page keeps the preview's plan)."""
        return self.made_with

    def with_action(self, *actions: str) -> list[PlanItem]:
        return [i for i in self.items if i.action in actions]

    @property
    def to_upload(self) -> list[PlanItem]:
        return self.with_action(UPLOAD, OVERWRITE)

    @property
    def upload_bytes(self) -> int:
        return sum(i.size for i in self.to_upload)

    @property
    def vectors_to_copy(self) -> int:
        return sum(len(m.to_copy) for m in self.vectors)

    @property
    def nothing_to_do(self) -> bool:
        return not self.to_upload and not self.products.to_write and not self.vectors_to_copy

    @property
    def blocked(self) -> bool:
        """Files the products point at are missing locally: no row is written until they are restored."""
        return bool(self.with_action(MISSING))

    def totals(self) -> dict[str, Any]:
        out: dict[str, Any] = {"files": len(self.items), "bytes": sum(i.size for i in self.items)}
        for action in ACTIONS:
            chosen = self.with_action(action)
            out[action] = {"files": len(chosen), "bytes": sum(i.size for i in chosen)}
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per file, for a table."""
        return [{"action": i.action, "kind": i.kind, "key": i.key, "size": i.size, "reason": i.reason}
                for i in self.items]

    def as_dict(self) -> dict[str, Any]:
        """The plan's JSON document: what --json prints, and what its text is read from (report.py)."""
        return {
            "source": self.source,
            "target": self.target,
            "overwrite": self.overwrite,
            "fingerprint": self.fingerprint(),
            "totals": self.totals(),
            "items": [i.as_dict() for i in self.items],
            "products": self.products.as_dict(),
            "vectors": [m.as_dict() for m in self.vectors],
            "estimate": self.estimate.as_dict(),
            "warnings": list(self.warnings),
            "compared_with_bucket": self.compared,
        }

    def as_text(self, *, list_files: bool = True) -> str:
        return plan_text(self.as_dict(), list_files=list_files)

    def vectors_line(self) -> str:
        """What happens to the vectors, in one line (the page shows it beside the file counts)."""
        return plan_vectors_line(self.products.as_dict(), [m.as_dict() for m in self.vectors])

    def cost_line(self) -> str:
        """What the bucket will cost, once and a month, in one line."""
        return plan_cost_line(self.estimate.as_dict())


# ---------------------------------------------------------------------------------------------- planning


# Why a plan made without reading the bucket (compare=False) says what it says, and why Migrate refuses it.
NOT_COMPARED = ("no AWS credentials found, so this plan is made from the local catalog alone: every file is shown "
                "as an upload; files and products already in the bucket, and conflicts with it, are not checked "
                "until credentials are set (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an IAM "
                "role)")
NOT_RUNNABLE = ("no AWS credentials found, so the bucket could not be compared and nothing is migrated: set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run where an IAM role is attached), "
                "then preview the plan again and migrate")


def make_plan(settings: Settings, source: Source, target: Target, *, overwrite: bool, workers: int,
              progress: Progress | None = None, compare: bool = True) -> MigrationPlan:
    """The plan; with `compare=False` (no credentials) from the local catalog alone, never reading the bucket."""
    half = half_set_keys(settings)
    if half:
        raise MigrationError(f"{half}: set both keys, or neither (to use AWS_PROFILE or an IAM role)")
    keymap = KeyMap(settings)
    bucket = BucketLook(target, keymap.prefixes.values()) if compare else None  # asked now, answered meanwhile
    hashing = _hash_ahead(source, keymap.prefixes.values())
    size = catalog_size(source.storage, settings)  # file sizes: the files are hashed by decide_files' workers
    products = [keymap.place(p) for batch in _local_batches(source) for p in batch]
    bucket_storage = target.storage if compare else None
    hashing.set()  # decide_files' workers hash whatever is left, several at a time
    items = keymap.blocked + decide_files(keymap, source.storage, bucket_storage, overwrite, workers, progress,
                                          bucket.objects() if bucket is not None else None)
    products_plan = plan_products(bucket, products, items, overwrite)
    migrated = set(products_plan.added) | set(products_plan.replaced) | set(products_plan.unchanged)
    rewritten = set(products_plan.added) | set(products_plan.replaced)
    vectors, warnings = [], ([] if compare else [NOT_COMPARED])
    if products_plan.action != "blocked":
        vectors, more = plan_vectors(source, bucket, [p for p in products if p.id in migrated], rewritten,
                                     keymap.local_keys())
        warnings += more
    if bucket is not None and bucket.has_old_catalog():
        warnings.append("the bucket holds a products.json catalog of the first release: the migration upgrades it "
                        "into tables first (as the app does on its first start), and merges with its products")
    return MigrationPlan(
        source.description, target.description, overwrite, items, products_plan, vectors,
        estimate(size, Traffic()), keymap.warnings + warnings,
        plan_fingerprint(settings, overwrite=overwrite), compared=compare,
    )


def plan_from_ledger(settings: Settings, source: Source, target: Target) -> MigrationPlan | None:
    """The plan of a re-run after a verified run when nothing changed on either side since (ledger.py): every
    file skipped, no row or vector to write; None when the full plan must be made."""
    if half_set_keys(settings):
        return None
    fingerprint = plan_fingerprint(settings, overwrite=False)
    found = ledger_module.still_holds(fingerprint, source.storage, target.storage, settings.metadata_prefix)
    if found is None:
        return None
    why = "identical object already there (unchanged since the last verified run)"
    items = [PlanItem(i["kind"], i["source_key"], i["key"], i["size"], i["sha256"], SKIP, why, i["size"],
                      found.bucket_objects[i["key"]][1], tuple(i["product_ids"])) for i in found.items]
    in_bucket = tuple(found.products["in_bucket"])
    products = ProductsPlan("unchanged", "the bucket already has every local product (unchanged since the last "
                            "verified run)", unchanged=in_bucket, kept=found.products["kept"])
    vectors = [ModelPlan(m["model_id"], m["dim"], (), m["with_vector"], m["without_vector"]) for m in found.models]
    size = catalog_size(source.storage, settings)
    return MigrationPlan(source.description, target.description, False, items, products, vectors,
                         estimate(size, Traffic()), [], fingerprint, found)


def _local_batches(source: Source) -> Iterator[list[Product]]:
    if source.exists():  # an empty folder is left as it is: no empty table is created just to be read
        yield from source.catalog.iter_batches()


def _hash_ahead(source: Source, prefixes) -> threading.Event:
    """Hash the local files under the photo prefixes on a thread while LanceDB imports and the local catalog is
    read (the local storage remembers each file's digests per inode and mtime): deciding those files then costs
    a stat. Only reads; a file no product points at is hashed for nothing, and never uploaded. Set the event
    returned to stop it."""
    stop = threading.Event()

    def hash_until_stopped() -> None:
        try:
            for prefix in prefixes:
                for key, _size in source.storage.iter_sizes(prefix):
                    if stop.is_set():
                        return
                    source.storage.head(key)
        except (StorageError, OSError):  # deciding the files reads them again, and says what is wrong
            pass

    threading.Thread(target=hash_until_stopped, name="vpm-hash-ahead", daemon=True).start()
    return stop


class BucketLook:
    """The target as a plan sees it. Every plan asks the bucket the same few questions (its objects under the
    photo prefixes, whether its products table, an old products.json and vector tables are there): they are all
    asked on threads as planning starts, and answered while LanceDB imports and the local catalog is read,
    instead of one round trip after another at the end. Anything else goes to the target itself."""

    def __init__(self, target: Target, prefixes):
        self._target = target
        pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vpm-plan-look")
        self._objects = pool.submit(list_folders, target.storage, list(prefixes))
        self._products = pool.submit(target.has_products_table)
        self._old = pool.submit(target.has_old_catalog)
        self._models = pool.submit(target.model_ids)
        pool.shutdown(wait=False)  # returns at once; the threads end with their question

    def __getattr__(self, name: str):
        return getattr(self._target, name)

    def objects(self):
        return self._objects.result()

    def has_products_table(self) -> bool:
        return self._products.result()

    def has_old_catalog(self) -> bool:
        return self._old.result()

    def model_ids(self) -> list[str]:
        return self._models.result()

    def catalog_for_reading(self):
        return self._target.catalog_for_reading(exists=self.has_products_table())


# ----------------------------------------------------------------------------------------------- products


class BucketProducts:
    """The bucket's products, read only: its table when there is one, plus the products of a products.json the
    app has not upgraded yet (the upgrade inserts only ids the table lacks, so the table's rows win). With no
    target (a plan without credentials) it holds none."""

    def __init__(self, target: Target | None):
        self.store = target.catalog_for_reading() if target is not None else None
        self.old: dict[str, Product] = {}
        if target is not None and target.has_old_catalog():
            key = target.settings.s3_metadata_key
            raw = target.storage.get(key)
            from vpm.core.legacy import parse_products_json  # numpy: only a bucket with a first-release catalog

            self.old = {p.id: p for p in parse_products_json(raw, f"{key} in {target.description}")}

    def get_many(self, ids: Sequence[str]) -> dict[str, Product]:
        found = self.store.get_many(ids) if self.store is not None else {}
        for product_id in ids:
            if product_id not in found and product_id in self.old:
                found[product_id] = self.old[product_id]
        return found

    def count(self) -> int:
        in_table = self.store.count() if self.store is not None else 0
        if not self.old:
            return in_table
        in_both = self.store.get_many(list(self.old)) if self.store is not None else {}
        return in_table + len(self.old) - len(in_both)


def plan_products(target: Target | None, products: list[Product], items: list[PlanItem],
                  overwrite: bool) -> ProductsPlan:
    bucket = BucketProducts(target)  # an unreadable bucket catalog stops the plan here, untouched
    held = {pid for item in items if item.action == CONFLICT for pid in item.product_ids}
    to_write: list[Product] = []
    added, replaced, unchanged, conflicts, held_back = [], [], [], [], []
    present = 0
    for chunk in chunks(products):
        theirs = bucket.get_many([p.id for p in chunk])
        present += len(theirs)
        merge = merge_products(theirs, chunk, overwrite=overwrite, held_back=held)
        to_write += merge.to_write
        added += [p.id for p in merge.to_add]
        replaced += [p.id for p in merge.to_replace]
        unchanged += merge.unchanged
        conflicts += merge.conflicts
        held_back += merge.held_back
    kept = bucket.count() - present
    missing = [i for i in items if i.action == MISSING]
    counts = f"{len(added)} to add, {len(replaced)} to replace, {len(unchanged)} unchanged, {kept} bucket-only kept"
    if target is None:
        counts = f"{len(added)} to add (the bucket's own products are not read without credentials)"
    extra = ""
    if conflicts:
        extra += f"; {len(conflicts)} differ in the bucket and are left as they are: {few(conflicts)}"
    if held_back:
        extra += f"; {len(held_back)} held back (a file is in conflict): {few(held_back)}"
    if missing:
        action = "blocked"
        detail = (f"none will be written: {len(missing)} files the products point at are missing locally "
                  f"({few(i.source_key for i in missing)})")
    elif to_write:
        action, detail = "write", counts + extra
    elif not products:
        action, detail = "unchanged", "the local catalog has no products"
    else:
        action, detail = "unchanged", "the bucket already has every local product" + extra
    return ProductsPlan(action, detail, tuple(to_write), tuple(added), tuple(replaced), tuple(unchanged), kept,
                        tuple(conflicts), tuple(held_back))


# ------------------------------------------------------------------------------------------------ vectors


def plan_vectors(source: Source, target: Target | None, migrated: list[Product], rewritten: set[str],
                 local_key: dict[str, str]) -> tuple[list[ModelPlan], list[str]]:
    """Per local model: the vectors of migrated photos the bucket lacks (every photo of a product whose row is
    added or replaced, since its category may have changed). `local_key` maps a photo's bucket key to its local
    key, which its local vector is stored under. No target (no credentials): every local vector is to copy."""
    photos = [(product, photo) for product in migrated for photo in product.photos]
    bucket_models = set(target.model_ids()) if photos and target is not None else set()
    plans, warnings = [], []
    for model_id in source.model_ids() if photos else []:
        local = source.vectors(model_id)
        bucket = target.vectors_for_reading(model_id) if target is not None and model_id in bucket_models else None
        if bucket is not None and bucket.dim != local.dim:
            warnings.append(f"the bucket's {model_id} vectors have {bucket.dim} values, the local ones {local.dim}: "
                            "they are not copied (the bucket embeds its photos again)")
            continue
        to_copy: list[VectorCopy] = []
        already = without = 0
        for chunk in chunks(photos):
            have_local = local.photo_keys_with_vectors(local_key[photo.key] for _, photo in chunk)
            have_bucket = bucket.photo_keys_with_vectors(photo.key for _, photo in chunk) if bucket else set()
            for product, photo in chunk:
                if local_key[photo.key] not in have_local:
                    without += 1
                elif product.id in rewritten or photo.key not in have_bucket:
                    to_copy.append(VectorCopy(photo.key, product.id, photo.sha256, product.category))
                else:
                    already += 1
        plans.append(ModelPlan(model_id, local.dim, tuple(to_copy), already, without))
    return plans, warnings

