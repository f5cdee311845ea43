"""Does storage agree with the catalog? Missing files, orphan files, photos without a vector.
(Plus the few helpers the storage browser needs to show a listing page: breadcrumbs, rows, preview kind.)

Read-only, except `delete_orphans`, which removes only files that are still orphans when it runs: it asks the
catalog afresh and never deletes a key any product references. Files written in the last few minutes are kept
by default, because an add writes the image before the product row that points at it, so a brand-new file is
briefly unreferenced while its product is being added.

The vector part never loads a model: it asks the vector index of the running model (or of the one that will run,
vpm.models.model_outlook) which photos it holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from vpm.core.catalog import CatalogCorrupt, CatalogError
from vpm.core.errors import VpmError
from vpm.core.presentation import format_bytes
from vpm.core.storage import ObjectInfo, ObjectNotFound, StorageError

if TYPE_CHECKING:  # the matcher imports this module; annotations only
    from vpm.core.matcher import Matcher

log = logging.getLogger(__name__)

# A file younger than this may belong to a product that is being added right now (image before metadata).
RECENT_SECONDS = 10 * 60
LIST_PAGE = 1000  # keys a listing page asks for

FileKind = Literal["image", "thumbnail"]
VectorState = Literal["ok", "missing", "unknown"]


class ConsistencyError(VpmError, ValueError):
    """The report or a cleanup cannot be done safely; the message says why and what to do."""


@dataclass(frozen=True)
class MissingFile:
    """A product points at a file that is not in storage."""

    product_id: str
    product_name: str
    kind: FileKind
    key: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Orphan:
    """A file under the image or thumbnail prefix that no product references."""

    key: str
    kind: FileKind
    size: int
    last_modified: datetime
    recent: bool  # written in the last RECENT_SECONDS: maybe a product being added right now

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "last_modified": self.last_modified.isoformat()}


@dataclass(frozen=True)
class VectorCoverage:
    """Which products have a cached vector for the configured model."""

    state: VectorState
    model_id: str | None
    detail: str
    missing_product_ids: list[str] = field(default_factory=list)  # the first few
    missing_photos: int = 0  # photos without one

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ConsistencyReport:
    storage: str  # where it was checked, for people
    products: int
    image_files: int
    thumbnail_files: int
    missing: list[MissingFile]
    orphans: list[Orphan]
    vectors: VectorCoverage
    catalog_exists: bool = True
    # With a `limit` (a health check): whether every product was read and every file listed. When not, the
    # figures are for what was looked at: `products` read of `products_in_catalog`, files listed up to the limit.
    complete: bool = True
    products_in_catalog: int | None = None

    @property
    def ok(self) -> bool:
        return not self.missing and not self.orphans and self.vectors.state != "missing"

    @property
    def orphan_keys(self) -> set[str]:
        return {o.key for o in self.orphans}

    @property
    def orphan_bytes(self) -> int:
        return sum(o.size for o in self.orphans)

    def summary(self) -> str:
        parts = [
            f"{self.products} products, {self.image_files} images, {self.thumbnail_files} thumbnails in {self.storage}",
            f"{len(self.missing)} missing file(s)",
            f"{len(self.orphans)} orphan file(s) ({format_bytes(self.orphan_bytes)})",
        ]
        if self.vectors.state == "unknown":
            parts.append("vectors: unknown")
        else:
            parts.append(f"{len(self.vectors.missing_product_ids)} product(s) without a vector")
        return "; ".join(parts)

    def missing_rows(self) -> list[dict[str, Any]]:
        return [{"product": m.product_id, "name": m.product_name, "file": m.kind, "key": m.key} for m in self.missing]

    def orphan_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "key": o.key,
                "kind": o.kind,
                "size": format_bytes(o.size),
                "last modified": _utc(o.last_modified).strftime("%Y-%m-%d %H:%M UTC"),
                "recent": o.recent,
            }
            for o in self.orphans
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "storage": self.storage,
            "catalog_exists": self.catalog_exists,
            "products": self.products,
            "image_files": self.image_files,
            "thumbnail_files": self.thumbnail_files,
            "missing": [m.as_dict() for m in self.missing],
            "orphans": [o.as_dict() for o in self.orphans],
            "vectors": self.vectors.as_dict(),
            "complete": self.complete,
        }


@dataclass(frozen=True)
class DeleteResult:
    deleted: list[str]
    kept: list[tuple[str, str]]  # (key, why it was not deleted)

    def summary(self) -> str:
        text = f"deleted {len(self.deleted)} orphan file(s)"
        if self.kept:
            text += f"; kept {len(self.kept)}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "kept": [{"key": k, "reason": r} for k, r in self.kept]}


# ------------------------------------------------------------------------------------------------ report


def _file_prefixes(settings) -> dict[FileKind, str]:
    return {"image": settings.s3_image_prefix, "thumbnail": settings.s3_thumbnail_prefix}


def _is_metadata(key: str, settings) -> bool:
    # With an empty image prefix the listing would include products.json and the embedding cache: never files.
    return key == settings.s3_metadata_key or key.startswith(settings.embeddings_prefix) or (
        bool(settings.metadata_prefix) and key.startswith(settings.metadata_prefix)
    )


def _kind_of(key: str, settings) -> FileKind | None:
    """Which kind of product file a key is, by its prefix; the longer prefix wins when one contains the other."""
    if _is_metadata(key, settings):
        return None
    matches = [(len(p), kind) for kind, p in _file_prefixes(settings).items() if key.startswith(p)]
    return max(matches)[1] if matches else None


def _is_recent(info: ObjectInfo, now: datetime, min_age_seconds: float) -> bool:
    return now - _utc(info.last_modified) < timedelta(seconds=min_age_seconds)


def vector_coverage(matcher: Matcher) -> VectorCoverage:
    """Which catalog photos have no vector, for the running model when it is loaded, else for the configured
    one (without loading it). Anything it cannot answer is "unknown", never a guess."""
    try:
        return _vector_coverage(matcher)
    except Exception as err:  # noqa: BLE001 - derived data: a broken index must not break the report
        log.warning("vector coverage unavailable: %s", err)
        return VectorCoverage("unknown", None, f"could not read the vector index: {err}")


def _vector_coverage(matcher: Matcher) -> VectorCoverage:
    from vpm.core.indexing import coverage
    from vpm.models.model_outlook import for_matcher

    # The running model decides, or the one that will run on the first search (it may be the offline fallback):
    # never the configured model when it cannot load here.
    model_id = for_matcher(matcher).model_id
    note = "" if matcher.model_loaded else " (the model that will run; it is not loaded yet)"
    if not matcher.has_vector_index(model_id):
        products = matcher.count_products()
        if not products:
            return VectorCoverage("ok", model_id, f"no products yet, so nothing to embed for {model_id}")
        first = [p.id for p in matcher.catalog.page(limit=50, newest_first=False).items]
        return VectorCoverage(
            "missing", model_id, f"none of the {products} products has a vector for {model_id}{note} yet; they are "
            "embedded by the first search, or by python -m vpm index", first, matcher.catalog.photo_count(),
        )
    found = coverage(matcher.catalog, matcher.vector_index(model_id))
    if not found.missing:
        return VectorCoverage("ok", model_id, f"all {found.photos} photos have a vector for {model_id}{note}")
    return VectorCoverage(
        "missing", model_id,
        f"{found.missing} of {found.photos} photos have no vector for {model_id}{note}; they are embedded by the "
        "next search, or by python -m vpm index",
        list(found.missing_ids), found.missing,
    )


def keypoint_coverage(matcher: Matcher, limit: int | None = None) -> VectorCoverage:
    """Which catalog photos have no stored keypoints (searches verify their top candidates with them, VPM_RERANK).
    `limit` bounds the walk to that many products (a health check) and the detail says so. Never computes any;
    anything it cannot answer is "unknown"."""
    try:
        return _keypoint_coverage(matcher, limit)
    except Exception as err:  # noqa: BLE001 - derived data: a broken table must not break the report
        log.warning("keypoint coverage unavailable: %s", err)
        return VectorCoverage("unknown", KEYPOINTS, f"could not read the keypoints table: {err}")


KEYPOINTS = "keypoints"
_FILL = "they are found by python -m vpm index (or vpm check --repair)"


def _keypoint_coverage(matcher: Matcher, limit: int | None) -> VectorCoverage:
    if not matcher.rerank_default:
        return VectorCoverage("ok", KEYPOINTS, "not used: searches do not verify by keypoints (VPM_RERANK=false)")
    if not matcher.catalog_exists():  # asked first: reading the catalog would create its empty table
        return VectorCoverage("ok", KEYPOINTS, "no photos yet, so no keypoints to find")
    table = matcher.has_features_table()
    products = photos = missing = 0
    missing_ids: list[str] = []
    complete = True
    for batch in matcher.catalog.iter_batches():
        if limit is not None and products >= limit:
            complete = False
            break
        if limit is not None and len(batch) > limit - products:
            batch, complete = batch[: limit - products], False
        keys = [p.key for product in batch for p in product.photos]
        have = matcher.features.photo_keys_with_features(keys) if table and keys else set()
        products += len(batch)
        photos += len(keys)
        for product in batch:
            lacking = sum(1 for p in product.photos if p.key not in have)
            missing += lacking
            if lacking and len(missing_ids) < MISSING_SHOWN:
                missing_ids.append(product.id)
    looked = "" if complete else f" (of the first {products:,} products looked at)"
    if not photos:
        return VectorCoverage("ok", KEYPOINTS, "no photos yet, so no keypoints to find")
    if not missing:
        return VectorCoverage("ok", KEYPOINTS, f"all {photos:,} photos have keypoints to verify matches{looked}")
    return VectorCoverage(
        "missing", KEYPOINTS,
        f"{missing:,} of {photos:,} photos have no keypoints, so their matches are not verified{looked}; {_FILL}",
        missing_ids, missing,
    )


MISSING_SHOWN = 50  # product ids named by a coverage


def consistency_report(
    matcher: Matcher, *, vectors: bool = True, now: datetime | None = None, min_age_seconds: float = RECENT_SECONDS,
    limit: int | None = None,
) -> ConsistencyReport:
    """Compare the catalog with the files in storage: photos whose file is missing, files no photo uses.

    The catalog is read a batch at a time and the listing a page at a time; only the listed keys are held
    (about 100 bytes a file). Raises the catalog's own clear error when it cannot be read.

    `limit` bounds the work (a health check at any catalog size): at most that many files of each folder are
    listed and that many products read, and the report says `complete=False` when that left some out. Listings
    come sorted by key, so a photo's file is called missing only when the listing of its folder reached past its
    key; a file not looked at is never reported either way.
    """
    settings, storage = matcher.settings, matcher.storage
    now = now or datetime.now(UTC)
    catalog_exists = matcher.catalog_exists()
    listed: dict[str, FileKind] = {}
    listed_up_to: dict[str, str] = {}  # folder -> the last key listed, for folders whose listing the limit cut off
    orphans: list[Orphan] = []
    for folder, page, cut_at in _file_pages(storage, settings, limit):
        if cut_at is not None:
            listed_up_to[folder] = cut_at
        used = matcher.catalog.referenced([info.key for _kind, info in page]) if catalog_exists and page else set()
        for kind, info in page:
            listed[info.key] = kind
            if info.key not in used:
                orphans.append(Orphan(info.key, kind, info.size, info.last_modified,
                                      _is_recent(info, now, min_age_seconds)))
    folders = _folders(settings)
    missing: list[MissingFile] = []
    products = 0
    all_products = True
    for product in matcher.iter_products() if catalog_exists else ():
        if limit is not None and products >= limit:
            all_products = False
            break
        products += 1
        for photo in product.photos:
            for kind, key in (("image", photo.key), ("thumbnail", photo.thumbnail_key)):
                if not key or key in listed:
                    continue
                folder = next((f for f in folders if key.startswith(f)), None)
                if folder is None:  # outside both folders: asked for by itself
                    if not _exists_outside_listing(storage, key, settings):
                        missing.append(MissingFile(product.id, product.name, kind, key))
                elif folder not in listed_up_to or key <= listed_up_to[folder]:  # the listing got past it
                    missing.append(MissingFile(product.id, product.name, kind, key))
    coverage = vector_coverage(matcher) if vectors else VectorCoverage("unknown", None, "not checked")
    return ConsistencyReport(
        storage=storage.description,
        products=products,
        image_files=sum(1 for kind in listed.values() if kind == "image"),
        thumbnail_files=sum(1 for kind in listed.values() if kind == "thumbnail"),
        missing=missing,
        orphans=sorted(orphans, key=lambda o: o.key),
        vectors=coverage,
        catalog_exists=catalog_exists,
        complete=all_products and not listed_up_to,
        products_in_catalog=products if all_products else matcher.count_products(),
    )


def _folders(settings) -> list[str]:
    """The image and thumbnail prefixes to list: each folder once (one inside the other is already covered)."""
    prefixes = set(_file_prefixes(settings).values())
    return sorted(p for p in prefixes if not any(q != p and p.startswith(q) for q in prefixes))


def _file_pages(
    storage, settings, limit: int | None = None
) -> Iterator[tuple[str, list[tuple[FileKind, ObjectInfo]], str | None]]:
    """(folder, its image and thumbnail files on one listing page, the page's last key when `limit` stops the
    listing of that folder after this page, else None), a listing page at a time."""
    for prefix in _folders(settings):
        token = None
        seen = 0
        while True:
            # Bounded: one page of what is left (a local listing walks the folder for each page; S3 pages by 1000).
            size = LIST_PAGE if limit is None else max(1, limit - seen)
            page = storage.list(prefix, page_size=size, token=token)
            seen += len(page.objects)
            files = [(kind, info) for info in page.objects if (kind := _kind_of(info.key, settings)) is not None]
            cut = bool(page.next_token) and limit is not None and seen >= limit
            if files or cut:
                yield prefix, files, (page.objects[-1].key if cut and page.objects else None)
            if cut or not page.next_token:
                break
            token = page.next_token


def _exists_outside_listing(storage, key: str, settings) -> bool:
    """A product key outside both prefixes (e.g. written before the prefixes changed) is not in the listing."""
    if _kind_of(key, settings) is not None:
        return False
    try:
        return storage.exists(key)
    except StorageError:
        return False


# ----------------------------------------------------------------------------------------------- browsing
# What the storage browser shows for one listing page; here so the page only lays it out.

PreviewKind = Literal["image", "json", "text", "none"]
_TEXT_TYPES = ("text/", "application/xml", "application/x-yaml")


def breadcrumbs(prefix: str) -> list[tuple[str, str]]:
    """('All files', '') then one (folder name, prefix) per level: 'images/a/' -> All files > images > a."""
    crumbs = [("All files", "")]
    path = ""
    for part in [p for p in prefix.split("/") if p]:
        path += part + "/"
        crumbs.append((part, path))
    return crumbs


def parent_prefix(prefix: str) -> str:
    head = prefix.rstrip("/").rpartition("/")[0]
    return head + "/" if head else ""


def content_type_of(info: ObjectInfo) -> str:
    """The stored content type, else a guess from the extension (S3 listings do not carry it)."""
    import mimetypes

    return info.content_type or mimetypes.guess_type(info.key)[0] or "application/octet-stream"


def object_rows(objects: Iterable[ObjectInfo], prefix: str = "") -> list[dict[str, Any]]:
    """Rows for the listing table: name relative to the folder, human size, UTC time, content type."""
    return [
        {
            "name": o.key[len(prefix):] if o.key.startswith(prefix) else o.key,
            "size": format_bytes(o.size),
            "bytes": o.size,
            "last modified": _utc(o.last_modified).strftime("%Y-%m-%d %H:%M UTC"),
            "content type": content_type_of(o),
        }
        for o in objects
    ]


def preview_kind(info: ObjectInfo) -> PreviewKind:
    ctype = content_type_of(info)
    if ctype.startswith("image/"):
        return "image"
    if ctype == "application/json" or info.key.endswith(".json"):
        return "json"
    if ctype.startswith(_TEXT_TYPES):
        return "text"
    return "none"


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# ------------------------------------------------------------------------------------------------ cleanup


def delete_orphans(
    matcher: Matcher,
    keys: Iterable[str],
    expected: set[str],
    *,
    min_age_seconds: float = RECENT_SECONDS,
    now: datetime | None = None,
) -> DeleteResult:
    """Delete those of `keys` that the user saw as orphans (`expected`) and that are still orphans now.

    Re-reads the catalog first and keeps any key a product references, any key outside the image and
    thumbnail prefixes, and (unless min_age_seconds=0) any file written in the last min_age_seconds.
    """
    settings, storage = matcher.settings, matcher.storage
    if not matcher.catalog_exists():
        # No catalog at all: every image would look orphaned. More likely the catalog is lost than empty.
        raise ConsistencyError(
            f"nothing was deleted: the catalog tables do not exist in {storage.description}, so every file looks "
            "orphaned; restore the catalog first (or delete files by hand if it really is empty)"
        )
    wanted = list(dict.fromkeys(keys))
    try:
        referenced = matcher.catalog.referenced(wanted)  # read afresh: a product added since the report counts
    except CatalogCorrupt as err:
        raise ConsistencyError(f"nothing was deleted: {err}") from None
    except (CatalogError, StorageError) as err:
        raise ConsistencyError(f"nothing was deleted: could not read the catalog ({err})") from None
    now = now or datetime.now(UTC)
    deleted: list[str] = []
    kept: list[tuple[str, str]] = []
    for key in wanted:  # de-duplicated, order kept
        if key not in expected:
            kept.append((key, "not in the orphan report that was confirmed"))
        elif _kind_of(key, settings) is None:
            kept.append((key, "not under the image or thumbnail prefix"))
        elif key in referenced:
            kept.append((key, "a product references it now"))
        else:
            try:
                info = storage.head(key)
            except ObjectNotFound:
                kept.append((key, "already gone"))
                continue
            except StorageError as err:
                kept.append((key, f"could not check it: {err}"))
                continue
            if min_age_seconds and _is_recent(info, now, min_age_seconds):
                kept.append((key, f"written in the last {min_age_seconds / 60:g} minutes; a product may be being added"))
                continue
            try:
                storage.delete(key)
            except StorageError as err:
                kept.append((key, f"delete failed: {err}"))
                continue
            deleted.append(key)
            log.info("deleted orphan %s from %s", key, storage.description)
    return DeleteResult(deleted, kept)


__all__ = [
    "RECENT_SECONDS",
    "ConsistencyError",
    "ConsistencyReport",
    "DeleteResult",
    "MissingFile",
    "Orphan",
    "VectorCoverage",
    "breadcrumbs",
    "consistency_report",
    "content_type_of",
    "delete_orphans",
    "keypoint_coverage",
    "object_rows",
    "parent_prefix",
    "preview_kind",
    "vector_coverage",
]
