"""LanceDB as the table engine: the stores it opens beside the images (in the local folder or the bucket)."""

from __future__ import annotations

from collections.abc import Callable

from vpm.backends import engine
from vpm.backends.lance_catalog import TABLE as PRODUCTS_TABLE
from vpm.backends.lance_catalog import LanceCatalogStore
from vpm.backends.lance_features import TABLE as FEATURES_TABLE
from vpm.backends.lance_features import LanceFeatureStore
from vpm.backends.lance_text import TABLE as TEXT_TABLE
from vpm.backends.lance_text import LanceTextStore
from vpm.backends.lance_vectors import LanceVectorIndex, existing_model_ids, table_name
from vpm.core.storage import Storage
from vpm.core.stores import Stores


def stores(storage: Storage, where: engine.Location, *, known: bool | None = None) -> Stores:
    """The stores of the tables at `where`. `known`: whether the tables are there, when the caller knows. None
    (the facade): a table that does not open is created when storage holds nothing of it. True (a reader of
    tables another process made: the migration's look at the bucket, a Ray worker): treated as there, with no
    listing; one that does not open is refused as unreadable (engine.open_or_create_table). False (a scratch
    folder): created on first use, with no listing."""

    def has_table(name: str) -> bool:
        return bool(storage.list(f"{where.prefix}{name}.lance/", page_size=1).objects)

    def exists(name: str) -> bool | Callable[[], bool]:
        """Asked only when the table does not open: a listing is a round trip."""
        return known if known is not None else lambda: has_table(name)

    def vector_index(model_id: str, dim: int | None = None, there: bool | None = None) -> LanceVectorIndex:
        return LanceVectorIndex(where, model_id, dim, exists=exists(table_name(model_id)) if there is None else there)

    return Stores(
        catalog=LanceCatalogStore(where, exists=exists(PRODUCTS_TABLE)),
        vector_index=vector_index,
        features=LanceFeatureStore(where, exists=exists(FEATURES_TABLE)),
        texts=LanceTextStore(where, exists=exists(TEXT_TABLE)),
        model_ids=lambda: existing_model_ids(where),
        has_catalog=lambda: has_table(PRODUCTS_TABLE),
        has_vectors=lambda model_id: has_table(table_name(model_id)),
        has_features=lambda: has_table(FEATURES_TABLE),
        has_texts=lambda: has_table(TEXT_TABLE),
        forget=lambda: engine.forget(where),
    )
