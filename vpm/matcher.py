"""The one facade the pages, the CLI and the API call: add, list, update, delete, import and search products.

It owns the order of writes that keeps data safe: image, then thumbnail, then the vector, then the metadata
that points at them; and on delete, metadata first, then the files (the vector stays as harmless derived data
until `reindex` prunes it, see vpm/index.py).

Search keeps an in-memory copy of the index (the catalog's products with their vectors), rebuilt only when
products.json's ETag changes, so a search costs one HEAD of products.json plus the embedding and a matrix
product. Products whose vector is missing (new model, lost or corrupt cache, added by an older version) are
embedded from their stored image on the next search, or by `reindex` with progress.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .catalog import (
    Catalog,
    CatalogError,
    DuplicateProduct,
    Product,
    ProductNotFound,
    image_keys,
    validate_product,
)
from .config import Settings
from .images import DecodedImage, ImageError, decode_image, make_thumbnail
from .importer import ImportIssue, ImportItem, ImportLimits, ItemUnreadable, open_source
from .index import SearchIndex, VectorCache
from .storage import ObjectNotFound, Storage, StorageError, make_storage

if TYPE_CHECKING:
    from .embeddings import Embedder

log = logging.getLogger(__name__)

# progress(done, total, message): pages drive st.progress with it, the CLI a tqdm bar.
Progress = Callable[..., None]
BATCH_SIZE = 32
URL_TIMEOUT_S = 15.0

# Default cosine thresholds by model family and query kind (the UI shows score * 100 as %): they hide the clearly
# unrelated, not rank. CLIP's image-image cosine for two photos of one product is typically 0.8-0.95 and a
# matching text-image pair 0.25-0.35. EfficientNet-Lite0 was measured with bench/bench_quality.py on the 398
# product photos: at 0.55, 94.5% of queries still show a photo of the same product (median best 0.75).
_THRESHOLDS = {
    "clip": {"image": 0.75, "text": 0.22},
    "efficientnet-lite0": {"image": 0.55, "text": 0.0},
    "other": {"image": 0.6, "text": 0.2},
}


@dataclass(frozen=True)
class ProductView:
    """A product plus the URLs a client needs to show it."""

    product: Product
    image_url: str | None
    thumbnail_url: str | None

    def as_dict(self) -> dict[str, Any]:
        return {**self.product.model_dump(mode="json"), "image_url": self.image_url, "thumbnail_url": self.thumbnail_url}


@dataclass(frozen=True)
class EmbeddedQuery:
    """A query embedded once: re-rank it with `Matcher.rank` as filters change, without embedding again."""

    kind: Literal["image", "text"]
    vector: np.ndarray
    label: str  # the file name, URL or words, for people
    image: bytes | None  # the query photo's bytes, to show it; None for words
    embed_ms: float


@dataclass(frozen=True)
class Match:
    """One search result: a product, its cosine similarity to the query, and where to show its image."""

    product: Product
    score: float  # cosine, in [-1, 1]
    image_url: str | None
    thumbnail_url: str | None

    def as_dict(self) -> dict[str, Any]:
        p = self.product
        return {
            "id": p.id, "name": p.name, "category": p.category, "price": p.price, "score": round(self.score, 6),
            "image_url": self.image_url, "thumbnail_url": self.thumbnail_url,
        }


@dataclass(frozen=True)
class SearchResponse:
    model: str  # the model id that embedded the query and the catalog
    took_ms: float
    results: list[Match]
    best_score: float | None  # best score after the category filter, ignoring the threshold
    query: str | None = None  # the file name, URL or text searched for
    threshold: float | None = None  # the threshold applied (None: none)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "took_ms": round(self.took_ms, 2),
            "results": [m.as_dict() for m in self.results],
            "best_score": None if self.best_score is None else round(self.best_score, 6),
            "query": self.query,
            "threshold": self.threshold,
        }


@dataclass
class ImportReport:
    imported: list[Product] = field(default_factory=list)
    skipped: list[ImportIssue] = field(default_factory=list)
    failed: list[ImportIssue] = field(default_factory=list)
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "imported": [p.model_dump(mode="json") for p in self.imported],
            "skipped": [i.as_dict() for i in self.skipped],
            "failed": [i.as_dict() for i in self.failed],
            "summary": self.summary(),
        }

    def summary(self) -> str:
        return f"imported {len(self.imported)}, skipped {len(self.skipped)}, failed {len(self.failed)}"


@dataclass(frozen=True)
class IndexStatus:
    model_id: str
    model: str  # display name
    products: int  # in the catalog
    vectors: int  # catalog products with a cached vector for this model
    missing: int  # catalog products without one
    stale: bool  # the stored cache held segments that could not be trusted (corrupt, other model); rebuilt on use
    missing_ids: list[str] = field(default_factory=list)
    orphans: int = 0  # cached vectors of products no longer in the catalog (pruned by reindex)
    segments: int = 0
    problems: list[str] = field(default_factory=list)  # why segments were distrusted, images not embeddable
    fallback_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.missing == 0 and not self.stale

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id, "model": self.model, "products": self.products, "vectors": self.vectors,
            "missing": self.missing, "stale": self.stale, "ok": self.ok, "missing_ids": list(self.missing_ids),
            "orphans": self.orphans, "segments": self.segments, "problems": list(self.problems),
            "fallback_reason": self.fallback_reason,
        }


@dataclass(frozen=True)
class _SearchState:
    """The in-memory index for one catalog revision and one model."""

    etag: str | None
    model_id: str
    products: list[Product]  # row i of index is products[i]
    index: SearchIndex


def _no_progress(done: int, total: int, message: str = "") -> None:
    pass


def new_upload_token() -> str:
    """A short random token that makes an upload's storage keys its own."""
    return uuid.uuid4().hex[:12]


class Matcher:
    def __init__(
        self,
        settings: Settings,
        storage: Storage | None = None,
        *,
        public_base_url: str | None = None,
        embedder: Embedder | None = None,
    ):
        self.settings = settings
        self.storage = storage or make_storage(settings, public_base_url=public_base_url)
        self.catalog = Catalog(self.storage, settings.s3_metadata_key)
        self._embedder = embedder
        self._vector_caches: dict[str, VectorCache] = {}
        self._state: _SearchState | None = None
        self._sha_of_key: dict[str, str] = {}  # for products stored without image_sha256 (older catalogs)
        self._unembeddable: dict[str, str] = {}  # sha -> why its stored image could not be embedded
        # Streamlit shares one Matcher between sessions (threads): one index rebuild or cache write at a time.
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------------------ model

    @property
    def embedder(self) -> Embedder:
        """The embedding model: the injected one, else VPM_MODEL loaded on first use (falls back offline)."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    from .embeddings import load_embedder

                    self._embedder = load_embedder(self.settings.vpm_model, self.settings.vpm_device)
        return self._embedder

    @property
    def model_loaded(self) -> bool:
        return self._embedder is not None

    def default_threshold(self, kind: Literal["image", "text"] = "image") -> float:
        """The cosine similarity below which results are hidden by default, for the active model."""
        if kind not in ("image", "text"):
            raise ValueError(f"kind must be 'image' or 'text', not {kind!r}")
        model_id = self.embedder.model_id.lower()
        family = "efficientnet-lite0" if model_id == "efficientnet-lite0" else "clip" if "clip" in model_id else "other"
        return _THRESHOLDS[family][kind]

    # ------------------------------------------------------------------------------------------ keys

    def image_key_for(self, product_id: str, extension: str, upload: str) -> str:
        return f"{self.settings.s3_image_prefix}{product_id}-{upload}.{extension}"

    def thumbnail_key_for(self, product_id: str, upload: str) -> str:
        return f"{self.settings.s3_thumbnail_prefix}{product_id}-{upload}.webp"

    def url_for(self, key: str | None) -> str | None:
        if not key:
            return None
        try:
            return self.storage.url(key)
        except StorageError as err:  # a URL is a convenience; never the reason a listing fails
            log.warning("no URL for %s: %s", key, err)
            return None

    def view(self, product: Product) -> ProductView:
        return ProductView(product, self.url_for(product.image_key), self.url_for(product.thumbnail_key))

    # ---------------------------------------------------------------------------------------- reading

    def list_products(self) -> list[Product]:
        return self.catalog.list()

    def get_product(self, product_id: str) -> Product:
        return self.catalog.get(product_id)

    def categories(self) -> list[str]:
        return self.catalog.categories()

    def read_thumbnail(self, product: Product) -> bytes:
        """Thumbnail bytes for grids; falls back to the original image when the thumbnail is missing."""
        for key in (product.thumbnail_key, product.image_key):
            if key:
                try:
                    return self.storage.get(key)
                except StorageError:
                    continue
        raise ProductNotFound(f"product {product.id!r} has no readable image")

    # ---------------------------------------------------------------------------------------- writing

    def decode(self, data: bytes, filename: str) -> DecodedImage:
        return decode_image(data, filename, max_bytes=self.settings.max_upload_bytes)

    def prepare_product(self, image: DecodedImage, *, name: str, category: str, **fields: Any) -> Product:
        """Validate the fields and attach the image keys; writes nothing."""
        product = validate_product(name=name, category=category, **fields)
        # Each upload gets keys no other writer can produce (the id plus a random token), so a writer that loses
        # a race for the same id removes only its own files, never the winner's.
        upload = new_upload_token()
        return product.model_copy(
            update={
                "image_key": self.image_key_for(product.id, image.extension, upload),
                "thumbnail_key": self.thumbnail_key_for(product.id, upload),
                "image_sha256": image.sha256,
            }
        )

    def store_files(self, product: Product, image: DecodedImage) -> list[str]:
        """Write the original and its thumbnail; return the keys written (for cleanup on failure).

        Created with if-none-match: a key that exists already is never overwritten, so the keys returned are
        exactly the objects this call created, and only those may be deleted on failure.
        """
        written = []
        self.storage.put(
            product.image_key, image.data, image.content_type, metadata={"sha256": image.sha256}, if_none_match=True
        )
        written.append(product.image_key)
        thumb = make_thumbnail(image.image)
        self.storage.put(product.thumbnail_key, thumb, "image/webp", if_none_match=True)
        written.append(product.thumbnail_key)
        return written

    def discard_files(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.storage.delete(key)
            except StorageError as err:
                log.warning("could not remove %s after a failed add: %s", key, err)

    def add_product(
        self,
        image_bytes: bytes,
        filename: str,
        *,
        name: str,
        category: str,
        price: float | None = None,
        description: str | None = None,
        product_id: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> Product:
        """Decode and validate everything first; then image, thumbnail, metadata. On failure nothing remains."""
        image = self.decode(image_bytes, filename)
        product = self.prepare_product(
            image, name=name, category=category, price=price, description=description, id=product_id,
            attributes=attributes,
        )
        # Read the catalog before writing anything: a catalog that cannot be read (or an id that is taken) is
        # reported without leaving files or vectors behind.
        if any(p.id == product.id for p in self.catalog.list()):
            raise DuplicateProduct(f"a product with id {product.id!r} already exists")
        written = self.store_files(product, image)
        try:
            self.after_files_stored([(product, image)])
            self.catalog.add(product)
        except BaseException:
            self.discard_files(written)
            raise
        log.info("added product %s (%s)", product.id, product.name)
        return product

    def after_files_stored(self, items: list[tuple[Product, DecodedImage]]) -> None:
        """Between the files and the metadata: embed the new images and persist their vectors (one segment)."""
        if not items:
            return
        cache = self._cache()
        fresh: dict[str, DecodedImage] = {}
        for _product, image in items:
            if image.sha256 not in cache and image.sha256 not in fresh:
                fresh[image.sha256] = image
        if not fresh:
            return
        vectors = self.embedder.embed_images([img.image for img in fresh.values()], batch_size=BATCH_SIZE)
        cache.add(list(fresh), vectors)

    def update_product(self, product_id: str, **fields: Any) -> Product:
        return self.catalog.update(product_id, **fields)

    def delete_product(self, product_id: str) -> Product:
        """Metadata first (so nothing points at a missing file), then the files."""
        (product,) = self.catalog.remove([product_id])
        self.discard_files(image_keys(product))
        log.info("deleted product %s", product_id)
        return product

    # ---------------------------------------------------------------------------------------- import

    def import_path(
        self,
        path: str | Path,
        progress: Progress | None = None,
        *,
        batch_size: int = BATCH_SIZE,
        limits: ImportLimits | None = None,
    ) -> ImportReport:
        """Import a folder of images, a .zip or a .csv (see vpm/importer.py) in batches.

        Each batch: decode, then files (images + thumbnails), then vectors, then one products.json write. An
        import cut off half-way keeps every batch it committed; running it again skips what is already there
        (same image SHA-256 or same id) and adds the rest.
        """
        progress = progress or _no_progress
        limits = limits or ImportLimits(max_file_bytes=self.settings.max_upload_bytes)
        with open_source(path, limits=limits, fetch=lambda url: self.fetch_url_image(url)[0]) as source:
            report = ImportReport(skipped=list(source.skipped), failed=list(source.failed), source=str(path))
            snapshot = self.catalog.load()
            known_images = {p.image_sha256: p.id for p in snapshot.products if p.image_sha256}
            known_ids = {p.id for p in snapshot.products}
            total = len(source.items)
            progress(0, total, f"importing {total} images from {Path(path).name}")
            for start in range(0, total, batch_size):
                batch = source.items[start : start + batch_size]
                ready = self._prepare_batch(batch, known_images, known_ids, report)
                self._commit_batch(ready, report)
                done = start + len(batch)
                progress(done, total, f"{done}/{total}: {report.summary()}")
        log.info("import of %s: %s", path, report.summary())
        return report

    def import_upload(self, data: bytes, filename: str, progress: Progress | None = None) -> ImportReport:
        """Import an uploaded .zip or .csv (a browser hands bytes, not a path). The file keeps the person's
        name in a private temporary folder, so every message names the file they chose."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vpm-import-") as folder:
            path = Path(folder) / (Path(filename).name or "upload.zip")
            path.write_bytes(data)
            report = self.import_path(path, progress)
        return dataclasses.replace(report, source=Path(filename).name)

    def _prepare_batch(
        self,
        batch: Sequence[ImportItem],
        known_images: dict[str, str],
        known_ids: set[str],
        report: ImportReport,
    ) -> list[tuple[Product, DecodedImage, ImportItem]]:
        """Read, decode and validate one batch; record skips and failures; writes nothing."""
        ready = []
        for item in batch:
            try:
                data = item.read()
                image = self.decode(data, item.filename)
            except (ItemUnreadable, ImageError) as err:
                report.failed.append(ImportIssue(item.source, str(err)))
                continue
            if image.sha256 in known_images:
                existing = known_images[image.sha256]
                report.skipped.append(ImportIssue(item.source, f"duplicate: the same image is already product {existing}"))
                continue
            if item.product_id and item.product_id in known_ids:
                reason = f"duplicate: a product with id {item.product_id} exists"
                report.skipped.append(ImportIssue(item.source, reason))
                continue
            try:
                product = self.prepare_product(
                    image, name=item.name, category=item.category, price=item.price, description=item.description,
                    id=item.product_id, attributes=item.attributes or None,
                )
            except CatalogError as err:
                report.failed.append(ImportIssue(item.source, str(err)))
                continue
            known_images[image.sha256] = product.id
            known_ids.add(product.id)
            ready.append((product, image, item))
        return ready

    def _commit_batch(self, ready: list[tuple[Product, DecodedImage, ImportItem]], report: ImportReport) -> None:
        """Files, then vectors, then one metadata write. If anything fails, this batch's files are removed."""
        if not ready:
            return
        written: list[str] = []
        try:
            for product, image, _item in ready:
                written += self.store_files(product, image)
            self.after_files_stored([(product, image) for product, image, _item in ready])
            try:
                self.catalog.add_products([product for product, _image, _item in ready])
            except DuplicateProduct:
                # Someone added one of these ids since we read the catalog: skip those, keep the rest.
                taken = {p.id for p in self.catalog.list()}
                clashing = [entry for entry in ready if entry[0].id in taken]
                for product, _image, item in clashing:
                    report.skipped.append(ImportIssue(item.source, f"duplicate: a product with id {product.id} exists"))
                    self.discard_files(image_keys(product))
                    written = [k for k in written if k not in image_keys(product)]
                ready = [entry for entry in ready if entry[0].id not in taken]
                self.catalog.add_products([product for product, _image, _item in ready])
        except BaseException:
            self.discard_files(written)
            raise
        report.imported.extend(product for product, _image, _item in ready)

    # ---------------------------------------------------------------------------------------- search

    def embed_query_image(self, data: bytes, filename: str) -> np.ndarray:
        """The query vector of an uploaded photo; raises an ImageError subclass for bad input."""
        image = self.decode(data, filename)
        return self.embedder.embed_images([image.image])[0]

    def fetch_url_image(self, url: str) -> tuple[bytes, str]:
        """Download an image by URL through the SSRF guard; raises URLRefused / URLFetchError saying why."""
        from .urlfetch import fetch_image_bytes

        fetched = fetch_image_bytes(url, max_bytes=self.settings.max_upload_bytes, timeout=URL_TIMEOUT_S)
        return fetched.data, fetched.filename

    def text_search_unavailable(self) -> str | None:
        """Why text search cannot run with the active model, in words for people; None when it can."""
        embedder = self.embedder
        if embedder.supports_text:
            return None
        why = (
            f" ({self.settings.vpm_model} could not be loaded: {embedder.fallback_reason})"
            if embedder.fallback_reason
            else ""
        )
        return (
            f"text search is not available: the active model {embedder.model_id} embeds images only{why}. "
            "Search with a photo instead, or set VPM_MODEL to a CLIP model (e.g. clip-ViT-B-32)."
        )

    def embed_query_text(self, text: str) -> np.ndarray:
        """The query vector of a description; raises EmbeddingError when the active model has no text tower."""
        from .embeddings import EmbeddingError

        if not isinstance(text, str) or not text.strip():
            raise EmbeddingError("the text query is empty: describe the product, e.g. 'red running shoe'")
        unavailable = self.text_search_unavailable()
        if unavailable:
            raise EmbeddingError(unavailable)
        return self.embedder.embed_texts([text.strip()])[0]

    def embed_query(
        self, *, data: bytes | None = None, filename: str = "image", url: str | None = None, text: str | None = None
    ) -> EmbeddedQuery:
        """Embed one query (photo bytes, an image URL, or words) once, for re-ranking with `rank` later."""
        started = time.perf_counter()
        if text is not None:
            vector, label, image = self.embed_query_text(text), text.strip(), None
        else:
            if url is not None:
                data, filename = self.fetch_url_image(url)
            if data is None:
                raise ValueError("a query needs a photo, an image URL or a text")
            vector, image = self.embed_query_image(data, filename), data
            label = url if url is not None else filename
        took_ms = (time.perf_counter() - started) * 1000
        return EmbeddedQuery("text" if text is not None else "image", vector, label, image, took_ms)

    def rank(
        self,
        vector: np.ndarray,
        *,
        top_k: int = 10,
        threshold: float | None = None,
        categories: Iterable[str] | None = None,
        query: str | None = None,
        took_ms: float = 0.0,
    ) -> SearchResponse:
        """Rank the catalog against a query vector (no embedding: cheap enough for a slider). No threshold
        when `threshold` is None."""
        return self._rank_many(np.atleast_2d(vector), [query], top_k, threshold, categories, [took_ms])[0]

    def _rank_many(
        self, vectors, queries, top_k, threshold, categories, embed_ms, state: _SearchState | None = None
    ) -> list[SearchResponse]:
        state = state or self._ready_state()
        started = time.perf_counter()
        if len(state.index) == 0:
            found = [([], None)] * len(queries)
        else:
            found = state.index.search(vectors, top_k=top_k, threshold=threshold, categories=categories)
        rank_ms = (time.perf_counter() - started) * 1000 / max(1, len(queries))
        responses = []
        for (hits, best), query, ms in zip(found, queries, embed_ms):
            matches = []
            for hit in hits:
                product = state.products[hit.row]
                matches.append(
                    Match(product, hit.score, self.url_for(product.image_key), self.url_for(product.thumbnail_key))
                )
            responses.append(SearchResponse(state.model_id, ms + rank_ms, matches, best, query, threshold))
        return responses

    def _resolve_threshold(self, threshold: float | None, kind: str) -> float:
        value = self.default_threshold(kind) if threshold is None else float(threshold)
        if not -1.0 <= value <= 1.0 or math.isnan(value):
            raise ValueError(f"threshold {threshold} is not a cosine similarity between -1 and 1 (e.g. 0.8 for 80%)")
        return value

    def search_image(
        self, data: bytes, filename: str, *, top_k: int = 10, threshold: float | None = None,
        categories: Iterable[str] | None = None,
    ) -> SearchResponse:
        return self.search_images([(data, filename)], top_k=top_k, threshold=threshold, categories=categories)[0]

    def search_images(
        self, images: Sequence[tuple[bytes, str]], *, top_k: int = 10, threshold: float | None = None,
        categories: Iterable[str] | None = None,
    ) -> list[SearchResponse]:
        """Search with several photos at once: all are decoded first (a bad one fails the call, naming it),
        then embedded in batches by one model."""
        threshold = self._resolve_threshold(threshold, "image")
        started = time.perf_counter()
        decoded = [self.decode(data, filename) for data, filename in images]
        vectors = self.embedder.embed_images([d.image for d in decoded], batch_size=BATCH_SIZE)
        per_query_ms = (time.perf_counter() - started) * 1000 / max(1, len(images))
        state = self._ready_state()  # after the query's own cost (took_ms), which may be refused first
        return self._rank_many(
            vectors, [name for _data, name in images], top_k, threshold, categories, [per_query_ms] * len(images),
            state,
        )

    def search_url(
        self, url: str, *, top_k: int = 10, threshold: float | None = None, categories: Iterable[str] | None = None,
    ) -> SearchResponse:
        data, filename = self.fetch_url_image(url)
        response = self.search_image(data, filename, top_k=top_k, threshold=threshold, categories=categories)
        return dataclasses.replace(response, query=url)

    def search_text(
        self, text: str, *, top_k: int = 10, threshold: float | None = None, categories: Iterable[str] | None = None,
    ) -> SearchResponse:
        threshold = self._resolve_threshold(threshold, "text")
        started = time.perf_counter()
        vector = self.embed_query_text(text)
        took_ms = (time.perf_counter() - started) * 1000
        state = self._ready_state()
        return self._rank_many(np.atleast_2d(vector), [text], top_k, threshold, categories, [took_ms], state)[0]

    # ----------------------------------------------------------------------------------------- index

    def _cache(self) -> VectorCache:
        embedder = self.embedder
        with self._lock:
            cache = self._vector_caches.get(embedder.model_id)
            if cache is None:
                cache = VectorCache(self.storage, self.settings.embeddings_prefix, embedder.model_id, embedder.dim)
                cache.refresh()
                self._vector_caches[embedder.model_id] = cache
            return cache

    def _catalog_etag(self) -> str | None:
        try:
            return self.storage.head(self.settings.s3_metadata_key).etag
        except ObjectNotFound:
            return None

    def _image_sha(self, product: Product) -> str | None:
        """The SHA-256 a product's vector is keyed by (read from its image for catalogs that lack it)."""
        if product.image_sha256:
            return product.image_sha256
        if not product.image_key:
            return None
        sha = self._sha_of_key.get(product.image_key)
        if sha is None:
            try:
                sha = hashlib.sha256(self.storage.get(product.image_key)).hexdigest()
            except StorageError as err:
                log.warning("product %s: cannot read %s to index it: %s", product.id, product.image_key, err)
                return None
            self._sha_of_key[product.image_key] = sha
        return sha

    def _ready_state(self, progress: Progress | None = None) -> _SearchState:
        """The in-memory index for the current catalog; rebuilt only when products.json changed."""
        embedder = self.embedder
        with self._lock:
            etag = self._catalog_etag()
            state = self._state
            if state is not None and state.etag == etag and state.model_id == embedder.model_id:
                return state
            snapshot = self.catalog.load()
            cache = self._cache()
            keyed = [(p, self._image_sha(p)) for p in snapshot.products]
            missing = [(p, sha) for p, sha in keyed if sha and sha not in cache and sha not in self._unembeddable]
            if missing:
                cache.refresh()  # another process may have embedded them
                missing = [(p, sha) for p, sha in missing if sha not in cache]
            if missing:
                log.info(
                    "embedding %d catalog images missing from the %s index", len(missing), embedder.model_id
                )
                self._embed_stored(missing, cache, progress or _no_progress, replace=False, best_effort=True)
            if cache.corrupt:
                try:
                    cache.compact()  # the untrusted segments are replaced by a clean one
                except StorageError as err:  # derived data: never the reason a search fails
                    log.warning("could not replace the untrusted embedding cache files: %s", err)
            searchable = [(p, sha) for p, sha in keyed if sha and sha in cache]
            vectors = cache.get([sha for _p, sha in searchable])
            products = [p for p, _sha in searchable]
            index = SearchIndex(vectors, [p.category for p in products])
            self._state = _SearchState(snapshot.etag, embedder.model_id, products, index)
            return self._state

    def _embed_stored(
        self, items: list[tuple[Product, str]], cache: VectorCache, progress: Progress, *, replace: bool,
        best_effort: bool = False,
    ) -> int:
        """Embed stored catalog images in batches, persisting each batch; returns how many were embedded."""
        unique: dict[str, Product] = {}
        for product, sha in items:
            unique.setdefault(sha, product)
        todo = list(unique.items())
        total, embedded = len(todo), 0
        progress(0, total, f"embedding {total} images with {self.embedder.model_id}")
        for start in range(0, total, BATCH_SIZE):
            shas, images = [], []
            for sha, product in todo[start : start + BATCH_SIZE]:
                try:
                    data = self.storage.get(product.image_key) if product.image_key else b""
                    image = decode_image(data, product.image_key or product.id, max_bytes=max(len(data), 1))
                except (StorageError, ImageError) as err:
                    reason = f"product {product.id}: its image cannot be embedded ({err})"
                    log.warning("%s", reason)
                    self._unembeddable[sha] = reason
                    continue
                shas.append(sha)
                images.append(image.image)
            if images:
                vectors = self.embedder.embed_images(images, batch_size=BATCH_SIZE)
                cache.add(shas, vectors, replace=replace, best_effort=best_effort)
                embedded += len(images)
            done = min(start + BATCH_SIZE, total)
            progress(done, total, f"embedded {done}/{total} images")
        return embedded

    def index_status(self) -> IndexStatus:
        """How many catalog products have a vector for the active model; embeds nothing."""
        embedder = self.embedder
        with self._lock:
            cache = self._cache()
            cache.refresh()
            products = self.catalog.list()
            keyed = [(p, self._image_sha(p)) for p in products]
            missing_ids = [p.id for p, sha in keyed if not sha or sha not in cache]
            referenced = {sha for _p, sha in keyed if sha}
            problems = list(cache.corrupt.values()) + [
                self._unembeddable[sha] for sha in sorted(referenced) if sha in self._unembeddable
            ]
            return IndexStatus(
                model_id=embedder.model_id,
                model=embedder.display_name,
                products=len(products),
                vectors=len(products) - len(missing_ids),
                missing=len(missing_ids),
                stale=bool(cache.corrupt),
                missing_ids=missing_ids,
                orphans=len(cache.shas() - referenced),
                segments=cache.segment_count,
                problems=problems,
                fallback_reason=embedder.fallback_reason,
            )

    def reindex(self, rebuild: bool = False, progress: Progress | None = None) -> IndexStatus:
        """Embed the products missing from the active model's cache (every product with rebuild=True), drop
        vectors of deleted products and untrusted segments, and merge the cache into one file."""
        with self._lock:
            cache = self._cache()
            cache.refresh()
            self._unembeddable.clear()  # an explicit reindex tries every image again
            keyed = [(p, self._image_sha(p)) for p in self.catalog.list()]
            keyed = [(p, sha) for p, sha in keyed if sha]
            todo = keyed if rebuild else [(p, sha) for p, sha in keyed if sha not in cache]
            self._embed_stored(todo, cache, progress or _no_progress, replace=rebuild)
            cache.compact(keep={sha for _p, sha in keyed})
            self._state = None
        return self.index_status()
