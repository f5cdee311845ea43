"""The stored outcome of the last verified migration, so a re-run with nothing to do is decided from listings.

After a run that ended complete and verified (every file uploaded and checked by its SHA-256, every row written,
every vector copied, verification passed), the local folder keeps a ledger under its bookkeeping folder
(.vpm/migrations/, one file per plan fingerprint: bucket, prefixes, credentials, folder). It records what the
run left on both sides as cheap facts: each migrated local file's size, mtime and inode (every local write is a
rename, so a changed file never keeps them), every file of the local catalog's tables, and from the bucket the
size and ETag of each migrated object and the key and ETag of every object of its catalog tables.

A re-run first compares those with a `stat` of each local file and one paginated listing of each bucket prefix.
When every fact still holds, nothing either side could have changed since that verified run: the plan is
"skip everything", built without opening a table (which costs the few seconds of importing LanceDB), and its
verification repeats the listing's checks. When any fact differs (a photo replaced, a product edited locally,
an object rewritten in the bucket, a table changed), the ledger is not used and the plan is made in full.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpm.core.health import Check
from vpm.core.storage import LocalStorage, Storage, StorageError

log = logging.getLogger(__name__)

VERSION = 1
# A file modified this close to the ledger's writing may have changed again within the file system's timestamp
# granularity without its mtime moving ("racy" in git's words): such a file is hashed again instead of trusted.
RACY_S = 2.0
_FOLDER = Path(".vpm") / "migrations"


@dataclass(frozen=True)
class Ledger:
    """What the last verified run left: its plan in short, and the facts that show nothing changed since."""

    fingerprint: str
    finished_at: float
    items: list[dict[str, Any]]  # kind, source_key, key, size, sha256, product_ids
    products: dict[str, Any]  # in_bucket (ids), kept
    models: list[dict[str, Any]]  # model_id, dim, with_vector, without_vector
    local_files: dict[str, list[int]]  # source key -> [size, mtime_ns, inode]
    local_tables: dict[str, list[int]]  # relative path under the local metadata prefix -> [size, mtime_ns]
    bucket_objects: dict[str, list[Any]]  # migrated key -> [size, etag]
    bucket_tables: dict[str, str]  # every key under the bucket's metadata prefix -> etag

    def as_json(self) -> str:
        return json.dumps({"version": VERSION, **self.__dict__}, sort_keys=True)


def _path(root: Path, fingerprint: str) -> Path:
    return root / _FOLDER / f"{hashlib.sha256(fingerprint.encode()).hexdigest()[:24]}.json"


def _local_root(storage: Storage) -> Path | None:
    return storage.root if isinstance(storage, LocalStorage) else None


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _local_tables(root: Path, metadata_prefix: str) -> dict[str, list[int]]:
    folder = root / metadata_prefix
    found: dict[str, list[int]] = {}
    if not folder.is_dir():
        return found
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not (Path(dirpath) == root and d == ".vpm")]  # our own bookkeeping
        for name in files:
            path = Path(dirpath) / name
            stat = _stat(path)
            if stat is not None:
                found[path.relative_to(root).as_posix()] = stat[:2]
    return found


def _bucket_listing(bucket: Storage, prefixes: list[str]) -> dict[str, Any]:
    from vpm.migration.files import list_folders  # the folders listed at once, not one round trip after another

    return {key: [info.size, info.etag] for key, info in list_folders(bucket, prefixes).items()}


def bucket_prefixes(keys: list[str], metadata_prefix: str) -> list[str]:
    """The folders to list to see every one of `keys` and the whole catalog's tables, each once."""
    folders = {k.rpartition("/")[0] + "/" if "/" in k else "" for k in keys}
    roots = sorted(p for p in folders | {metadata_prefix} if not any(p != q and p.startswith(q)
                                                                     for q in folders | {metadata_prefix}))
    return roots


# ------------------------------------------------------------------------------------------------- writing


def record(plan, report, source_storage: Storage, bucket: Storage, metadata_prefix: str,
           listed: dict[str, Any] | None = None) -> None:
    """Keep the outcome of a run that ended complete and verified; anything else removes an older ledger.
    `listed`: the verification's listing of bucket_prefixes (key -> ObjectInfo), taken after the last write."""
    root = _local_root(source_storage)
    if root is None:
        return
    path = _path(root, plan.fingerprint())
    if plan.overwrite or not report.ok or plan.products.conflicts or plan.products.held_back:
        path.unlink(missing_ok=True)
        return
    try:
        items = list(plan.items)
        local_files = {}
        for item in items:
            stat = _stat(root / item.source_key)
            if stat is None:
                return
            local_files[item.source_key] = stat
        keys = [i.key for i in items]
        if listed is not None:
            listing = {key: [info.size, info.etag] for key, info in listed.items()}
        else:
            listing = _bucket_listing(bucket, bucket_prefixes(keys, metadata_prefix))
        if any(key not in listing for key in keys):
            return
        models = []
        for model in plan.vectors:
            models.append({"model_id": model.model_id, "dim": model.dim,
                           "with_vector": len(model.to_copy) + model.already_there,
                           "without_vector": model.without_vector})
        ledger = Ledger(
            fingerprint=plan.fingerprint(), finished_at=time.time(),
            items=[{"kind": i.kind, "source_key": i.source_key, "key": i.key, "size": i.size, "sha256": i.sha256,
                    "product_ids": list(i.product_ids)} for i in items],
            products={"in_bucket": sorted(report.products.in_bucket), "kept": report.products.kept},
            models=models, local_files=local_files, local_tables=_local_tables(root, metadata_prefix),
            bucket_objects={k: listing[k] for k in keys},
            bucket_tables={k: v[1] for k, v in listing.items() if k.startswith(metadata_prefix)},
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ledger-")
        with open(fd, "w", encoding="utf-8") as fh:
            fh.write(ledger.as_json())
        os.replace(tmp, path)
    except (OSError, StorageError) as err:  # the ledger only saves time: without it the next plan is made in full
        log.info("the migration's ledger was not kept (%s); the next run plans in full", err)
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------- reading


def kept(fingerprint: str, source_storage: Storage) -> bool:
    """Whether a verified run with this fingerprint left a ledger (a stat; whether it still holds is another
    matter)."""
    root = _local_root(source_storage)
    return root is not None and _path(root, fingerprint).is_file()


def still_holds(fingerprint: str, source_storage: Storage, bucket: Storage, metadata_prefix: str) -> Ledger | None:
    """The ledger of the last verified run with this fingerprint when every fact it recorded still holds."""
    root = _local_root(source_storage)
    if root is None:
        return None
    try:
        data = json.loads(_path(root, fingerprint).read_text(encoding="utf-8"))
        if data.pop("version", None) != VERSION or data.get("fingerprint") != fingerprint:
            return None
        ledger = Ledger(**data)
    except (OSError, ValueError, TypeError):
        return None
    if not _local_side_holds(ledger, root, metadata_prefix):  # stats first: no request when a local file changed
        return None
    try:
        listing = _bucket_listing(bucket, bucket_prefixes(list(ledger.bucket_objects), metadata_prefix))
    except StorageError:
        return None
    if any(listing.get(key) != value for key, value in ledger.bucket_objects.items()):
        return None
    tables = {k: v[1] for k, v in listing.items() if k.startswith(metadata_prefix)}
    if tables != ledger.bucket_tables:
        return None
    return ledger


def _local_side_holds(ledger: Ledger, root: Path, metadata_prefix: str) -> bool:
    """Every migrated local file and every file of the local tables is as the verified run left it."""
    racy_after_ns = int((ledger.finished_at - RACY_S) * 1e9)
    recorded_sha = {i["source_key"]: i["sha256"] for i in ledger.items}
    for key, stat in ledger.local_files.items():
        if _stat(root / key) != stat:
            return False
        if stat[1] >= racy_after_ns and _sha256(root / key) != recorded_sha.get(key):
            return False
    tables = _local_tables(root, metadata_prefix)
    return tables == ledger.local_tables and not any(mtime >= racy_after_ns for _size, mtime in tables.values())


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def verification(ledger: Ledger) -> list[Check]:
    """The checks of a run that found everything as the verified run left it (the listing just showed it)."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(ledger.finished_at))
    same = f"as verified at {when}; the listing shows nothing changed since"
    checks = [
        Check("files in bucket", "pass", f"{len(ledger.items)} files present with the expected size"),
        Check("bucket catalog complete", "pass",
              f"{len(ledger.products['in_bucket']) + ledger.products['kept']} products, every file they point at "
              f"exists ({same})"),
    ]
    for model in ledger.models:
        if model["with_vector"]:
            checks.append(Check(f"{model['model_id']} vectors", "pass",
                                f"{model['with_vector']} migrated photos have their vector in the bucket ({same})"))
    return checks
