"""The one facade the pages, the CLI and the API call: read, add, edit, delete, import and search products.

It composes the two contracts (a `CatalogStore` for products, a `VectorIndex` per model for their photos'
vectors) with storage (the image files) and the embedder, and owns the order of writes that keeps data safe:
a photo's image, thumbnail and vector are written before the product row that points at them, and a delete
removes the row first, then the vectors and files. A write that does not land removes exactly what it wrote.
Its parts, each taken on first use, are vpm/core/facade_parts.py's; a photo's derived data is written and removed by
vpm/core/derived_data.py; searching lives in vpm/core/searching.py and vpm/core/query_mix.py, the bulk import in vpm/core/bulk_import.py.
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

from vpm.core import photos, query_mix, searching
from vpm.core.calibration import Calibration, CalibrationCache
from vpm.core.catalog import (
    CatalogError,
    DuplicateProduct,
    InvalidProduct,
    Page,
    Product,
    validate_product,
)
from vpm.core.catalog_files import CatalogFiles
from vpm.core.config import Settings
from vpm.core.derived_data import DuplicatePhoto as DuplicatePhoto  # re-exported: the API and tests import it from here
from vpm.core.derived_data import quietly, refuse_duplicates, write_photos_then
from vpm.core.errors import InvalidRequest
from vpm.core.facade_parts import FacadeParts
from vpm.core.images import Box, DecodedImage, crop_box, decode_image, parse_box
from vpm.core.indexing import IndexStatus
from vpm.core.results import EmbeddedQuery, ImportReport, PhotoView, ProductView, SearchResponse
from vpm.core.results import Match as Match  # re-exported: older callers import it from here
from vpm.core.storage import Storage, StorageError
from vpm.core.stores import Stores
from vpm.models.embedder_base import Thresholds

if TYPE_CHECKING:
    from PIL import Image

    from vpm.core.rerank import LocalFeatures
    from vpm.models.embeddings import Embedder

log = logging.getLogger(__name__)

# progress(done, total, message): pages drive st.progress with it, the CLI a tqdm bar.
Progress = Callable[..., None]
URL_TIMEOUT_S = 15.0
# On the first search of a process, photos without a vector (a new model) are embedded then and there when
# there are at most this many; more than that is a job for `python -m vpm index` (or the app's progress bar).
AUTO_EMBED_MAX = 2_000
MAX_PHOTOS_PER_CALL = 10



def _check_photo_count(images: Sequence[Any]) -> None:
    # Every photo of a call is decoded before any is written: bound how many are held at once.
    if len(images) > MAX_PHOTOS_PER_CALL:
        raise InvalidProduct(
            f"{len(images)} photos at once; add at most {MAX_PHOTOS_PER_CALL} at a time (more can be added after)"
        )


class Matcher(FacadeParts):
    """The facade over its parts (vpm/core/facade_parts.py: the stores, the model): what the faces call."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage | None = None,
        *,
        embedder: Embedder | None = None,
        load_embedder: Callable[[], Embedder] | None = None,
        stores: Stores | None = None,
    ):
        """Made by `vpm.core.wiring.build_matcher`, which hands it storage, the table engine's stores and how to load
        the model. `embedder` is used as given; else `load_embedder()` loads the model on first use: drawing a
        page or answering a listing never imports torch. `Matcher(settings)` (tests, scripts) gets the parts it
        is not given from vpm.core.wiring, exactly as the faces do."""
        if storage is None or stores is None or (embedder is None and load_embedder is None):
            from vpm.core.wiring import parts

            storage, stores, load_embedder = parts(settings, storage, stores, load_embedder)
        super().__init__(settings, storage, stores, embedder, load_embedder)
        self._features_checked = False  # keypoints of photos added before they existed: filled in once per process
        self._calibrations = CalibrationCache()
        self._checked_models: set[str] = set()
        self._read_ahead_lock = threading.Lock()
        self._read_ahead_done = False
        self._words = None  # vpm.core.word_search.WordSearch, made on the first words search (searching.words_index)

    @property
    def files(self) -> CatalogFiles:
        """What a face may see of the stored files (listing, reading, their owners, where they live)."""
        return CatalogFiles(self.storage, lambda: self.catalog, self.where)

    def calibration(self) -> Calibration:
        """The active model's calibration on this catalog (vpm/core/calibration.py), re-read at most every 30 s."""
        return self._calibrations.get(self.storage, self.where.prefix, self.embedder.model_id)

    def score_explained(self) -> str:
        """Where the photo score's curve comes from, for people ("fitted on 398 held-out photos of this catalog")."""
        return self.calibration().score.described

    def calibrate(self, progress: Progress | None = None) -> Calibration | None:
        """Fit and keep the score's curve and the projection on this catalog's own photos (vpm/core/calibration.py);
        returns what was kept (None when there was nothing to fit: the model's built-in curve stays)."""
        from vpm.core.calibration import calibrate

        kept = calibrate(self, progress=progress)
        self._calibrations.forget()
        return kept

    # ------------------------------------------------------------------------------------------ model

    def default_threshold(self, kind: Literal["image", "text"] = "image") -> float:
        """The score below which results are hidden by default, for the active model: for photos the calibrated
        probability the catalog's fit chose (vpm/core/scoring.py); for words the text-image cosine."""
        if kind not in ("image", "text"):
            raise InvalidRequest(f"kind must be 'image' or 'text', not {kind!r}")
        if kind == "image":
            return self.calibration().score.threshold
        # An embedder made elsewhere (a wrapper) may carry none: the contract's defaults then, as Embedder's own.
        return getattr(self.embedder, "thresholds", Thresholds()).text

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
        if not allow_duplicate:
            refuse_duplicates(self.catalog, decoded, [filename for _data, filename in images])
        prepared = [self._prepare(image, product.id) for image in decoded]
        product = Product.model_validate({**product.model_dump(), "photos": [p.photo for p in prepared]})
        write_photos_then(self.storage, self, product, prepared, lambda: self.catalog.add_one(product))
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
        if not allow_duplicate:
            refuse_duplicates(self.catalog, decoded, [filename for _data, filename in images])
        prepared = [self._prepare(image, product.id) for image in decoded]
        added: list[Product] = []

        def commit() -> None:
            added.append(self.catalog.add_photos(product.id, [p.photo for p in prepared]))

        write_photos_then(self.storage, self, product, prepared, commit)
        log.info("added %d photo(s) to product %s", len(prepared), product.id)
        return added[0]

    def remove_photo(self, product_id: str, key: str) -> Product:
        """The row first (so nothing points at a missing file), then the photo's vectors and files."""
        before = self.catalog.get(product_id)
        photo = before.photo(key)
        after = self.catalog.remove_photo(product_id, key)
        for index in self._every_vector_index():
            quietly(lambda index=index: index.delete_photos([key]), "remove the vector of", key)
        if self.has_features_table():
            quietly(lambda: self.features.delete_photos([key]), "remove the keypoints of", key)
        if self.has_text_table():
            quietly(lambda: self.texts.delete_photos([key]), "remove the package text of", key)
        photos.discard(self.storage, [k for k in (photo.key, photo.thumbnail_key) if k], "after removing its photo")
        return after

    def update_product(self, product_id: str, **fields: Any) -> Product:
        before = self.catalog.get(product_id)
        after = self.catalog.update(product_id, **fields)
        if after.category.casefold() != before.category.casefold():
            for index in self._every_vector_index():
                quietly(lambda index=index: index.set_category(product_id, after.category),
                        "follow the new category of", product_id)
        return after

    def delete_product(self, product_id: str) -> Product:
        """The row first (so nothing points at a missing file), then the vectors, then the files."""
        (product,) = self.catalog.delete([product_id])
        for index in self._every_vector_index():
            quietly(lambda index=index: index.delete_products([product_id]), "remove the vectors of", product_id)
        if self.has_features_table():
            quietly(lambda: self.features.delete_products([product_id]), "remove the keypoints of", product_id)
        if self.has_text_table():
            quietly(lambda: self.texts.delete_products([product_id]), "remove the package text of", product_id)
        photos.discard(self.storage, product.file_keys(), "of a deleted product")
        log.info("deleted product %s", product_id)
        return product

    def _prepare(self, image: DecodedImage, product_id: str) -> photos.PreparedPhoto:
        return photos.prepare(image, product_id, self.settings.s3_image_prefix, self.settings.s3_thumbnail_prefix)

    # ---------------------------------------------------------------------------------------- import

    def import_path(self, path: str | Path, progress: Progress | None = None, **options: Any) -> ImportReport:
        """Import a folder of images, a .zip or a .csv (see vpm/core/importer.py and vpm/core/bulk_import.py)."""
        from vpm.core.bulk_import import import_path

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
        from vpm.core.legacy import write_products_json

        return write_products_json(self.iter_products(), out)

    # ---------------------------------------------------------------------------------------- search
    # Ranking, batches of photos, "Why this match?" and more like this live in vpm/core/searching.py; queries of several
    # photos, words beside a photo and "not this one" in vpm/core/query_mix.py. These methods are their doors.

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
        from vpm.core import rerank

        try:
            return rerank.extract(image)
        except Exception as err:  # noqa: BLE001 - verification is an extra: never the reason a search fails
            log.warning("no keypoints for the query photo (%s): searching without verification", err)
            return None

    def fetch_url_image(self, url: str) -> tuple[bytes, str]:
        """Download an image by URL through the SSRF guard; raises URLRefused / URLFetchError saying why."""
        from vpm.core.urlfetch import fetch_image_bytes

        fetched = fetch_image_bytes(url, max_bytes=self.settings.max_upload_bytes, timeout=URL_TIMEOUT_S)
        return fetched.data, fetched.filename

    def text_search_unavailable(self) -> str | None:
        """Why text search cannot run with the active model, in words for people; None when it can."""
        from vpm.models.model_outlook import words_unavailable

        return words_unavailable(self.settings, self.embedder)

    def embed_query_text(self, text: str) -> np.ndarray:
        """The query vector of a description; raises EmbeddingError when the active model has no text tower."""
        from vpm.models.embeddings import EmbeddingError

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

    # Queries of several photos, a photo refined by words, "not this one": vpm/core/query_mix.py.

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
        from vpm.core.ranking import Stores

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
        """The catalog's words index (vpm/core/word_search.py), made on first use."""
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
        loads (vpm/backends/warm_start.py); a first search on a bucket then waits on one round of reads, not on each."""
        with self._read_ahead_lock:
            if not self._read_ahead_done:
                from vpm.backends.warm_start import read_ahead

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
