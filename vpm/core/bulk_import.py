"""Bulk import: the images a source describes (vpm/core/importer.py) become products, a batch at a time.

Rows that share an `id` become one product with several photos (a CSV of a shop's gallery photos imports as
one product per item). Each batch: read and decode, skip photos already in the catalog (same bytes) and report
them, then files, then vectors (one embedding call), then the product rows in one commit; photos for products
that exist already are added to them. An import cut off half-way keeps every batch it committed, and running it
again skips what is already there and adds the rest.

Reading, decoding and thumbnailing the next batch run on a background thread (vpm/core/pipeline.py, bounded to a few
batches) while this batch is embedded and written; everything that looks at the catalog (duplicates, existing
products) stays in order on the caller's thread, so a batch sees what the one before it committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vpm.core import photos
from vpm.core.catalog import CatalogError, CatalogStore, Photo, Product, validate_product
from vpm.core.config import Settings
from vpm.core.derived_data import DerivedStores, discard_derived, store_derived
from vpm.core.images import DecodedImage, ImageError, make_thumbnail
from vpm.core.importer import ImportIssue, ImportItem, ImportLimits, ItemUnreadable, open_source
from vpm.core.pipeline import prefetch
from vpm.core.results import ImportReport
from vpm.core.storage import Storage

log = logging.getLogger(__name__)

Progress = Callable[..., None]
BATCH_PHOTOS = 32


@dataclass
class _Group:
    """The rows of one product: the first row's fields make the product, every row adds a photo."""

    product_id: str | None
    items: list[ImportItem] = field(default_factory=list)


@dataclass
class _Ready:
    """A group after decoding: the photos to write, for a new product or one that exists already."""

    product: Product
    prepared: list[photos.PreparedPhoto]
    sources: list[str]
    existing: bool


class ImportTarget(DerivedStores, Protocol):
    """What an import writes through (the facade is one): the catalog, storage for the files, the derived stores,
    and how a photo is decoded and an image link fetched there (the same limits as an upload)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def storage(self) -> Storage: ...

    @property
    def catalog(self) -> CatalogStore: ...

    def decode(self, data: bytes, filename: str) -> DecodedImage: ...

    def fetch_url_image(self, url: str) -> tuple[bytes, str]: ...


def _no_progress(done: int, total: int, message: str = "") -> None:
    pass


def group_items(items: list[ImportItem]) -> list[_Group]:
    """Rows with the same id form one product (in the order first seen); rows without an id are one each."""
    groups: list[_Group] = []
    by_id: dict[str, _Group] = {}
    for item in items:
        if item.product_id is None:
            groups.append(_Group(None, [item]))
            continue
        group = by_id.get(item.product_id)
        if group is None:
            group = by_id[item.product_id] = _Group(item.product_id)
            groups.append(group)
        group.items.append(item)
    return groups


def import_path(
    target: ImportTarget, path: str | Path, progress: Progress | None = None, *, batch_size: int = BATCH_PHOTOS,
    limits: ImportLimits | None = None,
) -> ImportReport:
    progress = progress or _no_progress
    limits = limits or ImportLimits(max_file_bytes=target.settings.max_upload_bytes)
    with open_source(path, limits=limits, fetch=lambda url: target.fetch_url_image(url)[0]) as source:
        report = ImportReport(skipped=list(source.skipped), failed=list(source.failed), source=str(path))
        groups = group_items(source.items)
        total = len(source.items)
        progress(0, total, f"importing {total} images from {Path(path).name}")
        done = 0
        for batch in prefetch(_batches(groups, batch_size), lambda groups: _decode(target, groups), name="vpm-import"):
            done += _import_batch(target, batch, report)
            progress(done, total, f"{done}/{total}: {report.summary()}")
    log.info("import of %s: %s", path, report.summary())
    return report


def _batches(groups: list[_Group], batch_size: int):
    """Whole groups, at least `batch_size` photos a batch (the last one may hold fewer)."""
    batch: list[_Group] = []
    for group in groups:
        batch.append(group)
        if sum(len(g.items) for g in batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class _Decoded:
    """A batch after the background stage: each group's decoded photos (with their thumbnails), the failures."""

    count: int
    groups: list[tuple[_Group, list[tuple[ImportItem, DecodedImage, bytes]]]]
    failed: list[ImportIssue]


def _decode(target: ImportTarget, groups: list[_Group]) -> _Decoded:
    """Read, decode and thumbnail a batch; looks at nothing in the catalog and writes nothing."""
    decoded, failed = [], []
    for group in groups:
        images = []
        for item in group.items:
            try:
                image = target.decode(item.read(), item.filename)
                images.append((item, image, make_thumbnail(image.image)))
            except (ItemUnreadable, ImageError) as err:
                failed.append(ImportIssue(item.source, str(err)))
        if images:
            decoded.append((group, images))
    return _Decoded(sum(len(g.items) for g in groups), decoded, failed)


def _import_batch(target: ImportTarget, batch: _Decoded, report: ImportReport) -> int:
    report.failed.extend(batch.failed)
    ready = _prepare(target, batch, report)
    if ready:
        _commit(target, ready, report)
    return batch.count


def _prepare(target: ImportTarget, batch: _Decoded, report: ImportReport) -> list[_Ready]:
    """Validate; skip photos already in the catalog; writes nothing."""
    decoded = batch.groups
    shas = {image.sha256 for _g, images in decoded for _i, image, _t in images}
    owners = target.catalog.owners_of(shas)
    existing = target.catalog.get_many([g.product_id for g, _images in decoded if g.product_id])
    ready: list[_Ready] = []
    for group, images in decoded:
        product = existing.get(group.product_id) if group.product_id else None
        if product is None:
            first = images[0][0]
            try:
                product = validate_product(
                    name=first.name, category=first.category, price=first.price, description=first.description,
                    id=first.product_id, attributes=first.attributes or None,
                )
            except CatalogError as err:
                report.failed.extend(ImportIssue(item.source, str(err)) for item, _image, _t in images)
                continue
        fresh = []
        for item, image, thumbnail in images:
            owner = owners.get(image.sha256)
            if owner is not None:
                report.skipped.append(
                    ImportIssue(item.source, f"duplicate: the same image is already product {owner}", duplicate=True)
                )
                continue
            owners[image.sha256] = product.id
            fresh.append((item, image, thumbnail))
        if not fresh:
            continue
        prepared = [
            photos.prepare(image, product.id, target.settings.s3_image_prefix, target.settings.s3_thumbnail_prefix,
                           thumbnail)
            for _item, image, thumbnail in fresh
        ]
        ready.append(_Ready(product, prepared, [item.source for item, _i, _t in fresh], product.id in existing))
    return ready


def _commit(target: ImportTarget, ready: list[_Ready], report: ImportReport) -> None:
    """Files, then vectors (one embedding call) and keypoints, then the rows (`commit_rows`)."""
    written: list[str] = []
    derived_keys: list[str] = []  # photos whose vectors or keypoints this batch may have written
    try:
        for entry in ready:
            for item in entry.prepared:
                photos.store(target.storage, item, written)
        store_derived(target, [(entry.product, entry.prepared) for entry in ready], derived_keys)
    except BaseException:
        _discard(target, written, derived_keys)
        raise
    landings = [Landing(e.product, [p.photo for p in e.prepared], e.sources, e.existing) for e in ready]
    commit_rows(target, landings, report, written, derived_keys)


@dataclass
class Landing:
    """A group whose photo files and vectors (and keypoints) are written: what its product row needs."""

    product: Product
    photos: list[Photo]
    sources: list[str]
    existing: bool


def commit_rows(
    target: ImportTarget, landings: list[Landing], report: ImportReport, written: list[str], derived_keys: list[str]
) -> None:
    """One commit of the new rows (insert-if-absent); photos of existing products are added after. `written` and
    `derived_keys` are the files and the photos whose vectors/keypoints this batch wrote: what no committed row
    points at is removed when a row does not land or anything fails (the cluster import commits through here
    too)."""
    committed: set[str] = set()  # photo and thumbnail keys a committed row points at: never removed
    try:
        new = [
            Product.model_validate({**e.product.model_dump(), "photos": e.photos}) for e in landings if not e.existing
        ]
        taken = set(target.catalog.add(new))
        created = [p for p in new if p.id not in taken]
        committed.update(key for product in created for key in product.file_keys())
        report.imported.extend(created)
        for entry in landings:
            if entry.product.id in taken:  # someone added that id since we looked: report, remove our files
                report.skipped.extend(
                    ImportIssue(source, f"duplicate: a product with id {entry.product.id} exists", duplicate=True)
                    for source in entry.sources
                )
                _undo(target, entry)
        for entry in [e for e in landings if e.existing]:
            try:
                target.catalog.add_photos(entry.product.id, entry.photos)
            except CatalogError as err:
                report.failed.extend(ImportIssue(source, str(err)) for source in entry.sources)
                _undo(target, entry)
                continue
            committed.update(k for photo in entry.photos for k in (photo.key, photo.thumbnail_key) if k)
            report.photos_added += len(entry.photos)
    except BaseException:
        _discard(target, [k for k in written if k not in committed], [k for k in derived_keys if k not in committed])
        raise


def _discard(target: ImportTarget, files: list[str], derived_keys: list[str]) -> None:
    discard_derived(target, derived_keys, "an import batch")
    photos.discard(target.storage, files)


def _undo(target: ImportTarget, entry: Landing) -> None:
    """Remove the vectors, keypoints and files written for a group whose row did not land (this import's own)."""
    discard_derived(target, [p.key for p in entry.photos], entry.product.id)
    photos.discard(target.storage, [k for p in entry.photos for k in (p.key, p.thumbnail_key) if k])
