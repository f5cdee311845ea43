"""The storage contract: what every backend keeps, and the types and key rules they share.

Keys are '/'-separated relative paths ("images/p1.jpg"), validated the same way on every backend. ETags are the
quoted MD5 of the content on every backend, so a catalog written locally and one written to S3 behave alike
under conditional puts. One test suite (tests/test_storage.py) runs against every implementation; they live one
to a module (vpm/backends/local_storage.py, vpm/backends/s3_storage.py) and vpm/core/storage_registry.py picks one from the settings.

Besides `put` (bytes in memory), `upload` streams a file or file object and returns what the backend stored,
SHA-256 included when it confirms one, so a writer can verify an upload without a HEAD after it; above
MULTIPART_THRESHOLD it goes up in MULTIPART_PART_SIZE parts. `open` streams an object out.

What only a bucket can say (its region, versioning, default encryption, where its credentials came from) is not
part of the contract: a backend that is a bucket also keeps `BucketFacts`, which the migration's checks ask for.
"""

from __future__ import annotations

import hashlib
import io
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable

from vpm.core.errors import VpmError

# Local bookkeeping lives under this folder of the root; it is never listed and no key may name it.
_LOCAL_INTERNAL = ".vpm"
# Files larger than this go to S3 in parts of MULTIPART_PART_SIZE (s3transfer's and `aws s3`'s defaults, which
# vpm/core/costs.py's request counts assume); a part is the most an upload holds in memory.
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


@runtime_checkable
class BucketFacts(Protocol):
    """What a backend that is a bucket reports to a pre-flight check (S3Storage keeps it; a local folder has
    none of it). Ask with isinstance(storage, BucketFacts)."""

    def credentials_source(self) -> str | None:
        """How credentials were found ("explicit", "env", "iam-role"...); None when none were found."""

    def bucket_region(self) -> str | None:
        """The region the bucket lives in."""

    def versioning(self) -> str | None:
        """"Enabled", "Suspended", or None (never turned on)."""

    def default_encryption(self) -> str | None:
        """The bucket's default server-side encryption algorithm; None when off."""
