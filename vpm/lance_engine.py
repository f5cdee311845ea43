"""LanceDB as the table engine: the stores it opens beside the images (in the local folder or the bucket)."""

from __future__ import annotations

from collections.abc import Callable

from . import engine
from .lance_catalog import TABLE as PRODUCTS_TABLE
from .lance_catalog import LanceCatalogStore
from .lance_features import TABLE as FEATURES_TABLE
from .lance_features import LanceFeatureStore
from .lance_text import TABLE as TEXT_TABLE
from .lance_text import LanceTextStore
from .lance_vectors import LanceVectorIndex, existing_model_ids, table_name
from .storage import Storage
from .stores import Stores


def stores(storage: Storage, where: engine.Location) -> Stores:
    def has_table(name: str) -> bool:
        return bool(storage.list(f"{where.prefix}{name}.lance/", page_size=1).objects)

    def exists(name: str) -> Callable[[], bool]:
        """Asked only when the table does not open: a listing is a round trip."""
        return lambda: has_table(name)

    def vector_index(model_id: str, dim: int | None = None, known: bool | None = None) -> LanceVectorIndex:
        return LanceVectorIndex(where, model_id, dim, exists=exists(table_name(model_id)) if known is None else known)

    return Stores(
        catalog=LanceCatalogStore(where, exists=exists(PRODUCTS_TABLE)),
        vector_index=vector_index,
        features=LanceFeatureStore(where, exists=exists(FEATURES_TABLE)),
        texts=LanceTextStore(where, exists=exists(TEXT_TABLE)),
        model_ids=lambda: existing_model_ids(where),
        has_catalog=exists(PRODUCTS_TABLE),
        has_vectors=lambda model_id: has_table(table_name(model_id)),
        has_features=exists(FEATURES_TABLE),
        has_texts=exists(TEXT_TABLE),
    )
