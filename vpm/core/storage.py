"""Storage: one contract, one module per backend, a registry that picks one. This module gathers their public
names, so `from vpm.core.storage import ...` keeps working wherever it is written.

- vpm/core/storage_contract.py: the Storage contract, its errors and types, key rules, and BucketFacts (what only a
  bucket reports: region, versioning, default encryption, credentials);
- vpm/backends/local_storage.py: LocalStorage, a folder (VPM_DATA_DIR);
- vpm/backends/s3_storage.py: S3Storage, a bucket through botocore; vpm/backends/s3_events.py: the hooks every S3 client gets;
- vpm/core/storage_registry.py: make_storage(settings), the backend VPM_STORAGE (or S3_ENABLED) names.
"""

from __future__ import annotations

from vpm.backends.local_storage import LOCK_STRIPES, LocalStorage
from vpm.backends.s3_events import SEND_AT_ONCE, NotS3Answer, send_small_puts_at_once
from vpm.backends.s3_storage import MAX_POOL_CONNECTIONS, S3Storage
from vpm.core.storage_contract import (
    MULTIPART_PART_SIZE,
    MULTIPART_THRESHOLD,
    BucketAccessDenied,
    BucketFacts,
    BucketNotFound,
    EndpointNotS3,
    InvalidKey,
    ListPage,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    Storage,
    StorageError,
    StoredObject,
    UploadSource,
    expected_etag,
    md5_etag,
    multipart_etag,
    validate_key,
)
from vpm.core.storage_registry import backend_name, make_storage, register

__all__ = [
    "LOCK_STRIPES", "MAX_POOL_CONNECTIONS", "MULTIPART_PART_SIZE", "MULTIPART_THRESHOLD", "SEND_AT_ONCE",
    "BucketAccessDenied", "BucketFacts", "BucketNotFound", "EndpointNotS3", "InvalidKey", "ListPage",
    "LocalStorage", "NotS3Answer", "ObjectInfo", "ObjectNotFound", "PreconditionFailed", "S3Storage", "Storage",
    "StorageError", "StoredObject", "UploadSource", "backend_name", "expected_etag", "make_storage", "md5_etag",
    "multipart_etag", "register", "send_small_puts_at_once", "validate_key",
]
