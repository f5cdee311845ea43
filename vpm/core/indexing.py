"""Keeping the vector index in step with the catalog: what is missing, embedding it, pruning what is left over.

A photo's vector is written before the product row that points at it, so an add never leaves a product without
a vector. Vectors go missing only when the model changes (a new model id starts an empty table), when a catalog
is upgraded or migrated without them, or when another process with another model adds products. They are found
by walking the catalog a batch at a time and asked for in bulk, so memory stays bounded whatever its size.
Embedding runs as a bounded pipeline (vpm/core/pipeline.py): the next batch's photos are read, decoded and resized on
a background thread while the model embeds this one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vpm.core.catalog import CatalogStore, Photo, Product
from vpm.core.images import ImageError, decode_image
from vpm.core.pipeline import chunked, embedder_stages, prefetch
from vpm.core.storage import Storage, StorageError
from vpm.core.vector_index import PhotoVector, VectorIndex

log = logging.getLogger(__name__)

Progress = Callable[..., None]  # progress(done, total, message="")
EMBED_BATCH = 32
MISSING_IDS_SHOWN = 50


@dataclass(frozen=True)
class IndexStatus:
    model_id: str
    model: str  # display name
    products: int
    photos: int
    vectors: int  # catalog photos with a vector for this model
    missing: int  # catalog photos without one
    missing_ids: list[str] = field(default_factory=list)  # products with a photo missing (the first few)
    problems: list[str] = field(default_factory=list)  # stored images that could not be embedded
    fallback_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.missing == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id, "model": self.model, "products": self.products, "photos": self.photos,
            "vectors": self.vectors, "missing": self.missing, "ok": self.ok, "missing_ids": list(self.missing_ids),
            "problems": list(self.problems), "fallback_reason": self.fallback_reason,
        }


def _no_progress(done: int, total: int, message: str = "") -> None:
    pass


@dataclass(frozen=True)
class Coverage:
    products: int
    photos: int
    missing: int  # photos without a vector
    missing_ids: list[str]  # products with a photo missing (the first MISSING_IDS_SHOWN)


def coverage(catalog: CatalogStore, vectors: VectorIndex) -> Coverage:
    """Which catalog photos have a vector in `vectors`: the catalog is walked a batch at a time."""
    products = photos = missing = 0
    missing_ids: list[str] = []
    for batch in catalog.iter_batches():
        products += len(batch)
        keys = [p.key for product in batch for p in product.photos]
        photos += len(keys)
        have = vectors.photo_keys_with_vectors(keys)
        for product in batch:
            lacking = sum(1 for p in product.photos if p.key not in have)
            missing += lacking
            if lacking and len(missing_ids) < MISSING_IDS_SHOWN:
                missing_ids.append(product.id)
    return Coverage(products, photos, missing, missing_ids)


@dataclass
class _Loaded:
    """One batch after the pipeline's background stage."""

    count: int
    entries: list[PhotoVector] = field(default_factory=list)  # reused vectors, ready to store
    waiting: list[tuple[Product, Photo]] = field(default_factory=list)  # to embed, in `prepared`'s order
    prepared: object = None
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (product id, photo key, why)


class Indexer:
    """Embeds the catalog's stored photos into one model's vector index."""

    def __init__(self, storage: Storage, catalog: CatalogStore, vectors: VectorIndex, embedder):
        self.storage = storage
        self.catalog = catalog
        self.vectors = vectors
        self.embedder = embedder
        self.unembeddable: dict[str, str] = {}  # photo key -> why its stored image could not be embedded

    def status(self) -> IndexStatus:
        found = coverage(self.catalog, self.vectors)
        problems = [f"{key}: {why}" for key, why in list(self.unembeddable.items())[:20]]
        return IndexStatus(
            self.embedder.model_id, self.embedder.display_name, found.products, found.photos,
            found.photos - found.missing, found.missing, found.missing_ids, problems, self.embedder.fallback_reason,
        )

    def embed_missing(self, progress: Progress | None = None, *, rebuild: bool = False) -> int:
        """Embed every catalog photo without a vector (every photo with `rebuild`); returns how many."""
        progress = progress or _no_progress
        # A counting walk, then the work walk: two reads of the catalog, a batch at a time, so memory stays
        # bounded whatever its size (a list of every missing photo would hold a million products).
        total = sum(1 for _ in self.photos_to_embed(rebuild))
        progress(0, total, f"embedding {_of_photos(total, self.catalog.photo_count(), 'a vector')} with "
                           f"{self.embedder.model_id}")
        embedded = done = 0
        prepare, embed = embedder_stages(self.embedder)
        stage = functools.partial(self._load_batch, reuse=not rebuild, prepare=prepare)
        for loaded in prefetch(chunked(self.photos_to_embed(rebuild), EMBED_BATCH), stage):
            embedded += self._store_batch(loaded, embed)
            done += loaded.count
            total = max(total, done)  # photos added since the count
            progress(done, total, f"embedded {done}/{total} photos")
        return embedded

    def photos_to_embed(self, rebuild: bool) -> Iterator[tuple[Product, Photo]]:
        """(product, photo) of every catalog photo without a vector (every photo with `rebuild`), walked a
        catalog batch at a time (the cluster path hands the same list to its workers)."""
        self.unembeddable.clear()  # an explicit run tries every image again
        for batch in self.catalog.iter_batches():
            keys = [p.key for product in batch for p in product.photos]
            have = set() if rebuild else self.vectors.photo_keys_with_vectors(keys)
            for product in batch:
                for photo in product.photos:
                    if photo.key not in have:
                        yield product, photo

    def _load_batch(self, items: list[tuple[Product, Photo]], *, reuse: bool, prepare) -> _Loaded:
        """The pipeline's background stage: vectors this model already made for the same bytes, then the rest
        read, decoded and made into the model's input. Writes nothing."""
        known = self.vectors.vectors_for_shas({photo.sha256 for _p, photo in items}) if reuse else {}
        loaded = _Loaded(len(items))
        images = []
        for product, photo in items:
            if photo.sha256 in known:
                loaded.entries.append(
                    PhotoVector(photo.key, product.id, photo.sha256, product.category, known[photo.sha256]))
                continue
            try:
                data = self.storage.get(photo.key)
                images.append(decode_image(data, photo.key, max_bytes=max(len(data), 1)).image)
                loaded.waiting.append((product, photo))
            except (StorageError, ImageError) as err:
                loaded.failed.append((product.id, photo.key, str(err)))
        if images:
            loaded.prepared = prepare(images)
        return loaded

    def _store_batch(self, loaded: _Loaded, embed) -> int:
        for product_id, key, why in loaded.failed:
            self.unembeddable[key] = why
            log.warning("product %s: its photo %s cannot be embedded (%s)", product_id, key, why)
        entries = list(loaded.entries)
        if loaded.waiting:
            vectors = embed(loaded.prepared)
            for (product, photo), vector in zip(loaded.waiting, vectors, strict=True):
                entries.append(PhotoVector(photo.key, product.id, photo.sha256, product.category, vector))
        self.vectors.upsert(entries)
        return len(entries)

    def prune(self) -> int:
        """Drop vectors whose photo is no longer in the catalog (an add that never landed, a removed photo)."""
        orphans = orphan_photo_keys(self.catalog, self.vectors.iter_keys())
        if orphans:
            self.vectors.delete_photos(orphans)
            log.info("pruned %d vectors of photos no longer in the catalog (%s)", len(orphans), self.vectors.model_id)
        return len(orphans)


class PhotoDataIndexer:
    """Keeps one kind of per-photo derived data in step with the catalog, like `Indexer` does for one model's
    vectors: fills in the photos that have none, drops the rows of photos no longer there. The store gives
    `count`, `upsert`, `delete_photos`, `iter_keys`, and the two look-ups named by `known_for_shas` and `keys_with`."""

    what = "data"  # for people: "keypoints", "package text"

    def __init__(self, storage: Storage, catalog: CatalogStore, store):
        self.storage = storage
        self.catalog = catalog
        self.store = store
        self.problems: dict[str, str] = {}

    # What one kind of data needs: computed from a photo, found again by its bytes, written as a row.
    def compute(self, image): ...
    def known_for_shas(self, shas: set[str]) -> dict: ...
    def keys_with(self, keys: list[str]) -> set[str]: ...
    def entry(self, product: Product, photo: Photo, value): ...

    def missing_estimate(self) -> int:
        """Photos minus stored rows: two counts, cheap at any size."""
        return max(0, self.catalog.photo_count() - self.store.count())

    def fill_missing(self, progress: Progress | None = None, *, rebuild: bool = False) -> int:
        progress = progress or _no_progress
        total = sum(1 for _ in self._photos_without(rebuild))  # counted, then walked: bounded memory
        if total:  # nothing to do says nothing: the vectors' progress stays the last word
            progress(0, total, f"finding the {self.what} of {_of_photos(total, self.catalog.photo_count())}")
        stored = done = 0
        for chunk in chunked(self._photos_without(rebuild), EMBED_BATCH):
            known = {} if rebuild else self.known_for_shas({photo.sha256 for _p, photo in chunk})
            entries = []
            for product, photo in chunk:
                if photo.sha256 not in known:
                    try:
                        data = self.storage.get(photo.key)
                        known[photo.sha256] = self.compute(decode_image(data, photo.key,
                                                                        max_bytes=max(len(data), 1)).image)
                    except (StorageError, ImageError) as err:
                        self.problems[photo.key] = str(err)
                        log.warning("product %s: no %s for its photo %s (%s)", product.id, self.what, photo.key, err)
                        continue
                if known[photo.sha256] is not None:  # None: could not be computed here (say, no OCR installed)
                    entries.append(self.entry(product, photo, known[photo.sha256]))
            self.store.upsert(entries)
            stored += len(entries)
            done += len(chunk)
            total = max(total, done)  # photos added since the count
            progress(done, total, f"{self.what} of {done}/{total} photos")
        return stored

    def _photos_without(self, rebuild: bool) -> Iterator[tuple[Product, Photo]]:
        for batch in self.catalog.iter_batches():
            keys = [p.key for product in batch for p in product.photos]
            have = set() if rebuild else self.keys_with(keys)
            yield from ((product, photo) for product in batch for photo in product.photos if photo.key not in have)

    def prune(self) -> int:
        orphans = orphan_photo_keys(self.catalog, self.store.iter_keys())
        if orphans:
            self.store.delete_photos(orphans)
            log.info("pruned the %s of %d photos no longer in the catalog", self.what, len(orphans))
        return len(orphans)


class FeatureIndexer(PhotoDataIndexer):
    """The photos' keypoints (vpm/backends/lance_features.py)."""

    what = "keypoints"

    def __init__(self, storage: Storage, catalog: CatalogStore, features):
        super().__init__(storage, catalog, features)
        self.features = features

    def compute(self, image):
        from vpm.core.rerank import extract

        return extract(image)

    def known_for_shas(self, shas: set[str]) -> dict:
        return self.store.features_for_shas(shas)

    def keys_with(self, keys: list[str]) -> set[str]:
        return self.store.photo_keys_with_features(keys)

    def entry(self, product: Product, photo: Photo, value):
        from vpm.backends.lance_features import PhotoFeatures

        return PhotoFeatures(photo.key, product.id, photo.sha256, value)


class TextIndexer(PhotoDataIndexer):
    """The package text read on the photos (vpm/backends/lance_text.py); a photo is skipped while OCR is unavailable."""

    what = "package text"

    def compute(self, image):
        from vpm.models import package_text

        return package_text.read(image) if package_text.available() else None

    def known_for_shas(self, shas: set[str]) -> dict:
        return self.store.texts_for_shas(shas)

    def keys_with(self, keys: list[str]) -> set[str]:
        return self.store.photo_keys_with_text(keys)

    def entry(self, product: Product, photo: Photo, value):
        from vpm.backends.lance_text import PhotoText

        return PhotoText(photo.key, product.id, photo.sha256, value)


def _of_photos(todo: int, photos: int, what: str | None = None) -> str:
    """'40 of 100 photos (60 have a vector already)': a run that resumes a killed one says what it skips."""
    if todo >= photos:
        return f"{todo} photos"
    done = photos - todo
    said = f"{'has' if done == 1 else 'have'} {what}" if what else "done"
    return f"{todo} of {photos} photos ({done} {said} already)"


def orphan_photo_keys(catalog: CatalogStore, batches: Iterable[list[tuple[str, str]]]) -> list[str]:
    """The photo keys, from (photo_key, product_id) batches of derived data (vectors, keypoints), whose photo is no
    longer in the catalog: an add that never landed, a removed photo or product."""
    orphans: list[str] = []
    for batch in batches:
        products = catalog.get_many(sorted({pid for _key, pid in batch}))
        for key, pid in batch:
            product = products.get(pid)
            if product is None or key not in {p.key for p in product.photos}:
                orphans.append(key)
    return orphans
