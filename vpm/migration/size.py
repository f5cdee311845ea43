"""The catalog's size as the cost estimate counts it: one measure for the migration plan, `vpm costs` and the
Migration page, so the numbers a person sees before and after a preview are the same numbers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ..config import Settings
from ..costs import CatalogSize
from ..storage import LocalStorage, Storage


def catalog_size(storage: Storage, settings: Settings) -> CatalogSize:
    """Every object in `storage` (no downloads): originals under the image prefix, thumbnails under the
    thumbnail prefix, everything else (the catalog tables) as metadata, since all of it is billed. A local
    folder is measured from file sizes alone: its listing would read and hash every file."""
    objects = (_file_sizes(storage.root) if isinstance(storage, LocalStorage)
               else ((info.key, info.size) for info in storage.iter_objects()))
    return CatalogSize.from_objects(objects, settings.s3_image_prefix, settings.s3_thumbnail_prefix)


def _file_sizes(root: Path) -> Iterator[tuple[str, int]]:
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath) == root:
            dirs[:] = [d for d in dirs if d != ".vpm"]  # the folder's own bookkeeping (locks, temp files)
        for name in files:
            path = Path(dirpath) / name
            try:
                size = path.stat().st_size
            except OSError:  # removed while walking
                continue
            yield path.relative_to(root).as_posix(), size
