"""What one table engine hands the facade: the catalog store, a vector index per model, the keypoint and package
text stores, and the few questions about its tables the facade asks before opening them (vpm.core.wiring builds it).

Every store opens its table on first use, so building a `Stores` reads nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vpm.core.catalog import CatalogStore
from vpm.core.vector_index import VectorIndex

# vector_index(model_id, dim, exists): `dim=None` opens an existing table with the dimension it was made with;
# `exists=None` asks storage only when the table does not open, True/False says it is known.
VectorIndexFactory = Callable[[str, "int | None", "bool | None"], VectorIndex]


@dataclass(frozen=True)
class Stores:
    catalog: CatalogStore
    vector_index: VectorIndexFactory
    features: Any  # the photos' keypoints (LanceFeatureStore's methods; no second implementation yet)
    texts: Any  # the package text read on the photos (LanceTextStore's methods)
    model_ids: Callable[[], list[str]]  # the models with a vector table here (opens the engine)
    # Whether each table has anything stored, from one storage listing each: nothing is opened.
    has_catalog: Callable[[], bool]
    has_vectors: Callable[[str], bool]  # (model_id)
    has_features: Callable[[], bool]
    has_texts: Callable[[], bool]
    # Let go of every handle the engine keeps of these tables (their folder is about to be removed: a scratch one).
    forget: Callable[[], None]
