"""The one facade the pages, the CLI and the API call: read, add, edit, delete, import and search products.

It composes the two contracts (a `CatalogStore` for products, a `VectorIndex` per model for their photos'
vectors) with storage (the image files) and the embedder, and owns the order of writes that keeps data safe:
a photo's image, thumbnail and vector are written before the product row that points at them, and a delete
removes the row first, then the vectors and files. A write that does not land removes exactly what it wrote.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import engine, photos, query_mix, searching
from .calibration import Calibration, CalibrationCache
from .catalog_files import CatalogFiles
from .catalog import (
    CatalogError,
    CatalogStore,
    DuplicateProduct,
    InvalidProduct,
    Page,
    Product,
    validate_product,
)
from .config import Settings
from .errors import InvalidRequest
from .images import Box, DecodedImage, crop_box, decode_image, parse_box
from .indexing import FeatureIndexer, Indexer, IndexStatus, TextIndexer
from .lance_features import PhotoFeatures  # row types; the stores themselves come from vpm.wiring
from .lance_text import PhotoText
from .results import EmbeddedQuery, ImportReport, PhotoView, ProductView, SearchResponse
from .results import Match as Match  # re-exported: older callers import it from here
from .storage import Storage, StorageError
from .stores import Stores
from .vector_index import PhotoVector, VectorIndex

if TYPE_CHECKING:
    from PIL import Image

    from .embeddings import Embedder
    from .rerank import LocalFeatures

log = logging.getLogger(__name__)

# progress(done, total, message): pages drive st.progress with it, the CLI a tqdm bar.
Progress = Callable[..., None]
BATCH_SIZE = 32
URL_TIMEOUT_S = 15.0
# On the first search of a process, photos without a vector (a new model) are embedded then and there when
# there are at most this many; more than that is a job for `python -m vpm index` (or the app's progress bar).
AUTO_EMBED_MAX = 2_000
MAX_PHOTOS_PER_CALL = 10

# Default cosine thresholds by model family and query kind (the UI shows score * 100 as %): they hide the clearly
# unrelated, not rank. CLIP's image-image cosine for two photos of one product is typically 0.8-0.95 and a
# matching text-image pair 0.25-0.35. EfficientNet-Lite0 (its first, 224 px descriptor) was measured on the 398
# product photos: at 0.55, 94.5% of queries still show a photo of the same product (median best 0.75).
_THRESHOLDS = {
    "clip": {"image": 0.75, "text": 0.22},
    "efficientnet-lite0": {"image": 0.55, "text": 0.0},
    # R-MAC cosines run higher: `python -m vpm evaluate` on the 398 sample photos puts 95% of true matches at or
    # above 0.68; 0.65 leaves room for shoppers' photos (docs/match-quality.md).
    "efficientnet-lite0-rmac384": {"image": 0.65, "text": 0.0},
    "other": {"image": 0.6, "text": 0.2},
}

_upgraded: set[engine.Location] = set()
_upgrade_lock = threading.Lock()


class DuplicatePhoto(CatalogError):
    """A photo whose bytes are already a photo of a product in the catalog (add it anyway on purpose only)."""


def _check_photo_count(images: Sequence[Any]) -> None:
    # Every photo of a call is decoded before any is written: bound how many are held at once.
    if len(images) > MAX_PHOTOS_PER_CALL:
        raise InvalidProduct(
            f"{len(images)} photos at once; add at most {MAX_PHOTOS_PER_CALL} at a time (more can be added after)"
        )


class Matcher:
    def __init__(
        self,
        settings: Settings,
        storage: Storage | None = None,
        *,
        embedder: Embedder | None = None,
        load_embedder: Callable[[], Embedder] | None = None,
        stores: Stores | None = None,
    ):
        """Made by `vpm.wiring.build_matcher`, which hands it storage, the table engine's stores and how to load
        the model. `embedder` is used as given; else `load_embedder()` loads the model on first use: drawing a
        page or answering a listing never imports torch. `Matcher(settings)` (tests, scripts) gets the parts it
        is not given from vpm.wiring, exactly as the faces do."""
        if storage is None or stores is None or (embedder is None and load_embedder is None):
            from .wiring import parts

            storage, stores, load_embedder = parts(settings, storage, stores, load_embedder)
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
        self._features_checked = False  # keypoints of photos added before they existed: filled in once per process
        self._texts: Any = None
        self._calibrations = CalibrationCache()
        self._indexers: dict[str, Indexer] = {}
        self._checked_models: set[str] = set()
        self._lock = threading.RLock()
        self._model_lock = threading.Lock()
        self._read_ahead_lock = threading.Lock()
        self._read_ahead_done = False
        self._batch_setting: bool | str = False
        self._query_embedder = None  # vpm.batching.QueryEmbedder, when concurrent queries are batched
        self._words = None  # vpm.word_search.WordSearch, made on the first words search (searching.words_index)

    # ------------------------------------------------------------------------------------------ parts

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
        from . import upgrade

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

    @property
    def files(self) -> CatalogFiles:
        """What a face may see of the stored files (listing, reading, their owners, where they live)."""
        return CatalogFiles(self.storage, lambda: self.catalog, self.where)

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

    def calibration(self) -> Calibration:
        """The active model's calibration on this catalog (vpm/calibration.py), re-read at most every 30 s."""
        return self._calibrations.get(self.storage, self.where.prefix, self.embedder.model_id)

    def score_explained(self) -> str:
        """Where the photo score's curve comes from, for people ("fitted on 398 held-out photos of this catalog")."""
        return self.calibration().score.described

    def calibrate(self, progress: Progress | None = None) -> Calibration | None:
        """Fit and keep the score's curve and the projection on this catalog's own photos (vpm/calibration.py);
        returns what was kept (None when there was nothing to fit: the model's built-in curve stays)."""
        from .calibration import calibrate

        kept = calibrate(self, progress=progress)
        self._calibrations.forget()
        return kept

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

    # ------------------------------------------------------------------------------------------ model

    @property
    def embedder(self) -> Embedder:
        """The embedding model: the injected one, else VPM_MODEL loaded on first use (falls back offline)."""
        if self._embedder is None:
            with self._model_lock:  # not self._lock: the tables open while the model loads
                if self._embedder is None:
                    self._embedder = self._load_embedder()
        return self._embedder

    def batch_concurrent_queries(self, enabled: bool | str = True) -> None:
        """Embed one-photo and one-text queries that arrive together in one model call (vpm/batching.py): what a
        server answering many requests at once on torch wants. Each query still gets its own vector. "auto":
        only when the model runs on torch; on ONNX Runtime overlapping calls already run side by side, each on a
        single-threaded session (vpm.onnx_runtime.Network), which measured faster than sharing one call."""
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
                    from .batching import QueryEmbedder

                    self._query_embedder = QueryEmbedder(self.embedder)
        return self._query_embedder

    def _embed_one_image(self, image) -> np.ndarray:
        if self._batch_queries:
            return self._queries().image(image)
        return self.embedder.embed_images([image])[0]

    @property
    def model_loaded(self) -> bool:
        return self._embedder is not None

    def default_threshold(self, kind: Literal["image", "text"] = "image") -> float:
        """The score below which results are hidden by default, for the active model: for photos the calibrated
        probability the catalog's fit chose (vpm/scoring.py); for words the text-image cosine."""
        if kind not in ("image", "text"):
            raise InvalidRequest(f"kind must be 'image' or 'text', not {kind!r}")
        if kind == "image":
            return self.calibration().score.threshold
        model_id = self.embedder.model_id.lower()
        if model_id.startswith("efficientnet-lite0"):
            family = model_id if model_id in _THRESHOLDS else "efficientnet-lite0"
        else:
            family = "clip" if "clip" in model_id else "other"
        return _THRESHOLDS[family][kind]

    # ------------------------------------------------------------------------------------------- urls

    def url_for(self, key: str | None) -> str | None:
        if not key:
            return None
        try:
            return self.storage.url(key)
        except StorageError as err:  # a URL is a convenience; never the reason a listing fails
            log.warning("no URL for %s: %s", key, err)
            return None

    def view(self, product: Product) -> ProductView:
        return ProductView(
            product, [PhotoView(p, self.url_for(p.key), self.url_for(p.thumbnail_key)) for p in product.photos]
        )

    # ---------------------------------------------------------------------------------------- reading

    def get_product(self, product_id: str) -> Product:
        return self.catalog.get(product_id)

    def page_products(
        self, *, offset: int = 0, limit: int = 50, categories: Iterable[str] | None = None,
        name_contains: str | None = None,
    ) -> Page:
        return self.catalog.page(offset=offset, limit=limit, categories=categories, name_contains=name_contains)

    def count_products(self, categories: Iterable[str] | None = None) -> int:
        if self._nothing_stored_yet():
            return 0
        return self.catalog.count(categories)

    def category_counts(self) -> dict[str, int]:
        if self._nothing_stored_yet():
            return {}
        return self.catalog.category_counts()

    def _nothing_stored_yet(self) -> bool:
        """A fresh install's counts come from one listing: opening the tables imports LanceDB (over a second),
        which a first visitor would wait for before the app's first page is drawn. Asked again on every call
        until a catalog appears (another process may create it), never once it has been opened here."""
        return self._catalog is None and not self.catalog_exists()

    def categories(self) -> list[str]:
        return self.catalog.categories()

    def iter_products(self, batch_size: int = 1000) -> Iterator[Product]:
        """Every product, read a batch at a time."""
        for batch in self.catalog.iter_batches(batch_size):
            yield from batch

    # ---------------------------------------------------------------------------------------- writing

    def decode(self, data: bytes, filename: str) -> DecodedImage:
        return decode_image(data, filename, max_bytes=self.settings.max_upload_bytes)

    def add_product(
        self, image_bytes: bytes, filename: str, *, name: str, category: str, price: float | None = None,
        description: str | None = None, product_id: str | None = None, attributes: dict[str, Any] | None = None,
        allow_duplicate: bool = False,
    ) -> Product:
        """Add a product with one photo (see `create_product`)."""
        return self.create_product(
            [(image_bytes, filename)], name=name, category=category, price=price, description=description,
            product_id=product_id, attributes=attributes, allow_duplicate=allow_duplicate,
        )

    def create_product(
        self, images: Sequence[tuple[bytes, str]], *, name: str, category: str, price: float | None = None,
        description: str | None = None, product_id: str | None = None, attributes: dict[str, Any] | None = None,
        allow_duplicate: bool = False,
    ) -> Product:
        """Add a product with one or more photos. Everything is checked before anything is written; then the
        photos' files and vectors, then the product row. On failure nothing this call wrote remains."""
        if not images:
            raise InvalidProduct("a product needs at least one photo")
        _check_photo_count(images)
        decoded = [self.decode(data, filename) for data, filename in images]
        product = validate_product(
            name=name, category=category, price=price, description=description, id=product_id, attributes=attributes,
        )
        if self.catalog.get_many([product.id]):
            raise DuplicateProduct(f"a product with id {product.id!r} already exists")
        self._refuse_duplicates(decoded, [filename for _data, filename in images], allow_duplicate)
        prepared = [self._prepare(image, product.id) for image in decoded]
        product = Product.model_validate({**product.model_dump(), "photos": [p.photo for p in prepared]})
        self._write_photos_then(product, prepared, lambda: self.catalog.add_one(product))
        log.info("added product %s (%s) with %d photo(s)", product.id, product.name, len(prepared))
        return product

    def add_photos(
        self, product_id: str, images: Sequence[tuple[bytes, str]], *, allow_duplicate: bool = False
    ) -> Product:
        """Add photos to an existing product: files and vectors first, then the product row."""
        if not images:
            raise InvalidProduct("choose at least one photo to add")
        _check_photo_count(images)
        product = self.catalog.get(product_id)
        decoded = [self.decode(data, filename) for data, filename in images]
        self._refuse_duplicates(decoded, [filename for _data, filename in images], allow_duplicate)
        prepared = [self._prepare(image, product.id) for image in decoded]
        added: list[Product] = []

        def commit() -> None:
            added.append(self.catalog.add_photos(product.id, [p.photo for p in prepared]))

        self._write_photos_then(product, prepared, commit)
        log.info("added %d photo(s) to product %s", len(prepared), product.id)
        return added[0]

    def remove_photo(self, product_id: str, key: str) -> Product:
        """The row first (so nothing points at a missing file), then the photo's vectors and files."""
        before = self.catalog.get(product_id)
        photo = before.photo(key)
        after = self.catalog.remove_photo(product_id, key)
        for index in self._every_vector_index():
            self._quietly(lambda index=index: index.delete_photos([key]), "remove the vector of", key)
        if self.has_features_table():
            self._quietly(lambda: self.features.delete_photos([key]), "remove the keypoints of", key)
        if self.has_text_table():
            self._quietly(lambda: self.texts.delete_photos([key]), "remove the package text of", key)
        photos.discard(self.storage, [k for k in (photo.key, photo.thumbnail_key) if k], "after removing its photo")
        return after

    def update_product(self, product_id: str, **fields: Any) -> Product:
        before = self.catalog.get(product_id)
        after = self.catalog.update(product_id, **fields)
        if after.category.casefold() != before.category.casefold():
            for index in self._every_vector_index():
                self._quietly(lambda index=index: index.set_category(product_id, after.category),
                              "follow the new category of", product_id)
        return after

    def delete_product(self, product_id: str) -> Product:
        """The row first (so nothing points at a missing file), then the vectors, then the files."""
        (product,) = self.catalog.delete([product_id])
        for index in self._every_vector_index():
            self._quietly(lambda index=index: index.delete_products([product_id]), "remove the vectors of", product_id)
        if self.has_features_table():
            self._quietly(lambda: self.features.delete_products([product_id]), "remove the keypoints of", product_id)
        if self.has_text_table():
            self._quietly(lambda: self.texts.delete_products([product_id]), "remove the package text of", product_id)
        photos.discard(self.storage, product.file_keys(), "of a deleted product")
        log.info("deleted product %s", product_id)
        return product

    def _prepare(self, image: DecodedImage, product_id: str) -> photos.PreparedPhoto:
        return photos.prepare(image, product_id, self.settings.s3_image_prefix, self.settings.s3_thumbnail_prefix)

    def _refuse_duplicates(self, decoded: list[DecodedImage], filenames: list[str], allow: bool) -> None:
        """A photo already in the catalog (or twice in this request) is named, not silently added again."""
        if allow:
            return
        seen: dict[str, str] = {}
        for image, filename in zip(decoded, filenames, strict=True):
            if image.sha256 in seen:
                raise DuplicatePhoto(f"{filename} and {seen[image.sha256]} are the same photo: choose it once")
            seen[image.sha256] = filename
        owners = self.catalog.owners_of(seen)
        if owners:
            sha, owner_id = next(iter(owners.items()))
            owner = self.catalog.get_many([owner_id]).get(owner_id)
            what = f"{owner.name} ({owner_id})" if owner else owner_id
            raise DuplicatePhoto(
                f"{seen[sha]} is already in the catalog: it is a photo of {what}. Add it anyway only if it really "
                "shows another product"
            )

    def _write_photos_then(self, product: Product, prepared: list[photos.PreparedPhoto], commit) -> None:
        """Files, then vectors and keypoints, then `commit` (the row). If any step fails, remove what this call
        wrote."""
        written: list[str] = []
        derived: list[str] = []
        try:
            for item in prepared:
                photos.store(self.storage, item, written)
            self.store_derived([(product, prepared)], derived)
            commit()
        except BaseException:
            self.discard_derived(derived, product.id)
            photos.discard(self.storage, written)
            raise

    def store_derived(self, batch: list[tuple[Product, list[photos.PreparedPhoto]]], written: list[str]) -> None:
        """The vectors, then the keypoints, of several products' new photos; the photo keys are appended to
        `written` as soon as the first of them is stored, so a caller cleaning up removes exactly those."""
        keys = [p.photo.key for _product, prepared in batch for p in prepared]
        written.extend(keys)
        self.store_vectors(batch)
        self.store_features(batch)
        self.store_texts(batch)

    def discard_derived(self, photo_keys: Sequence[str], whom: str) -> None:
        """Remove the vectors and keypoints of photos whose product row never landed (they are derived data)."""
        keys = list(photo_keys)
        if not keys:
            return
        self._quietly(lambda: self.vectors.delete_photos(keys), "remove the vectors of", whom)
        if self.has_features_table():
            self._quietly(lambda: self.features.delete_photos(keys), "remove the keypoints of", whom)
        if self.has_text_table():
            self._quietly(lambda: self.texts.delete_photos(keys), "remove the package text of", whom)

    def store_features(self, batch: list[tuple[Product, list[photos.PreparedPhoto]]]) -> list[str]:
        """Compute (or reuse, for bytes seen before) and store the keypoints of these photos; returns their keys.

        A photo whose keypoints cannot be computed is logged and stored without them: it is then simply not
        verified (`vpm index` tries again)."""
        from . import rerank

        every = [p for _product, prepared in batch for p in prepared]
        if not every:
            return []
        try:
            known = self.features.features_for_shas({p.photo.sha256 for p in every})
        except StorageError as err:  # derived data: an add never fails for want of keypoints
            log.warning("could not read the keypoints table (%s): these photos get theirs from `vpm index`", err)
            return []
        for item in {p.photo.sha256: p for p in every if p.photo.sha256 not in known}.values():
            try:
                known[item.photo.sha256] = rerank.extract(item.image.image)
            except Exception as err:  # noqa: BLE001 - derived data: never the reason an add fails
                log.warning("no keypoints for %s: %s", item.photo.key, err)
        entries = [
            PhotoFeatures(p.photo.key, product.id, p.photo.sha256, known[p.photo.sha256])
            for product, prepared in batch for p in prepared if p.photo.sha256 in known
        ]
        try:
            self.features.upsert(entries)
        except StorageError as err:  # derived data: the photos are searched unverified until `vpm index` runs
            log.warning("could not store the keypoints of %d photos (%s): `vpm index` fills them in", len(entries), err)
            return []
        return [e.photo_key for e in entries]

    def store_texts(self, batch: list[tuple[Product, list[photos.PreparedPhoto]]]) -> list[str]:
        """Read (or reuse, for bytes read before) and store the package text of these photos; returns their keys.
        Nothing is stored while VPM_PACKAGE_TEXT is off or OCR is unavailable (`vpm index` reads them later)."""
        from . import package_text

        every = [p for _product, prepared in batch for p in prepared]
        if not every or not self.package_text_default or not package_text.available():
            return []
        try:
            known = self.texts.texts_for_shas({p.photo.sha256 for p in every})
        except StorageError as err:  # derived data: an add never fails for want of text
            log.warning("could not read the package text table (%s): these photos get theirs from `vpm index`", err)
            return []
        for item in {p.photo.sha256: p for p in every if p.photo.sha256 not in known}.values():
            known[item.photo.sha256] = package_text.read(item.image.image)
        entries = [PhotoText(p.photo.key, product.id, p.photo.sha256, known[p.photo.sha256])
                   for product, prepared in batch for p in prepared]
        try:
            self.texts.upsert(entries)
        except StorageError as err:
            log.warning("could not store the package text of %d photos (%s): `vpm index` fills it in",
                        len(entries), err)
            return []
        return [e.photo_key for e in entries]

    def store_vectors(self, batch: list[tuple[Product, list[photos.PreparedPhoto]]]) -> list[str]:
        """Embed the photos of several products in one call (reusing a vector this model made for the same
        bytes), store them, and return the photo keys written."""
        index = self.vectors
        every = [p for _product, prepared in batch for p in prepared]
        known = index.vectors_for_shas({p.photo.sha256 for p in every})
        fresh = list({p.photo.sha256: p for p in every if p.photo.sha256 not in known}.values())
        if fresh:
            vectors = self.embedder.embed_images([p.image.image for p in fresh], batch_size=BATCH_SIZE)
            known.update({p.photo.sha256: v for p, v in zip(fresh, vectors, strict=True)})
        entries = [
            PhotoVector(p.photo.key, product.id, p.photo.sha256, product.category, known[p.photo.sha256])
            for product, prepared in batch
            for p in prepared
        ]
        index.upsert(entries)
        return [e.photo_key for e in entries]

    @staticmethod
    def _quietly(operation, what: str, whom: str) -> None:
        """Derived data: a failure is logged (the next `vpm index` tidies up), never the reason a change fails."""
        try:
            operation()
        except (StorageError, CatalogError) as err:
            log.warning("could not %s %s: %s", what, whom, err)

    # ---------------------------------------------------------------------------------------- import

    def import_path(self, path: str | Path, progress: Progress | None = None, **options: Any) -> ImportReport:
        """Import a folder of images, a .zip or a .csv (see vpm/importer.py and vpm/bulk_import.py)."""
        from .bulk_import import import_path

        report = import_path(self, path, progress, **options)
        # The catalog changed (or a killed import's rows were found already in: a re-run counts them as
        # duplicates, and the killed run never got to fit the score): so does what its scores mean.
        if report.imported or report.photos_added or report.duplicates:
            self.recalibrate(progress)
        return report

    def recalibrate(self, progress: Progress | None = None) -> None:
        """Fit the score again after the catalog changed (an import); derived data, so a failure is only logged."""
        def fitting(done: int, total: int) -> None:
            if progress is not None:
                progress(done, total, f"fitting the score on {total} held-out photos")

        try:
            current = self.calibration().score
            if current.source in ("catalog", "views") and self.catalog.photo_count() <= 1.1 * current.photos:
                return  # a small addition: the fit still speaks for this catalog (`vpm calibrate` refits on demand)
            self.calibrate(fitting)
        except (StorageError, CatalogError) as err:
            log.warning("could not fit the score on this catalog (%s): `python -m vpm calibrate` tries again", err)

    def import_upload(self, data: bytes, filename: str, progress: Progress | None = None) -> ImportReport:
        """Import an uploaded .zip or .csv (a browser hands bytes, not a path). The file keeps the person's
        name in a private temporary folder, so every message names the file they chose."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vpm-import-") as folder:
            path = Path(folder) / (Path(filename).name or "upload.zip")
            path.write_bytes(data)
            report = self.import_path(path, progress)
        return dataclasses.replace(report, source=Path(filename).name)

    def export_json(self, out) -> int:
        """Write the catalog as a products.json document (for other tools) to the text stream `out`."""
        from .legacy import write_products_json

        return write_products_json(self.iter_products(), out)

    # ---------------------------------------------------------------------------------------- search
    # Ranking, batches of photos, "Why this match?" and more like this live in vpm/searching.py; queries of several
    # photos, words beside a photo and "not this one" in vpm/query_mix.py. These methods are their doors.

    def embed_query_image(self, data: bytes, filename: str, box: Box | str | Sequence[int] | None = None) -> np.ndarray:
        """The query vector of an uploaded photo (of the region `box` of it); raises an ImageError subclass for bad
        input and InvalidBox for a region that is not inside the photo."""
        return self._embed_one_image(self._query_image(data, filename, box))

    def _query_image(self, data: bytes, filename: str, box: Box | str | Sequence[int] | None) -> Image.Image:
        image = self.decode(data, filename).image
        return image if box is None else crop_box(image, parse_box(box))

    @staticmethod
    def query_features(image: Image.Image) -> LocalFeatures | None:
        """The query photo's keypoints for verification; None (no verification) if they cannot be computed."""
        from . import rerank

        try:
            return rerank.extract(image)
        except Exception as err:  # noqa: BLE001 - verification is an extra: never the reason a search fails
            log.warning("no keypoints for the query photo (%s): searching without verification", err)
            return None

    def fetch_url_image(self, url: str) -> tuple[bytes, str]:
        """Download an image by URL through the SSRF guard; raises URLRefused / URLFetchError saying why."""
        from .urlfetch import fetch_image_bytes

        fetched = fetch_image_bytes(url, max_bytes=self.settings.max_upload_bytes, timeout=URL_TIMEOUT_S)
        return fetched.data, fetched.filename

    def text_search_unavailable(self) -> str | None:
        """Why text search cannot run with the active model, in words for people; None when it can."""
        from .model_outlook import words_unavailable

        return words_unavailable(self.settings, self.embedder)

    def embed_query_text(self, text: str) -> np.ndarray:
        """The query vector of a description; raises EmbeddingError when the active model has no text tower."""
        from .embeddings import EmbeddingError

        if not isinstance(text, str) or not text.strip():
            raise EmbeddingError("the text query is empty: describe the product, e.g. 'red running shoe'")
        unavailable = self.text_search_unavailable()
        if unavailable:
            raise EmbeddingError(unavailable)
        if self._batch_queries:
            return self._queries().text(text.strip())
        return self.embedder.embed_texts([text.strip()])[0]

    def embed_query(
        self, *, data: bytes | None = None, filename: str = "image", url: str | None = None, text: str | None = None,
        box: Box | str | Sequence[int] | None = None,
    ) -> EmbeddedQuery:
        """Embed one query (photo bytes, an image URL, or words; of a photo, only the region `box` if given) once,
        with the photo's keypoints, for ranking with `rank` later."""
        return searching.embed_query(self, data=data, filename=filename, url=url, text=text, box=box)

    def rank(
        self, vector: np.ndarray, *, top_k: int = 10, threshold: float | None = None,
        categories: Iterable[str] | None = None, query: str | None = None, took_ms: float = 0.0,
        features: LocalFeatures | None = None, rerank: bool | None = None, box: Box | None = None,
        kind: Literal["image", "text"] = "image", read_text: Callable[[], str] | None = None,
        exclude: Iterable[str] = (),
    ) -> SearchResponse:
        """Rank the catalog against a query vector (no embedding: cheap enough for a slider). No threshold
        when `threshold` is None. With the query's keypoints (`features`) the top candidates are verified, unless
        `rerank` is False (None: VPM_RERANK); `read_text` reads the query photo's package text when it can help.
        The products in `exclude` ("not this one") are left out before anything is scored."""
        return searching.rank_many(self, np.atleast_2d(vector), [query], top_k, threshold, categories, [took_ms],
                                   [features], rerank, [box], [read_text], kind, frozenset(exclude))[0]

    # Queries of several photos, a photo refined by words, "not this one": vpm/query_mix.py.

    def embed_photos(self, images: Sequence[tuple[bytes, str]],
                     box: Box | str | Sequence[int] | None = None) -> list[EmbeddedQuery]:
        """Several photos of one product embedded once each, for `mix_query` (`box`: a region of the first)."""
        return query_mix.embed_photos(self, images, box)

    def mix_query(self, photos: Sequence[EmbeddedQuery] = (), **parts: Any) -> query_mix.Mix:
        """One query of photos, words (`text`, `text_weight`) and rejected products (`not_ids`), see query_mix.make."""
        return query_mix.make(self, photos, **parts)

    def rank_mix(self, mix: query_mix.Mix, **options: Any) -> SearchResponse:
        """Rank the catalog against a mixed query (options as `rank`'s: top_k, threshold, categories, rerank)."""
        return query_mix.rank(self, mix, **options)

    def search_mixed(
        self, images: Sequence[tuple[bytes, str]] = (), *, url: str | None = None, text: str | None = None,
        text_weight: float | None = None, not_ids: Iterable[str] = (), top_k: int = 10,
        threshold: float | None = None, categories: Iterable[str] | None = None, rerank: bool | None = None,
        box: Box | str | Sequence[int] | None = None,
    ) -> SearchResponse:
        """Search with several photos as one query (and/or an image URL), refined by words, leaving out `not_ids`
        and moving away from their look; words alone (with `not_ids`) search by words."""
        if url is not None:
            images = [*images, self.fetch_url_image(url)]
        photos = self.embed_photos(images, box) if images else []
        mix = self.mix_query(photos, text=text, text_weight=text_weight, not_ids=not_ids)
        threshold = self._resolve_threshold(threshold, mix.kind)
        return self.rank_mix(mix, top_k=top_k, threshold=threshold, categories=categories, rerank=rerank)

    def query_text_reader(self, data: bytes, filename: str,
                          box: Box | str | Sequence[int] | None = None) -> Callable[[], str]:
        """Reads the query photo's package text the first time it is asked for, then remembers it."""
        return searching.query_text_reader(self, data, filename, box)

    def _ranking_stores(self, verify: bool):
        from .ranking import Stores

        return Stores(
            vectors_for=self.vectors.vectors_for_keys,
            features_for=self.features.features_for if verify and self.has_features_table() else None,
            texts_for=self.texts.texts_for if self.package_text_default and self.has_text_table() else None,
        )

    def _resolve_threshold(self, threshold: float | None, kind: str) -> float:
        value = self.default_threshold(kind) if threshold is None else float(threshold)
        if not -1.0 <= value <= 1.0 or math.isnan(value):
            raise InvalidRequest(f"threshold {threshold} is not a score between 0 and 1 (e.g. 0.8 for 80%; -1 shows "
                                 "every result)")
        return value

    def search_image(
        self, data: bytes, filename: str, *, top_k: int = 10, threshold: float | None = None,
        categories: Iterable[str] | None = None, rerank: bool | None = None,
        box: Box | str | Sequence[int] | None = None,
    ) -> SearchResponse:
        return self.search_images([(data, filename)], top_k=top_k, threshold=threshold, categories=categories,
                                  rerank=rerank, box=box)[0]

    def search_images(
        self, images: Sequence[tuple[bytes, str]], *, top_k: int = 10, threshold: float | None = None,
        categories: Iterable[str] | None = None, rerank: bool | None = None,
        box: Box | str | Sequence[int] | None = None,
    ) -> list[SearchResponse]:
        """Search with several photos at once: all are decoded first (a bad one fails the call, naming it),
        then embedded in batches by one model. `box` searches that region of every photo; `rerank` verifies the
        top candidates by keypoints (None: VPM_RERANK)."""
        return searching.search_images(self, images, top_k=top_k, threshold=threshold, categories=categories,
                                        rerank=rerank, box=box)

    def search_url(
        self, url: str, *, top_k: int = 10, threshold: float | None = None, categories: Iterable[str] | None = None,
        rerank: bool | None = None, box: Box | str | Sequence[int] | None = None,
    ) -> SearchResponse:
        data, filename = self.fetch_url_image(url)
        response = self.search_image(data, filename, top_k=top_k, threshold=threshold, categories=categories,
                                     rerank=rerank, box=box)
        return dataclasses.replace(response, query=url)

    def explain_match(
        self, data: bytes, filename: str, product_id: str, photo_key: str,
        box: Box | str | Sequence[int] | None = None,
    ) -> tuple[bytes, int]:
        """"Why this match": the query photo (its region `box`) and the product's photo side by side, with the
        keypoint matches that one geometric transform explains drawn between them (PNG), and how many there are."""
        return searching.explain_match(self, data, filename, product_id, photo_key, box)

    def similar(
        self, product_id: str, *, top_k: int = 10, threshold: float | None = None,
        categories: Iterable[str] | None = None,
    ) -> SearchResponse:
        """More like this: the catalog ranked against a product's own stored vectors, every photo of it (a product
        scores by its best photo against any of them, as the catalog ranks by best photo); the product itself is
        left out. Nothing is embedded, so it works with every model, offline included. Scores are cosines."""
        return searching.similar(self, product_id, top_k=top_k, threshold=threshold, categories=categories)

    def search_text(self, text: str, **options: Any) -> SearchResponse:
        """Search by words: the words index alone with a model that reads photos only, CLIP fused with it otherwise
        (options: top_k, threshold, categories, vector, took_ms, exclude; see searching.search_text)."""
        return searching.search_text(self, text, **options)

    @property
    def words(self):
        """The catalog's words index (vpm/word_search.py), made on first use."""
        return searching.words_index(self)

    # ----------------------------------------------------------------------------------------- index

    def index_status(self) -> IndexStatus:
        """How many catalog photos have a vector for the active model; embeds nothing."""
        return self.indexer.status()

    def index_needs_embedding(self) -> int:
        """A quick estimate of the photos the active model has no vector for (0 when the index is complete):
        photos minus vectors, two counts, cheap at any size (a stray vector of an add that never landed can hide
        a missing one until `reindex` prunes it). `index_status` walks the catalog for the exact figure."""
        return max(0, self.catalog.photo_count() - self.vectors.count())

    def keypoints_missing(self) -> int:
        """About how many photos have no stored keypoints: 0 when searches do not verify by default, and once this
        process has filled them in (a photo whose keypoints cannot be computed must not make every search try)."""
        if not self.rerank_default or self._features_checked:
            return 0
        return self.feature_indexer.missing_estimate()

    def reindex(self, rebuild: bool = False, progress: Progress | None = None) -> IndexStatus:
        """Embed the photos missing from the active model's index (every photo with rebuild=True) and drop the
        vectors of photos no longer in the catalog."""
        if rebuild:
            self._drop_unreadable_vectors()
        indexer = self.indexer
        indexer.embed_missing(progress, rebuild=rebuild)
        indexer.prune()
        self.feature_indexer.fill_missing(progress, rebuild=rebuild)
        self.feature_indexer.prune()
        if self.package_text_default:
            self.text_indexer.fill_missing(progress, rebuild=rebuild)
            self.text_indexer.prune()
        self._features_checked = True
        self._checked_models.add(self.embedder.model_id)
        return indexer.status()

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

    def _embed_missing_once(self) -> None:
        """On the first search with a model, fill in the vectors a small catalog lacks (say so in the log)."""
        model_id = self.embedder.model_id
        if model_id in self._checked_models:
            return
        self.read_ahead()  # outside the lock: its reads run side by side, on threads that take it
        with self._lock:
            if model_id in self._checked_models:
                return
            missing = self.index_needs_embedding()
            if missing and missing <= AUTO_EMBED_MAX:
                log.info("embedding the catalog photos missing from the %s index (about %d)", model_id, missing)
                try:
                    self.indexer.embed_missing()
                except (StorageError, CatalogError) as err:  # derived data: never the reason a search fails
                    log.warning("could not store the vectors of the missing photos (%s); searching what is "
                                "indexed", err)
            elif missing:
                log.warning(
                    "about %d catalog photos have no %s vector and are not searchable yet: run python -m vpm index",
                    missing, model_id,
                )
            self._fill_missing_features()
            self._checked_models.add(model_id)

    def read_ahead(self) -> None:
        """Once: open the catalog's tables and read what a search needs from them side by side, while the model
        loads (vpm/warm_start.py); a first search on a bucket then waits on one round of reads, not on each."""
        with self._read_ahead_lock:
            if not self._read_ahead_done:
                from .warm_start import read_ahead

                read_ahead(self)
                self._read_ahead_done = True

    def _fill_missing_features(self) -> None:
        """Keypoints for the photos of a small catalog added before they existed (derived data, like vectors)."""
        if not self.rerank_default or self._features_checked:
            return
        self._features_checked = True
        try:
            indexer = self.feature_indexer
            missing = indexer.missing_estimate()
            if missing and missing <= AUTO_EMBED_MAX:
                log.info("finding the keypoints of the catalog photos that have none (about %d)", missing)
                indexer.fill_missing()
            elif missing:
                log.warning("about %d catalog photos have no keypoints, so they are not verified: run python -m vpm "
                            "index", missing)
        except (StorageError, CatalogError) as err:
            log.warning("could not store the keypoints of the missing photos (%s); searching without them", err)
