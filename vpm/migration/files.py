"""The files of a migration: where each photo and thumbnail goes in the bucket, and what happens to it.

Each file the local products point at is compared with the bucket from one paginated listing of each prefix
(size and ETag), not a request per object: an object of the same size whose ETag is the one this file gets on
S3 (the MD5 of its bytes, or of its parts' MD5s above the multipart threshold) holds the same bytes, and was
verified by SHA-256 when it was uploaded. Only an object the listing cannot settle (same size, another ETag:
different bytes, or SSE-KMS, whose ETags are not MD5s) is looked at on its own, by its stored SHA-256 (the
bucket's checksum, our metadata, or a download as a last resort). Then: upload a new file, skip an identical
one, report a different one as a conflict (or overwrite it with --overwrite), and mark a missing or changed
local file, which keeps every product row unwritten until it is fixed. Only reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from vpm.core.catalog import Product
from vpm.core.config import Settings
from vpm.core.formats import sha256_hex
from vpm.core.storage import MULTIPART_THRESHOLD, ObjectInfo, ObjectNotFound, Storage, StorageError, expected_etag

# progress(done_files, total_files, done_bytes, total_bytes)
Progress = Callable[[int, int, int, int], None]
T = TypeVar("T")

# What happens to one file.
UPLOAD, SKIP, CONFLICT, OVERWRITE, MISSING = "upload", "skip", "conflict", "overwrite", "missing"
ACTIONS = (UPLOAD, OVERWRITE, SKIP, CONFLICT, MISSING)


@dataclass(frozen=True)
class PlanItem:
    """One file: where it is, where it goes, and what the migration will do with it."""

    kind: str  # "image" | "thumbnail"
    source_key: str  # key in the local folder
    key: str  # key in the bucket
    size: int  # local size in bytes (0 when missing)
    sha256: str | None  # local content hash (None when missing)
    action: str  # upload | skip | conflict | overwrite | missing
    reason: str = ""
    remote_size: int | None = None
    remote_etag: str | None = None  # guards an overwrite against a change since the plan
    product_ids: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "product_ids": list(self.product_ids)}


class KeyMap:
    """Where each local file goes in the bucket, and the products pointed at those keys.

    Files under the configured prefixes keep their keys. A catalog made with other prefixes moves under them,
    keeping each file's name (prefixed with the product id when the name does not start with it, so names stay
    unique). Two different files that would land on one key cannot both be migrated: the second becomes a
    MISSING item, which keeps every product row unwritten until the catalog is fixed.
    """

    def __init__(self, settings: Settings):
        self.prefixes = {"image": settings.s3_image_prefix, "thumbnail": settings.s3_thumbnail_prefix}
        self.files: dict[str, tuple[str, str, list[str]]] = {}  # bucket key -> (kind, local key, product ids)
        self.recorded: dict[str, str] = {}  # local photo key -> the SHA-256 its product records
        self.blocked: list[PlanItem] = []
        self.warnings: list[str] = []

    def place(self, product: Product) -> Product:
        self.recorded.update((photo.key, photo.sha256) for photo in product.photos)
        photos = []
        for photo in product.photos:
            image = self._key(product.id, "image", photo.key)
            thumbnail = photo.thumbnail_key and self._key(product.id, "thumbnail", photo.thumbnail_key)
            photos.append(photo.model_copy(update={"key": image, "thumbnail_key": thumbnail or None}))
        return product.model_copy(update={"photos": photos})

    def _key(self, product_id: str, kind: str, key: str) -> str:
        target = bucket_key(key, product_id, self.prefixes[kind])
        known = self.files.get(target)
        if known is not None and known[1] != key:
            why = f"{key} and {known[1]} would both land on {target}: rename one"
            self.blocked.append(PlanItem(kind, key, target, 0, None, MISSING, why, product_ids=(product_id,)))
            self.warnings.append(why)
            return key
        self.files.setdefault(target, (kind, key, []))[2].append(product_id)
        return target

    def local_keys(self) -> dict[str, str]:
        """Bucket key -> local key of every file to migrate."""
        return {target: source for target, (_kind, source, _ids) in self.files.items()}

    def entries(self) -> list[tuple[str, str, str, tuple[str, ...]]]:
        """(kind, local key, bucket key, product ids) of every file to migrate."""
        return [(kind, source, target, tuple(ids)) for target, (kind, source, ids) in self.files.items()]


def bucket_key(key: str, product_id: str, prefix: str) -> str:
    if key.startswith(prefix):
        return key
    name = key.rpartition("/")[2]
    owned = name.startswith(tuple(f"{product_id}{sep}" for sep in ".-_"))
    return f"{prefix}{name}" if owned else f"{prefix}{product_id}-{name}"




def decide_files(keymap: KeyMap, local: Storage, bucket: Storage | None, overwrite: bool, workers: int,
                 progress: Progress | None, listed: dict[str, ObjectInfo] | None = None) -> list[PlanItem]:
    """What happens to each file; with no `bucket` (no credentials to read it) every readable file is an upload,
    said to be one only as far as the local catalog knows. `listed`: the bucket's objects under every prefix the
    files go to, when already listed (otherwise they are listed here)."""
    entries = keymap.entries()
    keys = {key for _, _, key, _ in entries}
    if bucket is None:
        remote: dict[str, ObjectInfo] = {}
    elif listed is not None:
        remote = {key: info for key, info in listed.items() if key in keys}
    else:
        remote = remote_objects(bucket, keys)
    new = "new" if bucket is not None else "to upload (the bucket is not compared without credentials)"

    def decide(entry: tuple[str, str, str, tuple[str, ...]]) -> PlanItem:
        kind, source_key, key, ids = entry
        try:
            info = local.head(source_key)
            size, sha = local_digest(local, source_key, info)
        except ObjectNotFound:
            return PlanItem(kind, source_key, key, 0, None, MISSING, f"{source_key} is missing locally",
                            product_ids=ids)
        except (StorageError, OSError) as err:
            return PlanItem(kind, source_key, key, 0, None, MISSING, f"cannot read {source_key}: {err}",
                            product_ids=ids)
        recorded = keymap.recorded.get(source_key) if kind == "image" else None
        if recorded and recorded != sha:  # its vector and duplicate checks describe other bytes
            return PlanItem(kind, source_key, key, 0, None, MISSING,
                            f"{source_key} is not the photo its product records (SHA-256 {recorded[:12]}…, the file "
                            f"has {sha[:12]}…): restore it, or remove the photo and add it again", product_ids=ids)
        if key not in remote:
            return PlanItem(kind, source_key, key, size, sha, UPLOAD, new, product_ids=ids)
        remote_size, etag = remote[key].size, remote[key].etag
        if remote_size == size:
            if same_bytes_by_etag(local, source_key, info, remote[key]):
                return PlanItem(kind, source_key, key, size, sha, SKIP, "identical object already there",
                                remote_size, etag, ids)
            remote_sha, etag = remote_sha256(bucket, key)  # the listing cannot tell: look at this one
            if remote_sha == sha:
                return PlanItem(kind, source_key, key, size, sha, SKIP, "identical object already there",
                                remote_size, etag, ids)
            why = "same size, different SHA-256"
        else:
            why = f"bucket has {remote_size:,} bytes, local has {size:,}"
        return PlanItem(kind, source_key, key, size, sha, OVERWRITE if overwrite else CONFLICT, why,
                        remote_size, etag, ids)

    seen = [0, 0]

    def compared(_entry, item: PlanItem) -> None:
        seen[0] += 1
        seen[1] += item.size
        if progress:
            progress(seen[0], len(entries), seen[1], 0)  # total bytes are known only once all are read

    return run_all(decide, entries, workers, on_done=compared)


def local_digest(storage: Storage, key: str, info: ObjectInfo | None = None) -> tuple[int, str]:
    """(size, SHA-256) of a local file: the storage's own digest when it has one, else by streaming it."""
    info = info or storage.head(key)
    if info.sha256:
        return info.size, info.sha256
    digest, size = hashlib.sha256(), 0
    with storage.open(key) as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def same_bytes_by_etag(local: Storage, source_key: str, info: ObjectInfo, remote: ObjectInfo) -> bool:
    """Whether the listing alone shows the bucket object holds the local file's bytes: same size and the ETag
    an upload of this file gets (the MD5 of its bytes; above the multipart threshold, of its parts' MD5s)."""
    if remote.size != info.size or not remote.etag:
        return False
    if info.size <= MULTIPART_THRESHOLD:
        return "-" not in info.etag and remote.etag == info.etag  # the local ETag is the file's MD5
    if "-" not in remote.etag:
        return False
    with local.open(source_key) as stream:
        return expected_etag(stream, info.size) == remote.etag


def remote_objects(bucket: Storage, keys: set[str]) -> dict[str, ObjectInfo]:
    """The bucket objects at `keys` as listings describe them (1 request per 1,000 keys, no HEAD)."""
    if not keys:
        return {}
    listed = list_folders(bucket, {k.rpartition("/")[0] + "/" if "/" in k else "" for k in keys})
    return {key: info for key, info in listed.items() if key in keys}


def folder_roots(prefixes) -> list[str]:
    """The prefixes to list so each is covered once: a folder inside another listed folder is already in it."""
    prefixes = sorted(set(prefixes))
    return [p for p in prefixes if not any(p != q and p.startswith(q) for q in prefixes)]


def list_folders(bucket: Storage, prefixes) -> dict[str, ObjectInfo]:
    """Every bucket object under `prefixes`, from paginated listings (1 request per 1,000 objects), the
    folders listed at the same time: a bucket far away answers each after a round trip."""
    roots = folder_roots(prefixes)
    if len(roots) <= 1:
        return {info.key: info for root in roots for info in bucket.iter_objects(root)}
    with ThreadPoolExecutor(max_workers=min(len(roots), 8), thread_name_prefix="vpm-list") as pool:
        pages = list(pool.map(lambda root: list(bucket.iter_objects(root)), roots))
    return {info.key: info for page in pages for info in page}


def remote_sha256(bucket: Storage, key: str) -> tuple[str, str]:
    """SHA-256 of a bucket object: its stored checksum, our metadata, or (last resort) a download."""
    info = bucket.head(key)
    sha = info.sha256 or info.metadata.get("sha256")
    if not sha:
        sha = sha256_hex(bucket.get(key))
    return sha, info.etag


def run_all(fn: Callable[[Any], T], items: list, workers: int, *, on_done=None,
            on_stop: Callable[[], None] | None = None) -> list[T]:
    """fn over items on a pool of `workers` threads, results in input order. on_done runs on this thread, so
    an exception there (a progress callback's KeyboardInterrupt) cancels what has not started and propagates;
    `on_stop` then wakes whatever the pool's threads wait on, before waiting for them."""
    results: list[Any] = [None] * len(items)
    if not items:
        return results
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vpm-migrate")
    try:
        futures: dict[Future, int] = {pool.submit(fn, item): n for n, item in enumerate(items)}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                n = futures[future]
                results[n] = future.result()
                if on_done:
                    on_done(items[n], results[n])
    finally:
        if on_stop is not None:
            on_stop()
        pool.shutdown(wait=True, cancel_futures=True)
    return results
