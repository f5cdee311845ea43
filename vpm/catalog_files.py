"""What a face may see of the catalog's stored files, without holding the storage or the tables itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .catalog import CatalogStore
    from .engine import Location
    from .storage import Storage


class CatalogFiles:
    """Listing, reading and describing the stored files: the faces' one way to the bucket or the folder."""

    def __init__(self, storage: Storage, catalog: Callable[[], CatalogStore], where: Location):
        self._storage = storage
        self._catalog = catalog  # opened only when asked: drawing a listing must not open the products table
        self._where = where

    @property
    def description(self) -> str:
        """Where the catalog lives, for people (no secrets)."""
        return self._where.description

    @property
    def web_urls(self) -> bool:
        """Whether the files' URLs open in a browser (a bucket's presigned or CDN URLs; not a local path)."""
        return self._storage.web_urls
