"""Words search over the catalog, kept fresh as it changes, and its fusion with CLIP's ranking.

`WordSearch` indexes what the catalog says in words (vpm/core/word_index.py) by paging through it (`iter_batches`, a
bounded batch at a time, never one unbounded read) and through the package text read on its photos
(vpm/backends/lance_text.py, streamed in batches). Like the calibration cache (vpm/core/calibration.py) it keeps one index and
checks before each search whether it is still current: the products table's version and the text table's version
are cheap to read (LanceDB looks for a newer version at most every 500 ms). A changed catalog of up to
SYNC_REBUILD_MAX products is indexed again before answering, so a product just added or renamed is found by its
new name at once; a bigger one is indexed again in a background thread while the last index answers.

Without a text model (the offline built-in image model reads no words) words search answers alone. With CLIP,
`fuse` merges CLIP's ranking with the words ranking by reciprocal-rank fusion, and the product the query names
(its name's words exactly) comes first whatever CLIP thinks of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from vpm.backends import engine
from vpm.core.errors import VpmError
from vpm.core.word_index import Builder, WordHit, WordIndex, query_words

log = logging.getLogger(__name__)

# Products up to which a changed catalog is indexed again before a search answers. Measured by bench/bench_words.py
# on the shared 2-core machine under load: 20k products in 9.9 s, 100k in 46 s (~2k a second), so up to 5k a search
# after a change waits a few seconds at most; past it the last index answers while a new one is built.
SYNC_REBUILD_MAX = 5_000
# The most products the index holds: memory is about 0.75 KB a product kept and 2.5 KB while building (measured by
# bench/bench_words.py at 20k and 100k products of a name, a brand, a category and a 12-word description), so at
# most ~150 MB kept and ~0.5 GB while building. A bigger catalog needs an index beside the tables (LanceDB's own
# full-text index, which works on S3 too), or a CLIP model, which reads words itself.
MAX_PRODUCTS = 200_000
BATCH_SIZE = 1000  # products (and photo texts) read at a time
RETRY_AFTER_S = 10.0  # after a failed background build, the next one starts no sooner than this
RRF_K = 60  # reciprocal-rank fusion's usual constant (Cormack et al. 2009): 1 / (60 + rank)
FUSE_DEPTH = 50  # how deep each ranking goes into the fusion (at least the results shown)
WORDS_ONLY = "words in names and package text"  # "answered by", words search alone
CLIP_AND_WORDS = "CLIP + words"  # "answered by", fused


class CatalogTooBigForWords(VpmError):
    """The catalog has more products than the words index holds in memory."""


def answered_by(fused: bool) -> str:
    """What answered a words query, for people: the page, the CLI and the API show it beside the results."""
    return CLIP_AND_WORDS if fused else WORDS_ONLY


@dataclass(frozen=True)
class WordIndexStatus:
    products: int  # products in the index now answering (0 before the first search)
    package_texts: int  # photos whose package text is in it
    fresh: bool  # it reflects the catalog as of the last search
    building: bool  # a newer one is being built in the background
    built_s: float  # how long the last build took


class WordSearch:
    """One catalog's words index. `catalog` is a vpm.core.catalog.CatalogStore (anything with `version()`, `count()` and
    `iter_batches(n)`); one of more than `max_products` is refused (CatalogTooBigForWords). The package text comes
    from `texts`, a vpm.backends.lance_text.LanceTextStore, or from `texts_from`, called before each search for the store or
    None (the text table appears when the first photo is read); without either, names and the rest only.
    Thread-safe."""

    def __init__(self, catalog: Any, texts: Any | None = None, *, texts_from: Callable[[], Any | None] | None = None,
                 batch_size: int = BATCH_SIZE, sync_rebuild_max: int = SYNC_REBUILD_MAX,
                 max_products: int = MAX_PRODUCTS):
        self._catalog = catalog
        self.max_products = max_products
        self._texts_from = texts_from if texts_from is not None else (lambda: texts)
        self.batch_size = batch_size
        self.sync_rebuild_max = sync_rebuild_max
        self._lock = threading.Lock()
        self._index: WordIndex | None = None
        self._version: tuple[int, int | None] | None = None
        self._wanted: tuple[int, int | None] | None = None  # the version the last search saw
        self._worker: threading.Thread | None = None
        self._failed_at = -RETRY_AFTER_S
        self._built_s = 0.0

    # ------------------------------------------------------------------------------------------ searching

    def search(self, query: str, k: int = 10, categories: Iterable[str] | None = None) -> list[WordHit]:
        """The `k` products that best match the words, best first (see vpm.core.word_index.WordIndex.search); an
        unusable query is refused (InvalidRequest) before anything is read."""
        query_words(query)
        return self.index().search(query, k, categories)

    def index(self) -> WordIndex:
        """The index, current with the catalog (or, for a big catalog being indexed again, the last one)."""
        version = self._versions()
        with self._lock:
            self._wanted = version
            if self._index is not None and version == self._version:
                return self._index
            if self._index is None or len(self._index) <= self.sync_rebuild_max:
                self._install(self._build(), version)
                return self._index
            self._start_background(version)
            return self._index

    def warm(self) -> None:
        """Build the first index in the background (at start-up), so the first words search need not wait for it."""
        with self._lock:
            if self._index is not None or (self._worker is not None and self._worker.is_alive()):
                return

            def work() -> None:
                try:
                    self.index()
                except Exception as err:  # noqa: BLE001 - the first search builds it again and says what is wrong
                    log.warning("could not index the catalog's words ahead of the first search (%s)",
                                engine._reason(err))

            self._worker = threading.Thread(target=work, name="vpm-word-index", daemon=True)
            self._worker.start()

    def status(self) -> WordIndexStatus:
        with self._lock:
            index = self._index
            return WordIndexStatus(
                0 if index is None else len(index), 0 if index is None else index.package_texts,
                index is not None and self._version == self._wanted,
                self._worker is not None and self._worker.is_alive(), self._built_s,
            )

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background build to finish (tests, benches); True when none is running."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return worker is None or not worker.is_alive()

    # ------------------------------------------------------------------------------------------ building

    def _install(self, built: tuple[WordIndex, float], version: tuple[int, int | None]) -> None:
        self._index, self._built_s = built
        self._version = version

    def _start_background(self, version: tuple[int, int | None]) -> None:
        if self._worker is not None and self._worker.is_alive():
            return
        if time.monotonic() - self._failed_at < RETRY_AFTER_S:
            return

        def work() -> None:
            try:
                built = self._build()
            except CatalogTooBigForWords:  # grown past the limit: the next search says so, never a stale answer
                with self._lock:
                    self._index, self._version = None, None
                return
            except Exception as err:  # noqa: BLE001 - the last index keeps answering; the next search tries again
                self._failed_at = time.monotonic()
                log.warning("could not index the catalog's words again (%s); searches use the last index",
                            engine._reason(err))
                return
            with self._lock:
                self._install(built, version)

        self._worker = threading.Thread(target=work, name="vpm-word-index", daemon=True)
        self._worker.start()

    def _build(self) -> tuple[WordIndex, float]:
        started = time.perf_counter()
        self._check_size(self._catalog.count())
        builder = Builder()
        for batch in self._catalog.iter_batches(self.batch_size):
            for product in batch:
                builder.add_product(product)
            self._check_size(len(builder))  # products added while paging
        store = self._text_store()
        if store is not None:
            try:
                for product_id, text in package_texts(store, self.batch_size):
                    builder.add_package_text(product_id, text)
            except Exception as err:  # noqa: BLE001 - derived data: words search goes on without package text
                log.warning("words search goes on without package text: %s cannot be read (%s)",
                            store.description, engine._reason(err))
        index = builder.build()
        took = time.perf_counter() - started
        log.info("indexed the words of %d products (%d photo texts) in %.2f s", len(index), index.package_texts, took)
        return index, took

    def _check_size(self, products: int) -> None:
        if products > self.max_products:
            raise CatalogTooBigForWords(
                f"search by words without a text model indexes at most {self.max_products:,} products in memory, and "
                f"this catalog has {products:,}: search with a photo, or set VPM_MODEL to a CLIP model, which reads "
                "words itself")

    def _text_store(self) -> Any | None:
        return self._texts_from()

    def _versions(self) -> tuple[int, int | None]:
        """(products table version, text table version or None): both change with every write."""
        store = self._text_store()
        text_version = None
        if store is not None:
            try:
                text_version = int(store.table.version)
            except Exception as err:  # noqa: BLE001 - derived data: unreadable text means none, never a failed search
                log.warning("package text left out of words search: %s", engine._reason(err))
        return int(self._catalog.version()), text_version


def package_texts(store: Any, batch_size: int = BATCH_SIZE) -> Iterator[tuple[str, str]]:
    """(product id, text) of every photo read, streamed from the text table `batch_size` rows at a time."""
    reader = store.table.search().select(["product_id", "text"]).limit(None).to_batches(batch_size=batch_size)
    for batch in reader:
        ids, texts = batch.column("product_id").to_pylist(), batch.column("text").to_pylist()
        yield from ((product_id, text) for product_id, text in zip(ids, texts, strict=True) if text)


# ------------------------------------------------------------------------------------------------ fusion


@dataclass(frozen=True)
class FusedHit:
    product_id: str
    score: float  # reciprocal-rank fusion: higher is better, comparable within one list only
    clip_rank: int | None  # 1-based place in CLIP's ranking; None when CLIP did not rank it
    word_rank: int | None  # 1-based place in the words ranking; None when no word matched
    word: WordHit | None  # the words match (its fields), when there is one


def fuse(clip_ranking: Sequence[str], word_ranking: Sequence[WordHit], *, k: int = RRF_K,
         word_weight: float = 1.0) -> list[FusedHit]:
    """CLIP's ranking (product ids, best first) and the words ranking merged by reciprocal-rank fusion: each
    product scores 1 / (k + rank) in each list it is in (the words list's share times `word_weight`). A product
    the query names (WordHit.names_it) comes first, so a product's own name always finds it; the rest by score,
    ties by CLIP's rank, then the words rank."""
    clip_rank: dict[str, int] = {}
    for rank, product_id in enumerate(clip_ranking, start=1):
        clip_rank.setdefault(product_id, rank)
    word_rank: dict[str, tuple[int, WordHit]] = {}
    for rank, hit in enumerate(word_ranking, start=1):
        word_rank.setdefault(hit.product_id, (rank, hit))
    fused = []
    for product_id in dict.fromkeys([*clip_rank, *word_rank]):
        c = clip_rank.get(product_id)
        w, hit = word_rank.get(product_id, (None, None))
        score = (0.0 if c is None else 1.0 / (k + c)) + (0.0 if w is None else word_weight / (k + w))
        fused.append(FusedHit(product_id, score, c, w, hit))
    big = len(clip_rank) + len(word_rank) + 1
    fused.sort(key=lambda f: (not (f.word is not None and f.word.names_it), -f.score, f.clip_rank or big,
                              f.word_rank or big))
    return fused
