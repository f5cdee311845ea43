"""Copy the local catalog to S3 safely: check -> plan -> execute -> verify.

The source is the local folder (VPM_DATA_DIR); the target is the bucket the S3 settings name, whether or not
S3_ENABLED is on yet (switching it on is the step after a migration). Rules (DESIGN.md):
- copy, never delete: local files are only read;
- skip an object already in the bucket with the same size and SHA-256; a different object at the same key
  is a conflict, reported and left alone unless `overwrite`;
- verify every upload (head after put: size and SHA-256);
- write products.json only after every image and thumbnail it points at is verified, merged with what the
  bucket already has; then the embedding cache (derived data, so last).
A re-run after success uploads nothing; a re-run after an interruption uploads only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from .catalog import Catalog, CatalogError, Product
from .config import Settings
from .costs import CatalogSize, Estimate, Traffic, estimate, format_usd
from .health import Check, overall
from .storage import (
    EndpointNotS3,
    LocalStorage,
    NotS3Answer,
    ObjectNotFound,
    PreconditionFailed,
    S3Storage,
    Storage,
    StorageError,
    make_storage,
)

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 8
MAX_WORKERS = 32  # S3Storage's connection pool holds 32; more threads would only queue for a connection

# progress(done_files, total_files, done_bytes, total_bytes)
Progress = Callable[[int, int, int, int], None]

# Plan actions, one per file.
UPLOAD, SKIP, CONFLICT, OVERWRITE, MISSING = "upload", "skip", "conflict", "overwrite", "missing"
# Outcomes, one per file, in the report.
UPLOADED, SKIPPED, FAILED = "uploaded", "skipped", "failed"

_EXTRA_TYPES = {".heic": "image/heic", ".heif": "image/heif", ".webp": "image/webp", ".avif": "image/avif",
                ".npy": "application/octet-stream", ".npz": "application/octet-stream"}


class MigrationError(ValueError):
    """The migration cannot start; the message says what to set or fix."""


def content_type_for(key: str) -> str:
    ext = "." + key.rpartition(".")[2].lower() if "." in key else ""
    return _EXTRA_TYPES.get(ext) or mimetypes.guess_type(key)[0] or "application/octet-stream"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------- storages


def require_bucket(settings: Settings) -> str:
    if not settings.s3_bucket_name:
        raise MigrationError(
            "S3_BUCKET_NAME is not set: the migration copies the local catalog into that bucket; set "
            "S3_BUCKET_NAME (and S3_REGION) in .env or the environment"
        )
    return settings.s3_bucket_name


def target_storage(settings: Settings) -> S3Storage:
    """The bucket the S3 settings describe, even while S3_ENABLED is false: it is the migration's target."""
    require_bucket(settings)
    storage = make_storage(settings.model_copy(update={"s3_enabled": True}))
    assert isinstance(storage, S3Storage)
    return storage


def source_storage(settings: Settings) -> LocalStorage:
    return LocalStorage(settings.vpm_data_dir)


# ----------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlanItem:
    """One file: where it is, where it goes, and what the migration will do with it."""

    kind: str  # "image" | "thumbnail" | "embeddings"
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
        d = asdict(self)
        d["product_ids"] = list(self.product_ids)
        return d


@dataclass(frozen=True)
class MetadataPlan:
    """What happens to products.json in the bucket."""

    key: str
    action: str  # "create" | "merge" | "unchanged" | "blocked"
    added: tuple[str, ...] = ()  # product ids new to the bucket
    replaced: tuple[str, ...] = ()  # ids whose bucket record differs and --overwrite replaces
    unchanged: int = 0  # local products already in the bucket, identical
    kept: int = 0  # bucket products not in the local catalog, kept as they are
    conflicts: tuple[str, ...] = ()  # ids whose bucket record differs (not overwritten)
    held_back: tuple[str, ...] = ()  # ids not written because one of their files is in conflict
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class MigrationPlan:
    source: str
    target: str
    metadata_key: str
    overwrite: bool
    items: list[PlanItem]
    products: list[Product]  # the local products, pointing at their bucket keys
    metadata: MetadataPlan
    estimate: Estimate
    warnings: list[str] = field(default_factory=list)

    def with_action(self, *actions: str) -> list[PlanItem]:
        return [i for i in self.items if i.action in actions]

    @property
    def to_upload(self) -> list[PlanItem]:
        return self.with_action(UPLOAD, OVERWRITE)

    @property
    def upload_bytes(self) -> int:
        return sum(i.size for i in self.to_upload)

    @property
    def nothing_to_do(self) -> bool:
        return not self.to_upload and self.metadata.action == "unchanged"

    @property
    def blocked(self) -> bool:
        """Files the catalog points at are missing locally: products.json would point at nothing."""
        return bool(self.with_action(MISSING))

    def totals(self) -> dict[str, Any]:
        out: dict[str, Any] = {"files": len(self.items), "bytes": sum(i.size for i in self.items)}
        for action in (UPLOAD, SKIP, CONFLICT, OVERWRITE, MISSING):
            chosen = self.with_action(action)
            out[action] = {"files": len(chosen), "bytes": sum(i.size for i in chosen)}
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per file, for a table."""
        return [{"action": i.action, "kind": i.kind, "key": i.key, "size": i.size, "reason": i.reason}
                for i in self.items]

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "overwrite": self.overwrite,
            "totals": self.totals(),
            "items": [i.as_dict() for i in self.items],
            "metadata": self.metadata.as_dict(),
            "products": len(self.products),
            "estimate": self.estimate.as_dict(),
            "warnings": list(self.warnings),
        }

    def as_text(self, *, list_files: bool = True) -> str:
        out = [f"Migration plan: {self.source} -> {self.target}"]
        if list_files:
            for i in self.items:
                note = f"  ({i.reason})" if i.reason else ""
                out.append(f"  {i.action:<9} {i.key}  {_fmt_bytes(i.size)}{note}")
        t = self.totals()
        out.append("")
        for action in (UPLOAD, OVERWRITE, SKIP, CONFLICT, MISSING):
            if t[action]["files"] or action in (UPLOAD, SKIP):
                out.append(f"  {action:<9} {t[action]['files']:>7} files  {_fmt_bytes(t[action]['bytes']):>10}")
        out.append(f"  {'total':<9} {t['files']:>7} files  {_fmt_bytes(t['bytes']):>10}")
        out.append(f"  products.json: {self.metadata.action}: {self.metadata.detail}")
        for w in self.warnings:
            out.append(f"  warning: {w}")
        e = self.estimate
        out.append("")
        out.append(f"Estimated cost: migration {format_usd(e.one_time_total)} once, then "
                   f"{format_usd(e.monthly_total)} a month (`python -m vpm costs` for the breakdown)")
        return "\n".join(out)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TB"  # pragma: no cover


# ----------------------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class Merge:
    products: list[Product]
    added: tuple[str, ...]
    replaced: tuple[str, ...]
    unchanged: int
    kept: int
    conflicts: tuple[str, ...]
    held_back: tuple[str, ...]

    @property
    def changes(self) -> bool:
        return bool(self.added or self.replaced)


def _same(a: Product, b: Product) -> bool:
    return a.model_dump(mode="json") == b.model_dump(mode="json")


def merge_products(bucket: list[Product], local: list[Product], *, overwrite: bool,
                   held_back: Iterable[str] = ()) -> Merge:
    """The bucket's products.json after the migration. Pure, so a guarded write can re-run it on a fresh read.

    Bucket products whose ids are not local are kept in place; an identical one is left alone; a different
    one is a conflict unless `overwrite`. Products in `held_back` (a file of theirs is in conflict) are not
    written at all.
    """
    hold = set(held_back)
    local_by_id = {p.id: p for p in local}
    out, replaced, conflicts, unchanged, kept = [], [], [], 0, 0
    held: list[str] = []
    for p in bucket:
        mine = local_by_id.get(p.id)
        if mine is None:
            kept += 1
            out.append(p)
        elif _same(p, mine):
            unchanged += 1
            out.append(p)
        elif mine.id in hold:
            held.append(p.id)
            out.append(p)
        elif overwrite:
            replaced.append(p.id)
            out.append(mine)
        else:
            conflicts.append(p.id)
            out.append(p)
    in_bucket = {p.id for p in bucket}
    added = []
    for p in local:
        if p.id in in_bucket:
            continue
        if p.id in hold:
            held.append(p.id)
            continue
        added.append(p.id)
        out.append(p)
    return Merge(out, tuple(added), tuple(replaced), unchanged, kept, tuple(conflicts), tuple(held))


class _Unchanged(CatalogError):
    """Aborts a guarded write that would change nothing."""


# ------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ItemResult:
    kind: str
    key: str
    status: str  # uploaded | skipped | conflict | failed
    size: int
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MetadataResult:
    key: str
    status: str  # "written" | "unchanged" | "not written"
    detail: str
    added: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    kept: int = 0
    conflicts: tuple[str, ...] = ()
    held_back: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class MigrationReport:
    target: str
    results: list[ItemResult]
    metadata: MetadataResult
    bytes_uploaded: int
    duration_s: float
    verification: list[Check] = field(default_factory=list)

    def with_status(self, status: str) -> list[ItemResult]:
        return [r for r in self.results if r.status == status]

    @property
    def uploaded(self) -> list[ItemResult]:
        return self.with_status(UPLOADED)

    @property
    def skipped(self) -> list[ItemResult]:
        return self.with_status(SKIPPED)

    @property
    def conflicts(self) -> list[ItemResult]:
        return self.with_status(CONFLICT)

    @property
    def failed(self) -> list[ItemResult]:
        return self.with_status(FAILED)

    @property
    def ok(self) -> bool:
        """Nothing failed, nothing left in conflict, and the bucket's catalog is complete and verified."""
        return (not self.failed and not self.conflicts and not self.metadata.conflicts
                and not self.metadata.held_back and self.metadata.status != "not written"
                and overall(self.verification) != "fail")

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def rows(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.results]

    def as_dict(self) -> dict[str, Any]:
        def summary(items: list[ItemResult]) -> dict[str, int]:
            return {"files": len(items), "bytes": sum(i.size for i in items)}

        return {
            "ok": self.ok,
            "target": self.target,
            "uploaded": summary(self.uploaded),
            "skipped": summary(self.skipped),
            "conflicts": [r.as_dict() for r in self.conflicts],
            "failed": [r.as_dict() for r in self.failed],
            "bytes_uploaded": self.bytes_uploaded,
            "duration_s": round(self.duration_s, 3),
            "files_per_s": round(len(self.uploaded) / self.duration_s, 1) if self.duration_s > 0 else None,
            "metadata": self.metadata.as_dict(),
            "verification": [c.as_dict() for c in self.verification],
            "items": self.rows(),
        }

    def as_text(self) -> str:
        rate = f", {_fmt_bytes(self.bytes_uploaded / self.duration_s)}/s" if self.duration_s > 0 else ""
        out = [
            f"Migration to {self.target}: {'done' if self.ok else 'INCOMPLETE'}",
            f"  uploaded  {len(self.uploaded):>7} files  {_fmt_bytes(self.bytes_uploaded):>10}",
            f"  skipped   {len(self.skipped):>7} files  (already in the bucket, identical)",
            f"  conflicts {len(self.conflicts):>7} files",
            f"  failed    {len(self.failed):>7} files",
            f"  duration  {self.duration_s:,.1f} s{rate}",
            f"  products.json: {self.metadata.status}: {self.metadata.detail}",
        ]
        for r in self.conflicts:
            out.append(f"  conflict: {r.key}: {r.reason}")
        for r in self.failed:
            out.append(f"  failed: {r.key}: {r.reason}")
        for c in self.verification:
            out.append(f"  [{c.status.upper():4}] {c.name}: {c.detail}")
        if self.conflicts or self.metadata.conflicts:
            out.append("  conflicts are never overwritten: inspect them, then re-run with --overwrite to replace them")
        if self.failed:
            out.append("  re-run the same command to upload what is missing; nothing already verified is sent again")
        return "\n".join(out)


# ---------------------------------------------------------------------------------------- migration


class Migration:
    """A local catalog and the bucket it goes to. `source`/`target` are injectable for tests and the page."""

    def __init__(self, settings: Settings, *, source: Storage | None = None, target: S3Storage | None = None,
                 workers: int = DEFAULT_WORKERS):
        if not 1 <= workers <= MAX_WORKERS:
            raise MigrationError(f"workers must be between 1 and {MAX_WORKERS}, got {workers}")
        self.settings = settings
        self.source = source or source_storage(settings)
        self.target = target or target_storage(settings)
        self.workers = workers
        self.metadata_key = settings.s3_metadata_key

    # ------------------------------------------------------------------------------------- check

    def check(self) -> list[Check]:
        """Everything the migration needs, one line each, with the fix. Writes only a probe, then removes it."""
        return self._target_checks() + self._source_checks()

    def _target_checks(self) -> list[Check]:
        s, bucket = self.settings, self.settings.s3_bucket_name
        region = s.s3_region
        checks = [_credentials_check(s)]
        if checks[-1].status == "fail":
            return checks
        client = self.target.client
        mb = f"create it with `aws s3 mb s3://{bucket} --region {region}`, or fix S3_BUCKET_NAME"
        try:
            client.list_objects_v2(Bucket=bucket, MaxKeys=1)  # unlike HeadBucket, its body shows it is S3
        except _boto_errors() as err:  # every failure becomes one line with its fix
            code = _error_code(err)
            mapped = self.target._error(err)
            if isinstance(mapped, EndpointNotS3):  # a website's 404 page is not a missing bucket
                checks.append(Check("bucket exists", "fail", str(mapped), mapped.fix))
            elif code in ("404", "NoSuchBucket", "NotFound"):
                checks.append(Check("bucket exists", "fail", f"bucket not found: s3://{bucket}", mb))
            elif code in ("403", "AccessDenied", "Forbidden"):
                checks.append(Check("bucket exists", "fail", f"access denied to s3://{bucket}",
                                    "grant s3:ListBucket on the bucket to these credentials"))
            else:
                checks.append(Check("bucket exists", "fail", str(self.target._error(err)),
                                    "check S3_REGION, S3_ENDPOINT_URL, the network and the credentials"))
            return checks
        checks.append(Check("bucket exists", "pass", f"s3://{bucket} is reachable ({self.target.description})"))
        checks.append(self._region_check(client, bucket, region))
        checks += self._probe_checks()
        checks.append(self._versioning_check(client, bucket))
        checks.append(self._encryption_check(client, bucket))
        return checks

    def _region_check(self, client, bucket: str, region: str) -> Check:
        try:
            where = client.get_bucket_location(Bucket=bucket).get("LocationConstraint") or "us-east-1"
        except _boto_errors() as err:
            return Check("bucket region", "warn", f"could not read the bucket's region ({_error_code(err)})",
                         "grant s3:GetBucketLocation, or make sure S3_REGION is the bucket's region")
        where = "eu-west-1" if where == "EU" else where
        if where == region:
            return Check("bucket region", "pass", f"bucket is in {region}, as S3_REGION says")
        # S3-compatible services behind S3_ENDPOINT_URL often report a nominal region: only a hint there.
        status = "warn" if self.settings.s3_endpoint_url else "fail"
        return Check("bucket region", status, f"bucket is in {where} but S3_REGION is {region}",
                     f"set S3_REGION={where}")

    def _probe_checks(self) -> list[Check]:
        storage, prefix = self.target, self.settings.metadata_prefix
        checks = []
        try:
            storage.list(self.settings.s3_image_prefix, page_size=1)
            checks.append(Check("list objects", "pass", f"listed {self.settings.s3_image_prefix or '(root)'}"))
        except StorageError as err:
            checks.append(Check("list objects", "fail", str(err), "grant s3:ListBucket on the bucket"))
        key = f"{prefix}migrate-probe-{uuid.uuid4().hex}.txt"
        payload = b"vpm migration probe " + uuid.uuid4().hex.encode()
        try:
            storage.put(key, payload, "text/plain")
        except StorageError as err:
            checks.append(Check("write probe", "fail", str(err), f"grant s3:PutObject on {prefix or ''}*"))
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
            checks.append(Check("read probe", "fail", str(err), f"grant s3:GetObject on {prefix or ''}*"))
        finally:
            try:
                storage.delete(key)
                gone = not storage.exists(key)
                by_hand = f"remove it by hand: aws s3 rm s3://{self.settings.s3_bucket_name}/{key}"
                checks.append(Check("delete probe", "pass" if gone else "fail",
                                    "probe removed" if gone else f"{key} is still there after delete",
                                    "" if gone else by_hand))
            except StorageError as err:
                checks.append(Check("delete probe", "fail", f"{err} (probe {key} left behind)",
                                    f"grant s3:DeleteObject on {prefix or ''}*, then remove the probe by hand"))
        return checks

    @staticmethod
    def _versioning_check(client, bucket: str) -> Check:
        fix = (f"turn it on to keep old versions of overwritten objects: aws s3api put-bucket-versioning "
               f"--bucket {bucket} --versioning-configuration Status=Enabled")
        try:
            status = client.get_bucket_versioning(Bucket=bucket).get("Status")
        except _boto_errors() as err:
            return Check("bucket versioning", "warn", f"could not read versioning ({_error_code(err)})", fix)
        if status == "Enabled":
            return Check("bucket versioning", "pass", "versioning is on")
        return Check("bucket versioning", "warn", f"versioning is {(status or 'off').lower()}", fix)

    def _encryption_check(self, client, bucket: str) -> Check:
        fix = (f"set S3_SSE=AES256 (or aws:kms), or: aws s3api put-bucket-encryption --bucket {bucket} "
               "--server-side-encryption-configuration "
               "'{\"Rules\":[{\"ApplyServerSideEncryptionByDefault\":{\"SSEAlgorithm\":\"AES256\"}}]}'")
        try:
            rules = client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
            algo = rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]
            return Check("default encryption", "pass", f"default encryption is on ({algo})")
        except _boto_errors() as err:
            code = _error_code(err)
            if self.settings.s3_sse:
                return Check("default encryption", "pass",
                             f"no bucket default, but every upload asks for {self.settings.s3_sse} (S3_SSE)")
            if code == "ServerSideEncryptionConfigurationNotFoundError":
                return Check("default encryption", "warn", "default encryption is off", fix)
            return Check("default encryption", "warn", f"could not read default encryption ({code})", fix)

    def _source_checks(self) -> list[Check]:
        root = getattr(self.source, "root", None)
        if root is not None and not root.is_dir():
            return [Check("local catalog readable", "fail", f"local folder {root} does not exist",
                          "set VPM_DATA_DIR to the folder that holds images/ and metadata/")]
        try:
            products = Catalog(self.source, self.metadata_key).list()
        except (CatalogError, StorageError, OSError) as err:
            return [Check("local catalog readable", "fail", str(err), f"fix or restore {self.metadata_key}")]
        if not products:
            return [Check("local catalog readable", "warn",
                          f"no products in {self.metadata_key} of {self.source.description}",
                          "nothing to migrate: add products first, or check VPM_DATA_DIR")]
        checks = [Check("local catalog readable", "pass", f"{len(products)} products in {self.source.description}")]
        missing = []
        for p in products:
            for what, key in (("image", p.image_key), ("thumbnail", p.thumbnail_key)):
                if key and not self.source.exists(key):
                    missing.append(f"{p.id} ({what} {key})")
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            checks.append(Check("local catalog consistent", "fail", f"{len(missing)} files missing: {shown}",
                                "restore the files, or delete those products (`python -m vpm delete ID`)"))
        else:
            checks.append(Check("local catalog consistent", "pass", "every product's image and thumbnail exists"))
        return checks

    # -------------------------------------------------------------------------------------- plan

    def plan(self, *, overwrite: bool = False, progress: Progress | None = None) -> MigrationPlan:
        """Compare the local catalog with the bucket, file by file. Reads only; writes nothing anywhere."""
        half = half_set_keys(self.settings)
        if half:
            raise MigrationError(f"{half}: set both keys, or neither (to use AWS_PROFILE or an IAM role)")
        local = Catalog(self.source, self.metadata_key).load()
        products, wanted, blocked, warnings = self._map_keys(local.products)
        wanted += self._embedding_files()
        remote = self._remote_sizes({key for _, _, key, _ in wanted})

        def decide(entry: tuple[str, str, str, tuple[str, ...]]) -> PlanItem:
            kind, source_key, key, ids = entry
            try:
                data = self.source.get(source_key)
            except (ObjectNotFound, OSError) as err:
                why = f"{source_key} is missing locally" if isinstance(err, ObjectNotFound) else (
                    f"cannot read {source_key}: {err}")
                return PlanItem(kind, source_key, key, 0, None, MISSING, why, product_ids=ids)
            size, sha = len(data), sha256_hex(data)
            if key not in remote:
                return PlanItem(kind, source_key, key, size, sha, UPLOAD, "new", product_ids=ids)
            remote_size, etag = remote[key]
            if remote_size == size:
                remote_sha, etag = self._remote_sha256(key)
                if remote_sha == sha:
                    return PlanItem(kind, source_key, key, size, sha, SKIP, "identical object already there",
                                    remote_size, etag, ids)
                why = "same size, different SHA-256"
            else:
                why = f"bucket has {remote_size:,} bytes, local has {size:,}"
            action = OVERWRITE if overwrite else CONFLICT
            return PlanItem(kind, source_key, key, size, sha, action, why, remote_size, etag, ids)

        seen = [0, 0]

        def hashed(_entry, item: PlanItem) -> None:
            seen[0] += 1
            seen[1] += item.size
            if progress:
                progress(seen[0], len(wanted), seen[1], 0)  # total bytes are known only once all are read

        items = blocked + self._run_all(decide, wanted, on_done=hashed)
        metadata, bucket_products = self._plan_metadata(items, products, overwrite)
        size = CatalogSize.from_objects(
            [(i.key, i.size) for i in items] + [(self.metadata_key, _json_size(bucket_products))],
            self.settings.s3_image_prefix, self.settings.s3_thumbnail_prefix,
        )
        return MigrationPlan(self.source.description, self.target.description, self.metadata_key, overwrite,
                             items, products, metadata, estimate(size, Traffic()), warnings)

    def _map_keys(self, products: list[Product]):
        """Point every product at its bucket key; list the files to copy as (kind, source, target, ids).

        Two different files that would land on one key cannot both be migrated: the second becomes a
        MISSING item, which keeps products.json from being written until the catalog is fixed.
        """
        s = self.settings
        files: dict[str, tuple[str, str, list[str]]] = {}  # target -> (kind, source, product ids)
        blocked: list[PlanItem] = []
        warnings: list[str] = []
        mapped = []
        for p in products:
            update = {}
            for kind, attr, prefix in (("image", "image_key", s.s3_image_prefix),
                                       ("thumbnail", "thumbnail_key", s.s3_thumbnail_prefix)):
                key = getattr(p, attr)
                if not key:
                    continue
                # A catalog made with other prefixes keeps its file names unique by product id.
                target = key if key.startswith(prefix) else f"{prefix}{p.id}{_suffix(key)}"
                if target in files and files[target][1] != key:
                    why = f"{key} and {files[target][1]} would both land on {target}: rename one"
                    blocked.append(PlanItem(kind, key, target, 0, None, MISSING, why, product_ids=(p.id,)))
                    warnings.append(why)
                    continue
                files.setdefault(target, (kind, key, []))[2].append(p.id)
                update[attr] = target
            mapped.append(p.model_copy(update=update) if update else p)
        entries = [(kind, src, target, tuple(ids)) for target, (kind, src, ids) in files.items()]
        return mapped, entries, blocked, warnings

    def _embedding_files(self) -> list[tuple[str, str, str, tuple[str, ...]]]:
        prefix = self.settings.embeddings_prefix
        return [("embeddings", o.key, o.key, ()) for o in self.source.iter_objects(prefix)]

    def _remote_sizes(self, keys: set[str]) -> dict[str, tuple[int, str]]:
        """(size, etag) of the bucket objects at `keys`, from listings (1 request per 1,000 keys)."""
        if not keys:
            return {}
        prefixes = sorted({k.rpartition("/")[0] + "/" if "/" in k else "" for k in keys})
        # List each folder once; a folder inside another listed folder is already covered.
        roots = [p for p in prefixes if not any(p != q and p.startswith(q) for q in prefixes)]
        found: dict[str, tuple[int, str]] = {}
        for prefix in roots:
            for o in self.target.iter_objects(prefix):
                if o.key in keys:
                    found[o.key] = (o.size, o.etag)
        return found

    def _remote_sha256(self, key: str) -> tuple[str, str]:
        """SHA-256 of a bucket object: its stored checksum, our metadata, or (last resort) a download."""
        info = self.target.head(key)
        sha = info.sha256 or info.metadata.get("sha256")
        if not sha:
            sha = sha256_hex(self.target.get(key))
        return sha, info.etag

    def _plan_metadata(self, items: list[PlanItem], products: list[Product], overwrite: bool):
        key = self.metadata_key
        bucket = Catalog(self.target, key).load()  # a corrupt bucket catalog stops here, untouched
        held = {pid for i in items if i.action == CONFLICT for pid in i.product_ids}
        merge = merge_products(bucket.products, products, overwrite=overwrite, held_back=held)
        missing = [i for i in items if i.action == MISSING and i.kind != "embeddings"]
        counts = (f"{len(merge.added)} new, {len(merge.replaced)} replaced, {merge.unchanged} unchanged, "
                  f"{merge.kept} bucket-only kept")
        extra = ""
        if merge.conflicts:
            extra += f"; {len(merge.conflicts)} differ in the bucket and are left as they are: {_few(merge.conflicts)}"
        if merge.held_back:
            extra += f"; {len(merge.held_back)} held back (a file is in conflict): {_few(merge.held_back)}"
        if missing:
            action, detail = "blocked", (f"will not be written: {len(missing)} files the catalog points at are "
                                         f"missing locally ({_few([i.source_key for i in missing])})")
        elif not merge.changes:
            action, detail = "unchanged", "the bucket already has every local product" + extra
            if not products:
                action, detail = "unchanged", "the local catalog has no products"
        else:
            action = "create" if bucket.etag is None else "merge"
            detail = counts + extra
        plan = MetadataPlan(key, action, merge.added, merge.replaced, merge.unchanged, merge.kept,
                            merge.conflicts, merge.held_back, detail)
        return plan, merge.products

    # ----------------------------------------------------------------------------------- execute

    def execute(self, plan: MigrationPlan, *, progress: Progress | None = None) -> MigrationReport:
        """Upload and verify images and thumbnails, then write products.json, then the embedding cache.

        An interruption (KeyboardInterrupt from `progress`, Ctrl-C) cancels what has not started and re-raises;
        objects already in the bucket are complete (a PUT is atomic), and a re-run skips them.
        """
        started = time.monotonic()
        files = [i for i in plan.items if i.kind != "embeddings"]
        cache = [i for i in plan.items if i.kind == "embeddings"]
        todo = [i for i in plan.items if i.action in (UPLOAD, OVERWRITE)]
        counter = _Counter(len(todo), sum(i.size for i in todo), progress)
        counter.report()

        results = self._transfer(files, counter)
        if any(r.status == FAILED for r in results):
            failed = sum(r.status == FAILED for r in results)
            metadata = MetadataResult(self.metadata_key, "not written",
                                      f"{failed} images or thumbnails did not arrive: the bucket's catalog was "
                                      "left as it was, so it never points at a missing object")
        else:
            held = {pid for i, r in zip(files, results) if r.status == CONFLICT for pid in i.product_ids}
            metadata = self._write_metadata(plan, held)
        results += self._transfer(cache, counter)
        report = MigrationReport(plan.target, results, metadata, counter.bytes_done, 0.0)
        report.verification = self.verify(plan, report)
        report.duration_s = time.monotonic() - started
        return report

    def _transfer(self, items: list[PlanItem], counter: "_Counter") -> list[ItemResult]:
        def one(item: PlanItem) -> ItemResult:
            if item.action == SKIP:
                return ItemResult(item.kind, item.key, SKIPPED, item.size, item.reason)
            if item.action == CONFLICT:
                return ItemResult(item.kind, item.key, CONFLICT, item.size, item.reason)
            if item.action == MISSING:
                return ItemResult(item.kind, item.key, FAILED, 0, item.reason)
            return self._upload(item)

        def done(item: PlanItem, result: ItemResult) -> None:
            if item.action in (UPLOAD, OVERWRITE):
                counter.add(result.size if result.status == UPLOADED else 0, item.size)

        return self._run_all(one, items, on_done=done)

    def _upload(self, item: PlanItem) -> ItemResult:
        """Put one file (guarded against a change since the plan), then check what S3 stored."""
        try:
            data = self.source.get(item.source_key)
        except (ObjectNotFound, OSError) as err:
            return ItemResult(item.kind, item.key, FAILED, 0, f"cannot read {item.source_key}: {err}")
        if sha256_hex(data) != item.sha256:
            return ItemResult(item.kind, item.key, FAILED, 0,
                              f"{item.source_key} changed since the plan was made; re-run the migration")
        try:
            try:
                self.target.put(
                    item.key, data, content_type_for(item.key), metadata={"sha256": item.sha256},
                    if_none_match=item.action == UPLOAD,
                    if_match=item.remote_etag if item.action == OVERWRITE else None,
                )
            except PreconditionFailed:
                # Someone (or a retried request of ours) wrote this key since the plan: look before judging.
                remote_sha, _ = self._remote_sha256(item.key)
                if remote_sha == item.sha256:
                    return ItemResult(item.kind, item.key, SKIPPED, item.size, "identical object appeared meanwhile")
                if item.action == UPLOAD:
                    return ItemResult(item.kind, item.key, CONFLICT, item.size,
                                      "a different object appeared at this key since the plan")
                return ItemResult(item.kind, item.key, FAILED, 0,
                                  "the bucket object changed since the plan; re-run to see the new conflict")
            info = self.target.head(item.key)
        except StorageError as err:
            return ItemResult(item.kind, item.key, FAILED, 0, str(err))
        stored_sha = info.sha256 or info.metadata.get("sha256")
        if info.size != item.size or stored_sha != item.sha256:
            return ItemResult(item.kind, item.key, FAILED, 0,
                              f"verification failed: bucket has {info.size} bytes, SHA-256 {stored_sha}; "
                              f"expected {item.size} bytes, {item.sha256}")
        return ItemResult(item.kind, item.key, UPLOADED, item.size,
                          "replaced the bucket's different object" if item.action == OVERWRITE else "")

    def _write_metadata(self, plan: MigrationPlan, held: set[str]) -> MetadataResult:
        key = self.metadata_key
        if plan.blocked:  # defensive: missing files already failed above
            return MetadataResult(key, "not written", plan.metadata.detail)
        outcome: list[Merge] = []

        def change(current: list[Product]) -> list[Product]:
            merge = merge_products(current, plan.products, overwrite=plan.overwrite, held_back=held)
            outcome[:] = [merge]
            if not merge.changes:
                raise _Unchanged("nothing to change")
            return merge.products

        try:
            Catalog(self.target, key).mutate(change)
            status = "written"
        except _Unchanged:
            status = "unchanged"
        except (CatalogError, StorageError) as err:
            return MetadataResult(key, "not written", f"could not write {key}: {err}")
        m = outcome[0]
        detail = (f"{len(m.added)} added, {len(m.replaced)} replaced, {m.unchanged} unchanged, "
                  f"{m.kept} bucket-only kept")
        if m.conflicts:
            detail += f"; {len(m.conflicts)} differ in the bucket and were left as they are: {_few(m.conflicts)}"
        if m.held_back:
            detail += f"; {len(m.held_back)} held back because a file is in conflict: {_few(m.held_back)}"
        return MetadataResult(key, status, detail, m.added, m.replaced, m.kept, m.conflicts, m.held_back)

    # ------------------------------------------------------------------------------------ verify

    def verify(self, plan: MigrationPlan, report: MigrationReport | None = None) -> list[Check]:
        """After the run: every file the plan covers is in the bucket with its size, and the bucket's
        products.json points only at objects that exist. One listing, no downloads."""
        keys = {i.key for i in plan.items}
        catalog = Catalog(self.target, self.metadata_key)
        try:
            products = catalog.list()
        except (CatalogError, StorageError) as err:
            return [Check("bucket catalog readable", "fail", str(err), f"fix or restore {self.metadata_key}")]
        referenced = {k for p in products for k in (p.image_key, p.thumbnail_key) if k}
        sizes = self._remote_sizes(keys | referenced)
        migrated = [i for i in plan.items if i.action != MISSING]
        wrong = [i.key for i in migrated if sizes.get(i.key, (None,))[0] != i.size
                 and not (report and any(r.key == i.key and r.status == CONFLICT for r in report.results))]
        checks = []
        if wrong:
            checks.append(Check("files in bucket", "fail", f"{len(wrong)} files missing or different: {_few(wrong)}",
                                "re-run the migration"))
        else:
            checks.append(Check("files in bucket", "pass", f"{len(migrated)} files present with the expected size"))
        dangling = sorted(referenced - set(sizes))
        if dangling:
            checks.append(Check("bucket catalog complete", "fail",
                                f"products.json points at {len(dangling)} missing objects: {_few(dangling)}",
                                "re-run the migration, or restore those objects"))
        else:
            checks.append(Check("bucket catalog complete", "pass",
                                f"{len(products)} products, every image they point at exists"))
        return checks

    # ----------------------------------------------------------------------------------- helpers

    def _run_all(self, fn, items: list, *, on_done=None) -> list:
        """fn over items on the worker pool, results in input order. on_done runs on this thread, so an
        exception there (a progress callback's KeyboardInterrupt) cancels the work not started and propagates."""
        results: list[Any] = [None] * len(items)
        if not items:
            return results
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="vpm-migrate")
        futures: dict[Future, int] = {}
        try:
            futures = {pool.submit(fn, item): n for n, item in enumerate(items)}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    n = futures[fut]
                    results[n] = fut.result()
                    if on_done:
                        on_done(items[n], results[n])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results


class _Counter:
    """Files and bytes done, reported to the caller's progress callback."""

    def __init__(self, files: int, total_bytes: int, progress: Progress | None):
        self.files_total, self.bytes_total, self.progress = files, total_bytes, progress
        self.files_done = self.bytes_done = 0
        self.bytes_seen = 0

    def add(self, uploaded_bytes: int, planned_bytes: int) -> None:
        self.files_done += 1
        self.bytes_done += uploaded_bytes
        self.bytes_seen += planned_bytes
        self.report()

    def report(self) -> None:
        if self.progress:
            self.progress(self.files_done, self.files_total, self.bytes_seen, self.bytes_total)


# --------------------------------------------------------------------------------------------- helpers


def _credentials_check(settings: Settings) -> Check:
    """Credentials resolve the way S3Storage will resolve them (explicit settings, env, profile, role)."""
    import boto3
    from botocore.exceptions import BotoCoreError

    def secret(v):
        return v.get_secret_value() if v is not None else None

    fix = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where an IAM role is attached"
    half = half_set_keys(settings)
    if half:
        return Check("credentials", "fail", half, "set both keys, or neither (to use AWS_PROFILE or an IAM role)")
    try:
        session = boto3.session.Session(
            aws_access_key_id=secret(settings.aws_access_key_id),
            aws_secret_access_key=secret(settings.aws_secret_access_key),
            aws_session_token=secret(settings.aws_session_token),
            profile_name=settings.aws_profile,
            region_name=settings.s3_region,
        )
        creds = session.get_credentials()
    except BotoCoreError as err:
        return Check("credentials", "fail", f"AWS credentials could not be loaded: {err}", fix)
    if creds is None:
        return Check("credentials", "fail", "no AWS credentials found", fix)
    return Check("credentials", "pass", f"credentials found ({creds.method})")


def half_set_keys(settings: Settings) -> str | None:
    """boto3 signs with a half-set key pair and fails deep inside; say which half is missing instead."""
    key_id, secret = settings.aws_access_key_id, settings.aws_secret_access_key
    if (key_id is None) != (secret is None):
        given, missing = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if secret is None else (
            "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
        return f"{given} is set but {missing} is not"
    return None


def _boto_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError, NotS3Answer)


def _error_code(err: Exception) -> str:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return type(err).__name__


def _suffix(key: str) -> str:
    name = key.rpartition("/")[2]
    return "." + name.rpartition(".")[2] if "." in name else ""


def _few(values: Iterable[str], n: int = 5) -> str:
    values = list(values)
    return ", ".join(values[:n]) + (f" and {len(values) - n} more" if len(values) > n else "")


def _json_size(products: list[Product]) -> int:
    return len(json.dumps([p.model_dump(mode="json") for p in products], indent=2).encode())


__all__ = [
    "DEFAULT_WORKERS",
    "ItemResult",
    "MetadataPlan",
    "MetadataResult",
    "Migration",
    "MigrationError",
    "MigrationPlan",
    "MigrationReport",
    "PlanItem",
    "Progress",
    "content_type_for",
    "merge_products",
    "source_storage",
    "target_storage",
]
