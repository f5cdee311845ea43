"""The local-folder backend: the storage contract kept by files under VPM_DATA_DIR.

Every write is a temp file renamed into place (readers see the old or the new file, never half); conditional
puts hold a thread lock and a file lock for the key's stripe, so they are atomic across threads and processes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from vpm.core.storage_contract import (
    _COPY_CHUNK,
    _LOCAL_INTERNAL,
    InvalidKey,
    ListPage,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    Storage,
    StorageError,
    StoredObject,
    _opened,
    md5_etag,
    validate_key,
)
from vpm.core.storage_registry import register

# Conditional puts lock one of this many stripes (chosen by the key's hash), so .vpm/locks holds at most this
# many files however many keys are ever written; two keys that share a stripe merely wait for each other.
LOCK_STRIPES = 256
# A put's temp file (or an old per-key lock file) untouched for this long belongs to no running writer.
_STALE_TEMP_SECONDS = 3600
_TEMP_PREFIX = "put-"


class LocalStorage(Storage):
    backend = "local"

    # url() is a file:// path that only this machine can open: faces serve the files themselves.
    web_urls = False

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self._stripe_locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._digest_cache: dict[str, tuple[tuple[int, int, int], str, str]] = {}
        self._tidy_bookkeeping()

    @property
    def description(self) -> str:
        return f"local folder {self.root}"

    def _path(self, key: str) -> Path:
        validate_key(key)
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise InvalidKey(f"storage key {key!r} resolves outside the storage folder")
        return path

    def _key_lock(self, key: str):
        """A thread lock plus a file lock for the key's stripe, so conditional puts are atomic across threads
        and processes while .vpm/locks stays at LOCK_STRIPES files at most."""
        import filelock

        stripe = int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big") % LOCK_STRIPES
        lock_dir = self.root / _LOCAL_INTERNAL / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        file_lock = filelock.FileLock(str(lock_dir / f"stripe-{stripe:03d}.lock"), timeout=30)
        return _Both(self._stripe_locks[stripe], file_lock)

    def _tidy_bookkeeping(self) -> None:
        """Delete what no writer will use again: temp files of puts that died mid-write, and the per-key lock
        files of older versions (one per key ever written). Only old ones: a young file may belong to a
        write in progress in another process."""
        internal = self.root / _LOCAL_INTERNAL
        leftovers = [*internal.glob(_TEMP_PREFIX + "*"), *(internal / "locks").glob("*.lock")]
        cutoff = time.time() - _STALE_TEMP_SECONDS
        for path in leftovers:
            if path.name.startswith("stripe-"):
                continue
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:  # gone already, or not ours to remove: nothing to tidy
                continue

    def put(self, key, data, content_type=None, *, if_match=None, if_none_match=False, metadata=None):
        path = self._path(key)
        with self._key_lock(key):
            if if_match is not None or if_none_match:
                current = md5_etag(path.read_bytes()) if path.exists() else None
                if if_none_match and current is not None:
                    raise PreconditionFailed(f"{key} already exists")
                if if_match is not None and current != if_match:
                    raise PreconditionFailed(f"{key} changed since it was read")
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write a temp file beside the target, then rename: readers see the old or the new file, never half.
            fd, tmp = tempfile.mkstemp(dir=self.root / _LOCAL_INTERNAL, prefix=_TEMP_PREFIX)
            try:
                with open(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return md5_etag(data)

    def upload(self, key, source, content_type=None, *, size=None, if_match=None, if_none_match=False,
               metadata=None):
        path = self._path(key)
        with self._key_lock(key), _opened(source) as stream:
            self._check_conditions(key, path, if_match, if_none_match)
            path.parent.mkdir(parents=True, exist_ok=True)
            sha, md5, written = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
            fd, tmp = tempfile.mkstemp(dir=self.root / _LOCAL_INTERNAL, prefix=_TEMP_PREFIX)
            try:
                with open(fd, "wb") as fh:
                    for chunk in iter(lambda: stream.read(_COPY_CHUNK), b""):
                        fh.write(chunk)
                        sha.update(chunk)
                        md5.update(chunk)
                        written += len(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return StoredObject(key, written, '"' + md5.hexdigest() + '"', sha.hexdigest())

    def _check_conditions(self, key: str, path: Path, if_match: str | None, if_none_match: bool) -> None:
        if if_match is None and not if_none_match:
            return
        try:
            current = self._digests(path, path.stat())[0] if path.is_file() else None
        except FileNotFoundError:
            current = None
        if if_none_match and current is not None:
            raise PreconditionFailed(f"{key} already exists")
        if if_match is not None and current != if_match:
            raise PreconditionFailed(f"{key} changed since it was read")

    def open(self, key):
        path = self._path(key)
        try:
            if not path.is_file():
                raise FileNotFoundError
            return open(path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"{key} not found in {self.description}") from None

    def get(self, key):
        return self.get_with_etag(key)[0]

    def get_with_etag(self, key):
        path = self._path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"{key} not found in {self.description}") from None
        return data, md5_etag(data)

    def head(self, key):
        path = self._path(key)
        try:
            st = path.stat()
            if not path.is_file():
                raise FileNotFoundError
            etag, sha256 = self._digests(path, st)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"{key} not found in {self.description}") from None
        return self._info(key, st, etag, sha256)

    def _digests(self, path: Path, st: os.stat_result) -> tuple[str, str]:
        """(ETag, SHA-256) of a file, remembered per (inode, mtime, size).

        Every write is a rename of a new file (new inode), so a changed file never matches a remembered entry;
        head() and list() then cost a stat instead of reading and hashing the whole object each time.
        """
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._digest_cache.get(str(path))
        if cached and cached[0] == stamp:
            return cached[1], cached[2]
        data = path.read_bytes()
        digests = (md5_etag(data), hashlib.sha256(data).hexdigest())
        self._digest_cache[str(path)] = (stamp, *digests)
        return digests

    @staticmethod
    def _info(key: str, st: os.stat_result, etag: str, sha256: str | None = None) -> ObjectInfo:
        import mimetypes

        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=etag,
            last_modified=datetime.fromtimestamp(st.st_mtime, tz=UTC),
            content_type=mimetypes.guess_type(key)[0],
            sha256=sha256,
        )

    def _all_keys(self, prefix: str) -> list[str]:
        # Walk only the folder the prefix points into, then filter: cheap for "images/" in a large tree.
        base_dir = prefix.rpartition("/")[0]
        start = self.root / base_dir if base_dir else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            if rel_dir == ".":
                rel_dir = ""
                dirnames[:] = [d for d in dirnames if d != _LOCAL_INTERNAL]
            for name in filenames:
                key = f"{rel_dir}/{name}" if rel_dir else name
                if key.startswith(prefix):
                    keys.append(key)
        keys.sort()
        return keys

    def iter_sizes(self, prefix=""):
        # A stat per file: a listing would also read and hash every file for its ETag and SHA-256.
        if prefix:
            validate_key(prefix.rstrip("/") or "x")
        for key in self._all_keys(prefix):
            try:
                yield key, (self.root / key).stat().st_size
            except FileNotFoundError:  # deleted between walk and stat
                continue

    def list(self, prefix="", delimiter=None, page_size=1000, token=None):
        if prefix:
            validate_key(prefix.rstrip("/") or "x")
        keys = self._all_keys(prefix)
        entries: list[tuple[str, bool]] = []  # (key or folder prefix, is_folder), sorted, as S3 returns them
        seen_folders: set[str] = set()
        for key in keys:
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                folder = prefix + rest.split(delimiter, 1)[0] + delimiter
                if folder not in seen_folders:
                    seen_folders.add(folder)
                    entries.append((folder, True))
            else:
                entries.append((key, False))
        if token:
            entries = [e for e in entries if e[0] > token]
        page, more = entries[:page_size], len(entries) > page_size
        objects, prefixes = [], []
        for name, is_folder in page:
            if is_folder:
                prefixes.append(name)
            else:
                path = self.root / name
                try:
                    st = path.stat()
                    objects.append(self._info(name, st, *self._digests(path, st)))
                except FileNotFoundError:  # deleted between walk and stat
                    continue
        return ListPage(objects, prefixes, page[-1][0] if more and page else None)

    def delete(self, key):
        path = self._path(key)
        with self._key_lock(key):
            path.unlink(missing_ok=True)
        # Tidy empty folders so the browser does not show ghosts, but never above the root.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def url(self, key, expires=None):
        return self._path(key).as_uri()

    def check_access(self):
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / _LOCAL_INTERNAL).mkdir(exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot use local folder {self.root}: {err.strerror}; check VPM_DATA_DIR") from None
        if not os.access(self.root, os.R_OK | os.W_OK):
            raise StorageError(f"local folder {self.root} is not readable and writable; check its permissions")


class _Both:
    """Enter a thread lock and a file lock together."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def __enter__(self):
        self.a.acquire()
        try:
            self.b.acquire()
        except BaseException:
            self.a.release()
            raise
        return self

    def __exit__(self, *exc):
        try:
            self.b.release()
        finally:
            self.a.release()


@register("local")
def from_settings(settings) -> LocalStorage:
    return LocalStorage(settings.vpm_data_dir)
