"""The catalog's size as the cost estimate counts it: one measure for the migration plan, `vpm costs` and the
Migration page, so the numbers a person sees before and after a preview are the same numbers."""

from __future__ import annotations

from vpm.core.config import Settings
from vpm.core.costs import CatalogSize
from vpm.core.storage import Storage
from vpm.migration.target import source_storage


def catalog_size(storage: Storage, settings: Settings) -> CatalogSize:
    """Every object in `storage` (sizes only: no downloads, no digests): originals under the image prefix,
    thumbnails under the thumbnail prefix, everything else (the catalog tables) as metadata, since all of it is
    billed."""
    return CatalogSize.from_objects(storage.iter_sizes(), settings.s3_image_prefix, settings.s3_thumbnail_prefix)


def local_catalog_size(settings: Settings) -> CatalogSize:
    """The local folder's catalog (VPM_DATA_DIR) as a migration would measure it, whether or not S3 is on."""
    return catalog_size(source_storage(settings), settings)
