"""Can this migration run? One line per check, each with the fix; nothing is written but a probe object,
which is removed again.

The bucket side stops at the first failure that makes the rest noise (no credentials, no bucket); the local
side is checked either way.
"""

from __future__ import annotations

import uuid

from vpm.core.catalog import CatalogError
from vpm.core.config import Settings
from vpm.core.health import Check
from vpm.core.storage import (
    BucketAccessDenied,
    BucketFacts,
    BucketNotFound,
    EndpointNotS3,
    ObjectNotFound,
    StorageError,
)
from vpm.migration.target import Source, Target, half_set_keys
from vpm.migration.text import few


def run_checks(settings: Settings, source: Source, target: Target) -> list[Check]:
    return bucket_checks(settings, target) + local_checks(settings, source)


# ------------------------------------------------------------------------------------------------ bucket


def bucket_checks(settings: Settings, target: Target) -> list[Check]:
    checks = [credentials_check(settings, target)]
    if checks[-1].status == "fail":
        return checks
    checks.append(bucket_exists_check(settings, target))
    if checks[-1].status == "fail":
        return checks
    checks.append(region_check(settings, target))
    checks += probe_checks(settings, target)
    checks.append(versioning_check(settings, target))
    checks.append(encryption_check(settings, target))
    checks.append(bucket_catalog_check(target))
    return checks


def _facts(target: Target) -> BucketFacts | None:
    """What the target reports about its bucket; None for a backend that is not a bucket."""
    return target.storage if isinstance(target.storage, BucketFacts) else None


def _not_reported(name: str, target: Target) -> Check:
    return Check(name, "warn", f"{target.description} does not report it", "")


def credentials_check(settings: Settings, target: Target) -> Check:
    half = half_set_keys(settings)
    if half:
        return Check("credentials", "fail", half, "set both keys, or neither (to use AWS_PROFILE or an IAM role)")
    facts = _facts(target)
    if facts is None:
        return _not_reported("credentials", target)
    found = facts.credentials_source()
    if found is None:
        return Check("credentials", "fail", "no AWS credentials found",
                     "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where an IAM role "
                     "is attached")
    return Check("credentials", "pass", f"credentials found ({found})")


def bucket_exists_check(settings: Settings, target: Target) -> Check:
    bucket, region = settings.s3_bucket_name, settings.s3_region
    try:
        target.storage.check_access()
    except BucketNotFound as err:
        return Check("bucket exists", "fail", str(err),
                     f"create it with `aws s3 mb s3://{bucket} --region {region}`, or fix S3_BUCKET_NAME")
    except BucketAccessDenied as err:
        return Check("bucket exists", "fail", str(err), "grant s3:ListBucket on the bucket to these credentials")
    except EndpointNotS3 as err:  # a website's 404 page is not a missing bucket
        return Check("bucket exists", "fail", str(err), err.fix)
    except StorageError as err:
        return Check("bucket exists", "fail", str(err),
                     "check S3_REGION, S3_ENDPOINT_URL, the network and the credentials")
    return Check("bucket exists", "pass", f"s3://{bucket} is reachable ({target.description})")


def region_check(settings: Settings, target: Target) -> Check:
    facts = _facts(target)
    if facts is None:
        return _not_reported("bucket region", target)
    try:
        actual = facts.bucket_region()
    except StorageError as err:
        return Check("bucket region", "warn", str(err),
                     "grant s3:GetBucketLocation, or make sure S3_REGION is the bucket's region")
    return region_verdict(actual, settings.s3_region, custom_endpoint=bool(settings.s3_endpoint_url))


def region_verdict(actual: str, configured: str, *, custom_endpoint: bool) -> Check:
    if actual == configured:
        return Check("bucket region", "pass", f"bucket is in {configured}, as S3_REGION says")
    # S3-compatible services behind S3_ENDPOINT_URL often report a nominal region: only a hint there.
    return Check("bucket region", "warn" if custom_endpoint else "fail",
                 f"bucket is in {actual} but S3_REGION is {configured}", f"set S3_REGION={actual}")


def probe_checks(settings: Settings, target: Target) -> list[Check]:
    """List, then write, read and delete a probe object under the metadata prefix."""
    storage, prefix = target.storage, settings.metadata_prefix
    checks = []
    try:
        storage.list(settings.s3_image_prefix, page_size=1)
        checks.append(Check("list objects", "pass", f"listed {settings.s3_image_prefix or '(root)'}"))
    except StorageError as err:
        checks.append(Check("list objects", "fail", str(err), "grant s3:ListBucket on the bucket"))
    key = f"{prefix}migrate-probe-{uuid.uuid4().hex}.txt"
    payload = b"vpm migration probe " + uuid.uuid4().hex.encode()
    try:
        storage.put(key, payload, "text/plain")
    except StorageError as err:
        checks.append(Check("write probe", "fail", str(err), f"grant s3:PutObject on {prefix}*"))
        return checks
    checks.append(Check("write probe", "pass", f"wrote {key} with a SHA-256 checksum"))
    try:
        info = storage.head(key)
        same = storage.get(key) == payload
        checks.append(Check("read probe", "pass" if same else "fail",
                            "read back the same bytes" if same else f"read back different bytes from {key}",
                            "" if same else "check for a proxy or S3_ENDPOINT_URL that rewrites objects"))
        if info.sha256 is None:
            checks.append(Check("checksums", "warn", "the service did not return the SHA-256 checksum we sent",
                                "skip detection will fall back to stored metadata or downloads (slower)"))
    except StorageError as err:
        checks.append(Check("read probe", "fail", str(err), f"grant s3:GetObject on {prefix}*"))
    finally:
        checks.append(_delete_probe(settings, target, key))
    return checks


def _delete_probe(settings: Settings, target: Target, key: str) -> Check:
    try:
        target.storage.delete(key)
        gone = not target.storage.exists(key)
    except StorageError as err:
        return Check("delete probe", "fail", f"{err} (probe {key} left behind)",
                     f"grant s3:DeleteObject on {settings.metadata_prefix}*, then remove the probe by hand")
    if gone:
        return Check("delete probe", "pass", "probe removed")
    return Check("delete probe", "fail", f"{key} is still there after delete",
                 f"remove it by hand: aws s3 rm s3://{settings.s3_bucket_name}/{key}")


def versioning_check(settings: Settings, target: Target) -> Check:
    fix = (f"turn it on to keep old versions of overwritten objects: aws s3api put-bucket-versioning "
           f"--bucket {settings.s3_bucket_name} --versioning-configuration Status=Enabled")
    facts = _facts(target)
    if facts is None:
        return _not_reported("bucket versioning", target)
    try:
        status = facts.versioning()
    except StorageError as err:
        return Check("bucket versioning", "warn", str(err), fix)
    if status == "Enabled":
        return Check("bucket versioning", "pass", "versioning is on")
    return Check("bucket versioning", "warn", f"versioning is {(status or 'off').lower()}", fix)


def encryption_check(settings: Settings, target: Target) -> Check:
    fix = (f"set S3_SSE=AES256 (or aws:kms), or: aws s3api put-bucket-encryption --bucket {settings.s3_bucket_name} "
           "--server-side-encryption-configuration "
           "'{\"Rules\":[{\"ApplyServerSideEncryptionByDefault\":{\"SSEAlgorithm\":\"AES256\"}}]}'")
    facts = _facts(target)
    try:
        algorithm = facts.default_encryption() if facts is not None else None
    except StorageError as err:
        algorithm, unreadable = None, str(err)
    else:
        unreadable = ""
    if algorithm:
        return Check("default encryption", "pass", f"default encryption is on ({algorithm})")
    if settings.s3_sse:
        return Check("default encryption", "pass",
                     f"no bucket default, but every upload asks for {settings.s3_sse} (S3_SSE)")
    return Check("default encryption", "warn", unreadable or "default encryption is off", fix)


def bucket_catalog_check(target: Target) -> Check:
    """The bucket's catalog tables, if any, open (for reading only: nothing is created here)."""
    try:
        old = " and a products.json of the first release, upgraded into them before anything is written" if (
            target.has_old_catalog()) else ""
        store = target.catalog_for_reading()
        if store is None:
            return Check("bucket catalog", "pass", f"no catalog tables in the bucket yet{old}")
        models = target.model_ids()
        vectors = f"; vectors of {', '.join(models)}" if models else ""
        return Check("bucket catalog", "pass", f"{store.count()} products already in the bucket{vectors}{old}")
    except (StorageError, CatalogError) as err:
        return Check("bucket catalog", "fail", str(err),
                     "restore the bucket's catalog tables from a backup, or migrate into another bucket")


# ------------------------------------------------------------------------------------------------- local


def local_checks(settings: Settings, source: Source) -> list[Check]:
    root = getattr(source.storage, "root", None)
    if root is not None and not root.is_dir():
        return [Check("local catalog readable", "fail", f"local folder {root} does not exist",
                      "set VPM_DATA_DIR to the folder that holds images/ and metadata/")]
    nothing = Check("local catalog readable", "warn", f"no products in {source.description}",
                    "nothing to migrate: add products first, or check VPM_DATA_DIR")
    try:
        if not source.exists():
            return [nothing]
        count = source.catalog.count()
        if not count:
            return [nothing]
        missing, without = _walk_local(source)
    except (CatalogError, StorageError, OSError) as err:
        return [Check("local catalog readable", "fail", str(err), "fix or restore the local catalog")]
    checks = [Check("local catalog readable", "pass", f"{count} products in {source.description}")]
    if missing:
        checks.append(Check("local catalog consistent", "fail",
                            f"{len(missing)} files missing or changed: {few(missing)}",
                            "restore the files, or delete those products (`python -m vpm delete ID`)"))
    else:
        checks.append(Check("local catalog consistent", "pass", "every photo and thumbnail of every product exists"))
    checks.append(_vectors_check(without))
    return checks


def _walk_local(source: Source) -> tuple[list[str], dict[str, int]]:
    """Files the products point at that are missing, and per model the photos without a vector."""
    models = {model_id: source.vectors(model_id) for model_id in source.model_ids()}
    missing: list[str] = []
    without = dict.fromkeys(models, 0)
    for batch in source.catalog.iter_batches():
        for product in batch:
            for photo in product.photos:
                problem = _photo_problem(source, photo)
                if problem:
                    missing.append(f"{product.id} ({problem})")
        keys = [photo.key for product in batch for photo in product.photos]
        for model_id, index in models.items():
            without[model_id] += len(set(keys) - index.photo_keys_with_vectors(keys))
    return missing, without


def _photo_problem(source: Source, photo) -> str | None:
    """What is wrong with a photo's files locally: missing, or not the bytes its product records."""
    try:
        info = source.storage.head(photo.key)
    except ObjectNotFound:
        return f"photo {photo.key}"
    if info.sha256 and info.sha256 != photo.sha256:
        return f"photo {photo.key} changed since it was added"
    if photo.thumbnail_key and not source.storage.exists(photo.thumbnail_key):
        return f"thumbnail {photo.thumbnail_key}"
    return None


def _vectors_check(without: dict[str, int]) -> Check:
    if not without:
        return Check("local vectors", "warn", "the local catalog has no vectors to copy",
                     "the bucket embeds every photo on its first search; run `python -m vpm index` first to "
                     "embed them here instead")
    lacking = {model: n for model, n in without.items() if n}
    if lacking:
        return Check("local vectors", "warn",
                     "; ".join(f"{n} photos have no {model} vector" for model, n in lacking.items()),
                     "the bucket embeds them on its first search; run `python -m vpm index` first to embed them here")
    return Check("local vectors", "pass",
                 f"every photo has a vector of {', '.join(without)}: they are copied, nothing is embedded again")
