"""What a face may see of the catalog's stored files, without holding the storage or the tables itself."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vpm.backends.engine import Location
    from vpm.core.catalog import CatalogStore, Product
    from vpm.core.storage import ListPage, Storage


class CatalogFiles:
    """Listing, reading and describing the stored files: the faces' one way to the bucket or the folder."""

    def __init__(self, storage: Storage, catalog: Callable[[], CatalogStore], where: Location):
        self._storage = storage
        self._catalog = catalog  # opened only when asked: drawing a listing must not open the products table
        self._where = where

    # ------------------------------------------------------------------------------------ where they live

    @property
    def description(self) -> str:
        """Where the catalog's tables live, for people (no secrets)."""
        return self._where.description

    @property
    def storage_description(self) -> str:
        """Where the files live, for people: 'local folder /x' or 's3://bucket (region)' (no secrets)."""
        return self._storage.description

    def backend_summary(self) -> dict[str, str | None]:
        """The backend ('local' or 's3') with its bucket and region (None for a local folder): what a health
        report names, never a path or a secret."""
        return {
            "backend": self._storage.backend,
            "bucket": getattr(self._storage, "bucket", None),
            "region": getattr(self._storage, "region", None),
        }

    @property
    def web_urls(self) -> bool:
        """Whether the files' URLs open in a browser (a bucket's presigned or CDN URLs; not a local path)."""
        return self._storage.web_urls

    @property
    def set_aside_folder(self) -> str:
        """The folder a repair moves a damaged table's unreadable versions to (kept there, never deleted)."""
        from vpm.backends.table_repair import SET_ASIDE_FOLDER

        return f"{self._where.prefix}{SET_ASIDE_FOLDER}"

    # ------------------------------------------------------------------------------------------ reading

    def list_folder(self, prefix: str, *, page_size: int = 1000, token: str | None = None) -> ListPage:
        """One page of a folder: its files and its sub-folders (`prefixes`); pass `next_token` back for the next."""
        return self._storage.list(prefix, delimiter="/", page_size=page_size, token=token)

    def read(self, key: str) -> bytes:
        """A stored object's bytes; raises ObjectNotFound, InvalidKey or another StorageError saying why not."""
        return self._storage.get(key)

    # ------------------------------------------------------------------------------- what the files hold

    def owners(self, keys: Iterable[str]) -> dict[str, tuple[str, str]]:
        """(product id, name) of the product each of these keys belongs to (photo or thumbnail); keys no product
        points at are left out."""
        return self._catalog().owners_of_keys(keys)

    def products(self, product_ids: Sequence[str]) -> dict[str, Product]:
        """The products among these ids that exist, by id, read together (a report naming the owners of photos)."""
        return self._catalog().get_many(product_ids)

    def catalog_version(self) -> int:
        """Changes whenever the products change: the key of a cache built from the catalog."""
        return self._catalog().version()
