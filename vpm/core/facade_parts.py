"""The parts the facade is made of, each taken on first use: the products table (an older products.json catalog
upgraded into it once a process), a vector index per model, the keypoint and package-text stores, their indexers,
and the embedding model (loaded on the first search or upload; concurrent one-photo queries batched on request).

`FacadeParts` is handed finished parts (vpm.core.wiring makes them) and opens nothing until asked: drawing a page or
answering a listing never opens a table it does not read, nor imports torch. vpm.core.matcher.Matcher builds on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from vpm.backends import engine
from vpm.core.catalog import CatalogStore
from vpm.core.config import Settings
from vpm.core.indexing import FeatureIndexer, Indexer, TextIndexer
from vpm.core.storage import Storage
from vpm.core.stores import Stores
from vpm.core.vector_index import VectorIndex

if TYPE_CHECKING:
    from vpm.models.embeddings import Embedder

log = logging.getLogger(__name__)

_upgraded: set[engine.Location] = set()  # where this process has looked for a products.json to upgrade
_upgrade_lock = threading.Lock()


class FacadeParts:
    def __init__(
        self, settings: Settings, storage: Storage, stores: Stores, embedder: Embedder | None,
        load_embedder: Callable[[], Embedder] | None,
    ):
        """`embedder` is used as given; else `load_embedder()` loads the model on first use."""
        self.settings = settings
        self.storage = storage
        self.where = engine.location(settings)
        self._stores = stores
        self._embedder = embedder
        self._load_embedder = load_embedder
        # Each store is taken from `stores` on first use: None here means not used yet in this process.
        self._catalog: CatalogStore | None = None
        self._vector_indexes: dict[str, VectorIndex] = {}
        self._features: Any = None
        self._texts: Any = None
        self._indexers: dict[str, Indexer] = {}
        self._lock = threading.RLock()
        self._model_lock = threading.Lock()
        self._batch_setting: bool | str = False
        self._query_embedder = None  # vpm.core.batching.QueryEmbedder, when concurrent queries are batched

    # ------------------------------------------------------------------------------------------ stores

    @property
    def catalog(self) -> CatalogStore:
        """The products table (an older products.json catalog is upgraded into it on first use)."""
        if self._catalog is None:
            with self._lock:
                if self._catalog is None:
                    store = self._stores.catalog
                    self._upgrade_once(store)
                    self._catalog = store
        return self._catalog

    def _upgrade_once(self, store: CatalogStore) -> None:
        from vpm.core import upgrade

        with _upgrade_lock:
            if self.where in _upgraded:
                return
            if upgrade.needs_upgrade(self.storage, self.settings.s3_metadata_key):
                upgrade.upgrade(
                    self.storage, self.settings.s3_metadata_key, self.settings.embeddings_prefix, store,
                    self._vector_index_for,
                )
            _upgraded.add(self.where)

    def _vector_index_for(self, model_id: str, dim: int | None = None) -> VectorIndex:
        with self._lock:
            index = self._vector_indexes.get(model_id)
            if index is None:
                index = self._stores.vector_index(model_id, dim, None)
                self._vector_indexes[model_id] = index
            return index

    def catalog_exists(self) -> bool:
        """Whether the products table (or a products.json still to be upgraded) is there at all."""
        return self._stores.has_catalog() or self.storage.exists(self.settings.s3_metadata_key)

    def has_vector_index(self, model_id: str) -> bool:
        return model_id in self._vector_indexes or self._stores.has_vectors(model_id)

    def vector_index(self, model_id: str) -> VectorIndex:
        """An existing model's vector index (for reports that must not load that model)."""
        return self._vector_index_for(model_id)

    @property
    def vectors(self) -> VectorIndex:
        """The active model's vector index."""
        embedder = self.embedder
        return self._vector_index_for(embedder.model_id, embedder.dim)

    @property
    def features(self) -> Any:
        """The photos' stored keypoints (one table whatever the model: they come from the pixels alone)."""
        if self._features is None:
            with self._lock:
                if self._features is None:
                    self._features = self._stores.features
        return self._features

    def has_features_table(self) -> bool:
        return self._features is not None or self._stores.has_features()

    @property
    def texts(self) -> Any:
        """The package text read on the photos (one table whatever the model: it comes from the pixels alone)."""
        if self._texts is None:
            with self._lock:
                if self._texts is None:
                    self._texts = self._stores.texts
        return self._texts

    def has_text_table(self) -> bool:
        return self._texts is not None or self._stores.has_texts()

    @property
    def package_text_default(self) -> bool:
        """Whether photos are read for their package text when added, and queries when it can help
        (VPM_PACKAGE_TEXT)."""
        return bool(self.settings.vpm_package_text)

    def stored_texts(self, photo_keys: Iterable[str]) -> dict[str, str]:
        """The package text stored for these photos ({} when none is stored, or it is switched off)."""
        if not self.package_text_default or not self.has_text_table():
            return {}
        return self.texts.texts_for(list(photo_keys))

    @property
    def rerank_default(self) -> bool:
        """Whether image searches verify their top candidates unless told otherwise (VPM_RERANK)."""
        return bool(self.settings.vpm_rerank)

    def _every_vector_index(self) -> list[VectorIndex]:
        """The vector indexes of every model that has one here (deletes and edits must reach them all)."""
        ids = set(self._stores.model_ids()) | set(self._vector_indexes)
        return [self._vector_index_for(model_id) for model_id in sorted(ids)]

    def table_summaries(self) -> list[engine.TableSummary]:
        """Each catalog table with its size, version, files and indexes (for the storage browser)."""
        summaries = []
        if self._stores.has_catalog():
            summaries.append(engine.summarize(self.catalog.table, "products and their photos"))
        for model_id in self._stores.model_ids():
            summaries.append(engine.summarize(self._vector_index_for(model_id).table, f"{model_id} photo vectors"))
        if self.has_features_table():
            summaries.append(engine.summarize(self.features.table, "photo keypoints, to verify matches"))
        if self.has_text_table():
            summaries.append(engine.summarize(self.texts.table, "package text read on the photos"))
        return summaries

    @property
    def indexer(self) -> Indexer:
        embedder = self.embedder
        with self._lock:
            indexer = self._indexers.get(embedder.model_id)
            if indexer is None:
                indexer = Indexer(self.storage, self.catalog, self.vectors, embedder)
                self._indexers[embedder.model_id] = indexer
            return indexer

    @property
    def feature_indexer(self) -> FeatureIndexer:
        return FeatureIndexer(self.storage, self.catalog, self.features)

    @property
    def text_indexer(self) -> TextIndexer:
        return TextIndexer(self.storage, self.catalog, self.texts)

    def _drop_unreadable_vectors(self) -> None:
        """A rebuild starts the active model's vector table afresh when it cannot be opened (it is derived from
        the photos, so this loses nothing); a readable table is rebuilt in place."""
        embedder = self.embedder
        index = self._stores.vector_index(embedder.model_id, embedder.dim, True)
        try:
            index.count()  # opens the table
        except engine.TableUnreadable as err:
            log.warning("rebuilding the vector table of %s from the photos: %s", embedder.model_id, err)
            index.drop()
            with self._lock:
                self._vector_indexes.pop(embedder.model_id, None)
                self._indexers.pop(embedder.model_id, None)

    # ------------------------------------------------------------------------------------------- model

    @property
    def embedder(self) -> Embedder:
        """The embedding model: the injected one, else VPM_MODEL loaded on first use (falls back offline)."""
        if self._embedder is None:
            with self._model_lock:  # not self._lock: the tables open while the model loads
                if self._embedder is None:
                    self._embedder = self._load_embedder()
        return self._embedder

    def batch_concurrent_queries(self, enabled: bool | str = True) -> None:
        """Embed one-photo and one-text queries that arrive together in one model call (vpm/core/batching.py): what a
        server answering many requests at once on torch wants. Each query still gets its own vector. "auto":
        only when the model runs on torch; on ONNX Runtime overlapping calls already run side by side, each on a
        single-threaded session (vpm.models.onnx_runtime.Network), which measured faster than sharing one call."""
        self._batch_setting = enabled

    @property
    def _batch_queries(self) -> bool:
        if self._batch_setting == "auto":
            return self.embedder.runtime == "torch"
        return bool(self._batch_setting)

    def _queries(self):
        if self._query_embedder is None or self._query_embedder.embedder is not self.embedder:
            with self._lock:
                if self._query_embedder is None or self._query_embedder.embedder is not self.embedder:
                    from vpm.core.batching import QueryEmbedder

                    self._query_embedder = QueryEmbedder(self.embedder)
        return self._query_embedder

    def _embed_one_image(self, image) -> np.ndarray:
        if self._batch_queries:
            return self._queries().image(image)
        return self.embedder.embed_images([image])[0]

    @property
    def model_loaded(self) -> bool:
        return self._embedder is not None
