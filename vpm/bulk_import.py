"""Bulk import: the images a source describes (vpm/importer.py) become products, a batch at a time.

Rows that share an `id` become one product with several photos (a CSV of a shop's gallery photos imports as
one product per item). Each batch: read and decode, skip photos already in the catalog (same bytes) and report
them, then files, then vectors (one embedding call), then the product rows in one commit; photos for products
that exist already are added to them. An import cut off half-way keeps every batch it committed, and running it
again skips what is already there and adds the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import photos
from .catalog import CatalogError, Product, validate_product
from .images import DecodedImage, ImageError
from .importer import ImportIssue, ImportItem, ImportLimits, ItemUnreadable, open_source
from .results import ImportReport

if TYPE_CHECKING:
    from .matcher import Matcher

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
    matcher: Matcher, path: str | Path, progress: Progress | None = None, *, batch_size: int = BATCH_PHOTOS,
    limits: ImportLimits | None = None,
) -> ImportReport:
    progress = progress or _no_progress
    limits = limits or ImportLimits(max_file_bytes=matcher.settings.max_upload_bytes)
    with open_source(path, limits=limits, fetch=lambda url: matcher.fetch_url_image(url)[0]) as source:
        report = ImportReport(skipped=list(source.skipped), failed=list(source.failed), source=str(path))
        groups = group_items(source.items)
        total = len(source.items)
        progress(0, total, f"importing {total} images from {Path(path).name}")
        done = 0
        batch: list[_Group] = []
        for group in groups:
            batch.append(group)
            if sum(len(g.items) for g in batch) >= batch_size:
                done += _import_batch(matcher, batch, report)
                progress(done, total, f"{done}/{total}: {report.summary()}")
                batch = []
        if batch:
            done += _import_batch(matcher, batch, report)
            progress(done, total, f"{done}/{total}: {report.summary()}")
    log.info("import of %s: %s", path, report.summary())
    return report


def _import_batch(matcher: Matcher, groups: list[_Group], report: ImportReport) -> int:
    ready = _prepare(matcher, groups, report)
    if ready:
        _commit(matcher, ready, report)
    return sum(len(g.items) for g in groups)


def _prepare(matcher: Matcher, groups: list[_Group], report: ImportReport) -> list[_Ready]:
    """Read, decode and validate; skip photos already in the catalog; writes nothing."""
    decoded: list[tuple[_Group, list[tuple[ImportItem, DecodedImage]]]] = []
    for group in groups:
        images = []
        for item in group.items:
            try:
                images.append((item, matcher.decode(item.read(), item.filename)))
            except (ItemUnreadable, ImageError) as err:
                report.failed.append(ImportIssue(item.source, str(err)))
        if images:
            decoded.append((group, images))
    shas = {image.sha256 for _g, images in decoded for _i, image in images}
    owners = matcher.catalog.owners_of(shas)
    existing = matcher.catalog.get_many([g.product_id for g, _images in decoded if g.product_id])
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
                report.failed.extend(ImportIssue(item.source, str(err)) for item, _image in images)
                continue
        fresh = []
        for item, image in images:
            owner = owners.get(image.sha256)
            if owner is not None:
                report.skipped.append(
                    ImportIssue(item.source, f"duplicate: the same image is already product {owner}", duplicate=True)
                )
                continue
            owners[image.sha256] = product.id
            fresh.append((item, image))
        if not fresh:
            continue
        prepared = [
            photos.prepare(image, product.id, matcher.settings.s3_image_prefix, matcher.settings.s3_thumbnail_prefix)
            for _item, image in fresh
        ]
        ready.append(_Ready(product, prepared, [item.source for item, _image in fresh], product.id in existing))
    return ready


def _commit(matcher: Matcher, ready: list[_Ready], report: ImportReport) -> None:
    """Files, then vectors, then one commit of the new rows; photos of existing products are added after."""
    written: list[str] = []
    vector_keys: list[str] = []
    committed: set[str] = set()  # photo and thumbnail keys a committed row points at: never removed
    try:
        for entry in ready:
            for item in entry.prepared:
                photos.store(matcher.storage, item, written)
        vector_keys += matcher.store_vectors([(entry.product, entry.prepared) for entry in ready])
        new = [
            Product.model_validate({**e.product.model_dump(), "photos": [p.photo for p in e.prepared]})
            for e in ready if not e.existing
        ]
        taken = set(matcher.catalog.add(new))
        created = [p for p in new if p.id not in taken]
        committed.update(key for product in created for key in product.file_keys())
        report.imported.extend(created)
        for entry in ready:
            if entry.product.id in taken:  # someone added that id since we looked: report, remove our files
                report.skipped.extend(
                    ImportIssue(source, f"duplicate: a product with id {entry.product.id} exists", duplicate=True)
                    for source in entry.sources
                )
                _undo(matcher, entry)
        for entry in [e for e in ready if e.existing]:
            try:
                matcher.catalog.add_photos(entry.product.id, [p.photo for p in entry.prepared])
            except CatalogError as err:
                report.failed.extend(ImportIssue(source, str(err)) for source in entry.sources)
                _undo(matcher, entry)
                continue
            committed.update(k for item in entry.prepared for k in (item.photo.key, item.photo.thumbnail_key) if k)
            report.photos_added += len(entry.prepared)
    except BaseException:
        leftover_vectors = [k for k in vector_keys if k not in committed]
        if leftover_vectors:
            matcher._quietly(
                lambda: matcher.vectors.delete_photos(leftover_vectors), "remove the vectors of", "an import batch"
            )
        photos.discard(matcher.storage, [k for k in written if k not in committed])
        raise


def _undo(matcher: Matcher, entry: _Ready) -> None:
    """Remove the vectors and files written for a group whose row did not land (they are this import's own)."""
    matcher._quietly(lambda: matcher.vectors.delete_photos([p.photo.key for p in entry.prepared]),
                     "remove the vectors of", entry.product.id)
    photos.discard(matcher.storage, [k for item in entry.prepared for k in (item.photo.key, item.photo.thumbnail_key) if k])
