"""The catalog's size as the cost estimate counts it: one measure for the migration plan, `vpm costs` and the
Migration page, so the numbers a person sees before and after a preview are the same numbers."""

from __future__ import annotations

from ..config import Settings
from ..costs import CatalogSize
from ..storage import Storage


def catalog_size(storage: Storage, settings: Settings) -> CatalogSize:
    """Every object in `storage` (sizes only: no downloads, no digests): originals under the image prefix,
    thumbnails under the thumbnail prefix, everything else (the catalog tables) as metadata, since all of it is
    billed."""
    return CatalogSize.from_objects(storage.iter_sizes(), settings.s3_image_prefix, settings.s3_thumbnail_prefix)
