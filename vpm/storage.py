"""One storage interface, two implementations with the same behaviour: a local folder and an S3 bucket.

Keys are '/'-separated relative paths ("images/p1.jpg"), validated the same way on both backends. ETags are
the quoted MD5 of the content on both, so a catalog written locally and one written to S3 behave alike under
conditional puts. The contract test suite (tests/test_storage.py) runs against every implementation.

Besides `put` (bytes in memory), `upload` streams a file or file object and returns what the backend stored,
SHA-256 included when it confirms one (S3 returns the checksum it verified on the PUT), so a writer can verify an
upload without a HEAD after it; above MULTIPART_THRESHOLD it goes up in MULTIPART_PART_SIZE parts, each one's
checksum checked as it is acknowledged. `open` streams an object out.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlsplit, urlunsplit

from .config import half_set_keys, redact_url
from .errors import VpmError

log = logging.getLogger(__name__)

# Local bookkeeping lives under this folder of the root; it is never listed and no key may name it.
_LOCAL_INTERNAL = ".vpm"
# Conditional puts lock one of this many stripes (chosen by the key's hash), so .vpm/locks holds at most this
# many files however many keys are ever written; two keys that share a stripe merely wait for each other.
LOCK_STRIPES = 256
# A put's temp file (or an old per-key lock file) untouched for this long belongs to no running writer.
_STALE_TEMP_SECONDS = 3600
_TEMP_PREFIX = "put-"
# Files larger than this go to S3 in parts of MULTIPART_PART_SIZE (s3transfer's and `aws s3`'s defaults, which
# vpm/costs.py's request counts assume); a part is the most an upload holds in memory.
MULTIPART_THRESHOLD = 8 * 1024 * 1024
MULTIPART_PART_SIZE = 8 * 1024 * 1024
_COPY_CHUNK = 1024 * 1024


class StorageError(VpmError):
    """A storage operation failed; the message says what to check."""


class InvalidKey(StorageError, ValueError):
    pass


class ObjectNotFound(StorageError, KeyError):
    def __str__(self) -> str:  # KeyError would repr-quote the message
        return str(self.args[0]) if self.args else "object not found"


class PreconditionFailed(StorageError):
    """A conditional put lost a race: the object changed (or appeared) since it was read."""


class BucketNotFound(StorageError):
    """The bucket does not exist (or not where the region and endpoint point)."""


class BucketAccessDenied(StorageError):
    """The credentials are refused the bucket (the IAM policy lacks a permission)."""


class EndpointNotS3(StorageError):
    """What answered at the S3 endpoint is not S3 (a web server, a proxy's error page, a wrong port)."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.fix = fix  # what to change, for check reports that show it on its own line


class NotS3Answer(Exception):
    """Raised inside botocore when an answer cannot have come from S3; S3Storage turns it into EndpointNotS3."""

    def __init__(self, answer: str):
        super().__init__(answer)
        self.answer = answer  # what came back, for people: "an HTML page (HTTP 200)"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: datetime
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    sha256: str | None = None  # hex SHA-256 of the content when the backend knows it without a download
    checksum_algorithm: str | None = None  # the checksum S3 stores with the object ("SHA256"), as listings say


@dataclass(frozen=True)
class StoredObject:
    """What an `upload` stored, as the backend acknowledged it."""

    key: str
    size: int
    etag: str
    sha256: str | None  # hex SHA-256 the backend confirmed it stored (None: it did not say; HEAD to verify)
    parts: int = 1  # 1 for a single PUT


UploadSource = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO


def multipart_etag(part_md5s: list[bytes]) -> str:
    """S3's ETag of a multipart object: the MD5 of its parts' MD5 digests, a dash and the number of parts."""
    return '"' + hashlib.md5(b"".join(part_md5s), usedforsecurity=False).hexdigest() + f'-{len(part_md5s)}"'


def expected_etag(stream: BinaryIO, size: int) -> str:
    """The ETag an `upload` of `size` bytes from `stream` gets on S3 without SSE-KMS: the MD5 of the content
    for a single PUT, the multipart form (MULTIPART_PART_SIZE parts) above MULTIPART_THRESHOLD."""
    if size <= MULTIPART_THRESHOLD:
        digest = hashlib.md5(usedforsecurity=False)
        for chunk in iter(lambda: stream.read(_COPY_CHUNK), b""):
            digest.update(chunk)
        return '"' + digest.hexdigest() + '"'
    parts = []
    for part in iter(lambda: stream.read(MULTIPART_PART_SIZE), b""):
        parts.append(hashlib.md5(part, usedforsecurity=False).digest())
    return multipart_etag(parts)


@contextmanager
def _opened(source: UploadSource):
    """`source` as a binary stream positioned at its start (a path is opened, bytes wrapped)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            yield fh
    else:
        yield source


@dataclass(frozen=True)
class ListPage:
    objects: list[ObjectInfo]
    prefixes: list[str]  # "folders" when a delimiter is given
    next_token: str | None  # pass back to list() for the next page; None on the last page


def validate_key(key: str) -> str:
    """Reject keys that could escape the root or confuse S3 tooling."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("storage key must be a non-empty string")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise InvalidKey(f"storage key {key!r} contains control characters")
    if "\\" in key:
        raise InvalidKey(f"storage key {key!r} contains a backslash")
    if key.startswith("/"):
        raise InvalidKey(f"storage key {key!r} is absolute (starts with '/')")
    parts = key.split("/")
    if any(p in ("..", ".") for p in parts):
        raise InvalidKey(f"storage key {key!r} contains a '..' or '.' segment")
    if "" in parts[:-1]:
        raise InvalidKey(f"storage key {key!r} contains an empty segment ('//')")
    if parts[0] == _LOCAL_INTERNAL:
        raise InvalidKey(f"storage key {key!r} uses the reserved prefix {_LOCAL_INTERNAL}/")
    if len(key.encode()) > 1024:
        raise InvalidKey("storage key is longer than 1024 bytes")
    return key


def md5_etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


class Storage(ABC):
    """The contract every backend keeps. Keys are validated before any I/O."""

    backend: str  # "local" or "s3"

    @property
    @abstractmethod
    def description(self) -> str:
        """Where the data lives, for people: 'local folder /x' or 's3://bucket (region)'."""

    @abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Store bytes; return the new ETag. With if_match / if_none_match, raise PreconditionFailed when the
        object's current ETag differs / when it already exists."""

    @abstractmethod
    def upload(
        self,
        key: str,
        source: UploadSource,
        content_type: str | None = None,
        *,
        size: int | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> StoredObject:
        """Stream bytes, a file path or a binary file object into `key` (never the whole file in memory) and
        return what was stored: size, ETag, and the SHA-256 the backend confirmed. Same conditions as `put`."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A binary stream of the object's content (close it, or use it in a `with`)."""

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def get_with_etag(self, key: str) -> tuple[bytes, str]: ...

    @abstractmethod
    def head(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def list(
        self, prefix: str = "", delimiter: str | None = None, page_size: int = 1000, token: str | None = None
    ) -> ListPage: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; deleting a missing object is not an error (as on S3)."""

    # Whether url() gives an address a browser on another machine can fetch (presigned or CDN). When False
    # (a local folder's file:// path), a face that shows images serves them itself.
    web_urls: bool = True

    @abstractmethod
    def url(self, key: str, expires: int | None = None) -> str:
        """An address of the object: for a browser when `web_urls`, else a path for this machine only."""

    @abstractmethod
    def check_access(self) -> None:
        """Raise StorageError with a clear message if the bucket/folder cannot be reached (BucketNotFound,
        BucketAccessDenied for those two cases)."""

    # What a pre-flight check reports about where the objects live; a local folder has none of these.
    def credentials_source(self) -> str | None:
        """How credentials were found ("explicit", "env", "iam-role"...); None when none were found."""
        return "local"

    def bucket_region(self) -> str | None:
        """The region the bucket lives in (None for a local folder)."""
        return None

    def versioning(self) -> str | None:
        """"Enabled", "Suspended", or None (never turned on, or a local folder)."""
        return None

    def default_encryption(self) -> str | None:
        """The bucket's default server-side encryption algorithm; None when off (or a local folder)."""
        return None

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
            return True
        except ObjectNotFound:
            return False

    def iter_objects(self, prefix: str = "", page_size: int = 1000) -> Iterator[ObjectInfo]:
        token = None
        while True:
            page = self.list(prefix, page_size=page_size, token=token)
            yield from page.objects
            if not page.next_token:
                return
            token = page.next_token

    def iter_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size) of every object under `prefix`: what a size estimate needs, without content digests."""
        for info in self.iter_objects(prefix):
            yield info.key, info.size


# --------------------------------------------------------------------------------------------- local


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


# ------------------------------------------------------------------------------------------------ s3


class S3Storage(Storage):
    backend = "s3"

    def __init__(
        self,
        bucket: str,
        region: str = "us-east-1",
        *,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        profile: str | None = None,
        cdn_url: str | None = None,
        sse: str | None = None,
        url_expiry: int = 3600,
        client=None,
    ):
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url
        self.cdn_url = cdn_url.rstrip("/") if cdn_url else None
        self.sse = sse
        self.url_expiry = url_expiry
        self.client = client or self._make_client(
            region, endpoint_url, access_key_id, secret_access_key, session_token, profile
        )
        _check_every_answer(self.client)

    @staticmethod
    def _make_client(region, endpoint_url, key_id, secret, token, profile):
        half = half_set_keys(key_id, secret)
        if half:
            raise StorageError(half)
        # botocore's own session, as boto3.Session builds it, without importing boto3 and s3transfer (a tenth of
        # a second of every command's start): only the client's own calls are used here.
        import botocore.session
        from botocore.config import Config

        session = botocore.session.Session(profile=profile)
        if key_id or secret or token:  # as boto3.Session decides; otherwise the usual chain (profile, role)
            session.set_credentials(key_id, secret, token)
        config = Config(
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=32,
            connect_timeout=5,
            read_timeout=60,
        )
        return session.create_client("s3", region_name=region, endpoint_url=endpoint_url, config=config)

    @property
    def description(self) -> str:
        where = f" via {redact_url(self.endpoint_url)}" if self.endpoint_url else ""
        return f"s3://{self.bucket} ({self.region}){where}"

    @property
    def _endpoint_name(self) -> str:
        """The endpoint requests go to, safe to show: a password or token in S3_ENDPOINT_URL is redacted."""
        return redact_url(self.endpoint_url) if self.endpoint_url else f"AWS S3 in {self.region}"

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{key}" if key else f"bucket {self.bucket!r}"

    def _not_s3(self, key: str | None, answer: str) -> EndpointNotS3:
        if self.endpoint_url:
            check = "check S3_ENDPOINT_URL: it must be the S3 API endpoint of your storage service, not a website"
            fix = "set S3_ENDPOINT_URL to the S3 API endpoint, or leave it empty for AWS"
        else:
            check = fix = "check the network and any proxy (HTTPS_PROXY) between here and AWS"
        return EndpointNotS3(
            f"{self._endpoint_name} does not answer like S3 (it sent {answer}) for {self._where(key)}: {check}", fix
        )

    # One place that turns botocore's many failure shapes into a message a person can act on.
    def _error(self, err: Exception, key: str | None = None) -> StorageError:
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = self._where(key)
        if isinstance(err, NotS3Answer):
            return self._not_s3(key, err.answer)
        if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(
                f"no AWS credentials found for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or run where an IAM role is attached"
            )
        if isinstance(err, EndpointConnectionError):
            return StorageError(
                f"cannot reach S3 for {where} (endpoint {self._endpoint_name}): check the network, "
                "S3_REGION and S3_ENDPOINT_URL"
            )
        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "NotFound") or (status == 404 and key and code != "NoSuchBucket"):
                return ObjectNotFound(f"{key} not found in s3://{self.bucket}")
            if code == "NoSuchBucket" or (status == 404 and not key):
                return BucketNotFound(
                    f"bucket {self.bucket!r} does not exist in {self.region}: check S3_BUCKET_NAME and "
                    f"S3_REGION, or create it (aws s3 mb s3://{self.bucket} --region {self.region})"
                )
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                        "AuthorizationHeaderMalformed"):
                return StorageError(
                    f"AWS rejected the credentials for {where} ({code}): check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or the profile / IAM role) and the system clock"
                )
            if code in ("AccessDenied", "Forbidden", "AllAccessDisabled") or status == 403:
                return BucketAccessDenied(
                    f"access denied to {where}: the IAM policy needs s3:ListBucket on the bucket and "
                    "s3:GetObject, s3:PutObject, s3:DeleteObject on its objects"
                )
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return PreconditionFailed(f"{key or self.bucket} changed since it was read")
            if code == "PermanentRedirect" or status == 301:
                return StorageError(f"bucket {self.bucket!r} is not in {self.region}: set S3_REGION to its region")
            return StorageError(f"S3 error on {where} (endpoint {self._endpoint_name}): {code or status}")
        return StorageError(f"S3 error on {where} (endpoint {self._endpoint_name}): {type(err).__name__}")

    @contextmanager
    def _request(self, key: str | None = None):
        """Every S3 request, and the reading of its answer, runs inside this: whatever fails, the caller gets
        one StorageError saying what to check, never botocore's traceback."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except StorageError:
            raise
        except (ClientError, BotoCoreError, NotS3Answer) as err:
            raise self._error(err, key) from None
        except Exception as err:  # noqa: BLE001 - an unparseable body, a missing field: not an answer from S3
            raise self._not_s3(key, f"an answer that could not be read ({type(err).__name__})") from None

    def put(self, key, data, content_type=None, *, if_match=None, if_none_match=False, metadata=None):
        validate_key(key)
        kwargs = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ContentType": content_type or "application/octet-stream",
            # botocore computes the SHA-256; S3 verifies it on arrival (rejecting a corrupted upload) and
            # stores it, so head() can compare content without downloading.
            "ChecksumAlgorithm": "SHA256",
        }
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if metadata:
            kwargs["Metadata"] = metadata
        if self.sse:
            kwargs["ServerSideEncryption"] = self.sse
        with self._request(key):
            resp = self.client.put_object(**kwargs)
            return resp.get("ETag") or md5_etag(data)

    def upload(self, key, source, content_type=None, *, size=None, if_match=None, if_none_match=False,
               metadata=None):
        validate_key(key)
        with _opened(source) as stream:
            if size is None:
                size = _stream_size(stream)
            extra = {"ContentType": content_type or "application/octet-stream"}
            if metadata:
                extra["Metadata"] = metadata
            if self.sse:
                extra["ServerSideEncryption"] = self.sse
            conditions = {}
            if if_match is not None:
                conditions["IfMatch"] = if_match
            if if_none_match:
                conditions["IfNoneMatch"] = "*"
            if size > MULTIPART_THRESHOLD:
                return self._upload_parts(key, stream, size, extra, conditions)
            with self._request(key):
                # botocore reads the stream once for the SHA-256 it sends (S3 verifies the body against it and
                # echoes it back), then sends it: a file is streamed, never held whole.
                resp = self.client.put_object(Bucket=self.bucket, Key=key, Body=_Unclosable(stream),
                                              ChecksumAlgorithm="SHA256", **extra, **conditions)
                return StoredObject(key, size, resp.get("ETag", ""), _hex_checksum(resp.get("ChecksumSHA256")))

    def _upload_parts(self, key, stream, size, extra, conditions) -> StoredObject:
        """A multipart upload: each part's SHA-256, as S3 acknowledges it, must be the one computed here; the
        whole file's SHA-256 (computed while reading it) is then what S3 holds. An upload that fails is aborted."""
        with self._request(key):
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256", **extra)["UploadId"]
        whole, parts, md5s, sent = hashlib.sha256(), [], [], 0
        try:
            for number, chunk in enumerate(iter(lambda: stream.read(MULTIPART_PART_SIZE), b""), start=1):
                whole.update(chunk)
                digest = hashlib.sha256(chunk).digest()
                with self._request(key):
                    resp = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                   PartNumber=number, Body=chunk, ChecksumAlgorithm="SHA256")
                echoed = resp.get("ChecksumSHA256")
                if echoed is not None and base64.b64decode(echoed) != digest:
                    raise StorageError(f"part {number} of {self._where(key)} arrived damaged (its SHA-256 differs)")
                part = {"PartNumber": number, "ETag": resp["ETag"]}
                if echoed is not None:
                    part["ChecksumSHA256"] = echoed
                parts.append(part)
                md5s.append(hashlib.md5(chunk, usedforsecurity=False).digest())
                sent += len(chunk)
            with self._request(key):
                resp = self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **conditions)
        except BaseException:
            with suppress(StorageError), self._request(key):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        confirmed = all("ChecksumSHA256" in p for p in parts)
        return StoredObject(key, sent, resp.get("ETag") or multipart_etag(md5s),
                            whole.hexdigest() if confirmed else None, len(parts))

    def open(self, key):
        validate_key(key)
        with self._request(key):
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]

    def get(self, key):
        return self.get_with_etag(key)[0]

    def get_with_etag(self, key):
        validate_key(key)
        with self._request(key):
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
            return resp["Body"].read(), resp["ETag"]

    def head(self, key):
        validate_key(key)
        with self._request(key):
            resp = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            checksum = resp.get("ChecksumSHA256")
            return ObjectInfo(
                key=key,
                size=resp["ContentLength"],
                etag=resp["ETag"],
                last_modified=resp["LastModified"],
                content_type=resp.get("ContentType"),
                metadata=dict(resp.get("Metadata") or {}),
                sha256=base64.b64decode(checksum).hex() if checksum and "-" not in checksum else None,
            )

    def list(self, prefix="", delimiter=None, page_size=1000, token=None):
        if prefix:
            validate_key(prefix.rstrip("/") or "x")
        kwargs = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": page_size}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        with self._request():
            resp = self.client.list_objects_v2(**kwargs)
            objects = [
                ObjectInfo(key=o["Key"], size=o["Size"], etag=o.get("ETag", ""), last_modified=o["LastModified"],
                           checksum_algorithm=(o.get("ChecksumAlgorithm") or [None])[0])
                for o in resp.get("Contents", [])
            ]
            prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", [])]
            return ListPage(objects, prefixes, resp.get("NextContinuationToken") if resp.get("IsTruncated") else None)

    def delete(self, key):
        validate_key(key)
        with self._request(key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def url(self, key, expires=None):
        validate_key(key)
        if self.cdn_url:
            return f"{self.cdn_url}/{quote(key)}"
        # Private bucket: a presigned SigV4 GET that expires. Signing is local; it makes no request.
        from botocore.exceptions import BotoCoreError

        try:
            url = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires or self.url_expiry
            )
        except BotoCoreError as err:  # no credentials to sign with, most likely
            raise self._error(err, key) from None
        # A user:password in S3_ENDPOINT_URL must not travel in every image link (and browsers refuse such
        # links anyway); the signature covers the host, not the userinfo, so the link stays valid without it.
        return _without_userinfo(url)

    def check_access(self):
        # A one-key listing rather than HeadBucket: the same permission (s3:ListBucket), and a body that
        # shows whether S3 answered at all (a website's 404 to a HEAD looks just like a missing bucket).
        with self._request():
            self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)

    def credentials_source(self) -> str | None:
        # botocore's accessor: how the client's credential chain found them ("explicit", "env", "iam-role"...).
        credentials = self.client._get_credentials() if hasattr(self.client, "_get_credentials") else None
        return getattr(credentials, "method", None) or ("found" if credentials is not None else None)

    def bucket_region(self) -> str:
        with self._request():
            where = self.client.get_bucket_location(Bucket=self.bucket).get("LocationConstraint") or "us-east-1"
        return "eu-west-1" if where == "EU" else where  # the oldest buckets answer with the legacy name

    def versioning(self) -> str | None:
        with self._request():
            return self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")

    def default_encryption(self) -> str | None:
        from botocore.exceptions import ClientError

        try:
            with self._request():
                configuration = self.client.get_bucket_encryption(Bucket=self.bucket)
        except StorageError as err:
            cause = err.__context__
            if isinstance(cause, ClientError) and "ServerSideEncryptionConfigurationNotFound" in str(cause):
                return None
            raise
        rules = configuration.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        for rule in rules:
            algorithm = rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm")
            if algorithm:
                return algorithm
        return None


# Their body is the stored object itself, whatever it holds, so only their headers can be judged.
_OBJECT_ANSWERS = frozenset({"GetObject", "HeadObject"})


def _check_every_answer(client) -> None:
    """Run _reject_answers_not_from_s3 on every answer this client gets (migrate's own calls included).

    It must see the answer before botocore's 200-error handler, which rewrites any 200 whose body is not
    XML into a 500 and retries it as a cut-off S3 answer: a website's page would then be fetched five
    times and reported as a server error.
    """
    from botocore import handlers

    events = client.meta.events
    theirs = getattr(handlers, "_handle_200_error", None)  # private: without it, ours simply runs second
    if theirs is not None:
        events.unregister("before-parse.s3.*", theirs)
    # The unique id keeps a client shared by several S3Storage objects from running the check twice.
    events.register_first("before-parse.s3.*", _reject_answers_not_from_s3, unique_id="vpm-not-s3-check")
    if theirs is not None:
        events.register_first("before-parse.s3.*", theirs)


def _reject_answers_not_from_s3(operation_model, response_dict, **_):
    """botocore 'before-parse' hook: stop an answer that cannot have come from S3 before botocore's parser
    turns it into an empty listing, a 'missing object' or a KeyError. Raises NotS3Answer."""
    body = response_dict.get("body")
    answer = _why_not_s3(operation_model.name, response_dict.get("status_code", 0),
                         response_dict.get("headers") or {}, body)
    if answer:
        if hasattr(body, "close"):  # a GetObject stream nobody will read: give its connection back
            body.close()
        raise NotS3Answer(answer)


def _why_not_s3(operation: str, status: int, headers, body) -> str | None:
    """What in this answer S3 would never send, for people; None when it may well be S3.

    Judged by the body, not the Content-Type: real S3 servers (moto's among them) label bodiless answers
    text/html. An answer to HEAD has no body over HTTP (whatever a mock hands back), so a website's 404 to
    a HEAD cannot be told from S3's.
    """
    if status < 300 and operation in _OBJECT_ANSWERS:
        has_etag = any(str(name).lower() == "etag" for name in headers)
        return None if has_etag else f"HTTP {status} without an ETag"
    if operation.startswith("Head") or not isinstance(body, bytes) or not body.strip():
        return None
    start = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:64].lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return f"an HTML page with HTTP {status}"
    if not start.startswith(b"<") and status < 500:  # a proxy's plain-text 503 may pass: botocore retries it
        return f"HTTP {status} with a body that is not XML"
    return None


def _hex_checksum(value: str | None) -> str | None:
    """A base64 full-object SHA-256 as hex; None for none or a composite one ("...-3")."""
    if not value or "-" in value:
        return None
    return base64.b64decode(value).hex()


def _stream_size(stream: BinaryIO) -> int:
    start = stream.tell()
    end = stream.seek(0, os.SEEK_END)
    stream.seek(start)
    return end - start


class _Unclosable(io.RawIOBase):
    """A view of a caller's stream that botocore may read, seek and 'close' (it does) without closing it."""

    def __init__(self, stream: BinaryIO):
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def make_storage(settings) -> Storage:
    """The storage the settings describe: S3 when S3_ENABLED, else the local VPM_DATA_DIR folder."""
    if settings.s3_enabled:

        def secret(v):
            return v.get_secret_value() if v is not None else None

        return S3Storage(
            settings.s3_bucket_name,
            settings.s3_region,
            endpoint_url=settings.s3_endpoint_url,
            access_key_id=secret(settings.aws_access_key_id),
            secret_access_key=secret(settings.aws_secret_access_key),
            session_token=secret(settings.aws_session_token),
            profile=settings.aws_profile,
            cdn_url=settings.s3_cdn_url,
            sse=settings.s3_sse,
            url_expiry=settings.s3_url_expiry_seconds,
        )
    return LocalStorage(settings.vpm_data_dir)
