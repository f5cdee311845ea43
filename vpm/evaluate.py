"""How good is matching on this catalog: each photo of a product with 2+ photos is held out and searched with.

The held-out photo's stored vector is the query, every other photo of the catalog the references, products ranked
by their best photo (as a search does), verified by the stored keypoints when re-ranking is on. The report gives
recall@1 and @5 overall and per category, the worst confusions (query photo -> the wrong product that came first
-> the right product), and the threshold that keeps 95% of true matches (the cosine of the best other photo of the
query's own product, at its 5th percentile).

It only reads: stored vectors and keypoints, never the model's embeddings of anything new, and nothing it does
writes to the catalog or its tables (no table is created, no index built). `Evaluation.step` runs a batch at a
time, so a page can show progress and stop between batches, and the CLI can stop on Ctrl-C with what it has.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import VpmError
from .vector_index import best_per_product

if TYPE_CHECKING:
    from .matcher import Matcher

log = logging.getLogger(__name__)

MAX_PHOTOS = 100_000  # vectors held for an evaluation (~200 MB of 512-d; 500 MB of the built-in 1280-d)
MAX_QUERIES = 2_000  # held-out photos at most (an even, seeded sample beyond): minutes, not hours, on 2 cores
CONFUSIONS_SHOWN = 8
KEEP_TRUE_MATCHES = 0.95
BATCH = 25


class NothingToEvaluate(VpmError, ValueError):
    """The catalog has no product with two photos that both have a vector; the message says what to do."""


@dataclass(frozen=True)
class Confusion:
    """A held-out photo whose first result was another product."""

    query_product: str
    query_photo: str  # storage key
    wrong_product: str
    wrong_photo: str
    wrong_score: float
    right_photo: str | None  # the best other photo of the query's own product
    right_score: float

    @property
    def margin(self) -> float:
        return self.wrong_score - self.right_score

    def as_dict(self) -> dict[str, Any]:
        return {
            "query_product": self.query_product, "query_photo": self.query_photo,
            "wrong_product": self.wrong_product, "wrong_photo": self.wrong_photo,
            "wrong_score": round(self.wrong_score, 4), "right_photo": self.right_photo,
            "right_score": round(self.right_score, 4),
        }


@dataclass(frozen=True)
class CategoryQuality:
    category: str
    queries: int
    recall_at_1: float
    recall_at_5: float


@dataclass(frozen=True)
class QualityReport:
    model_id: str
    rerank: bool
    queries: int  # held-out photos searched with
    planned: int  # how many there were to search with (more than `queries` when stopped)
    products: int  # products with 2+ photos that have a vector
    recall_at_1: float
    recall_at_5: float
    threshold_95: float | None  # keeps KEEP_TRUE_MATCHES of true matches
    categories: list[CategoryQuality]
    confusions: list[Confusion]
    stopped: bool = False
    sampled: bool = False  # a seeded sample of the held-out photos (more than MAX_QUERIES)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_id, "rerank": self.rerank, "queries": self.queries, "planned": self.planned,
            "products": self.products, "recall@1": round(self.recall_at_1, 4), "recall@5": round(self.recall_at_5, 4),
            "threshold_95": None if self.threshold_95 is None else round(self.threshold_95, 4),
            "categories": [
                {"category": c.category, "queries": c.queries, "recall@1": round(c.recall_at_1, 4),
                 "recall@5": round(c.recall_at_5, 4)} for c in self.categories
            ],
            "confusions": [c.as_dict() for c in self.confusions],
            "stopped": self.stopped, "sampled": self.sampled, "notes": list(self.notes),
        }


class Evaluation:
    """One hold-out evaluation of a catalog, run a batch at a time (`step`) until `finished`."""

    def __init__(self, matcher: Matcher, *, rerank: bool | None = None, max_queries: int = MAX_QUERIES,
                 seed: int = 13, batch: int = BATCH) -> None:
        self.matcher = matcher
        self.batch = max(1, batch)
        embedder = matcher.embedder
        self.model_id = embedder.model_id
        self.notes: list[str] = []
        if not matcher.catalog_exists() or not matcher.has_vector_index(self.model_id):
            raise NothingToEvaluate(
                f"there are no {self.model_id} vectors to evaluate yet: add products with two or more photos each, "
                "then search once or run `python -m vpm index`"
            )
        index = matcher.vector_index(self.model_id)
        if index.count() > MAX_PHOTOS:
            raise NothingToEvaluate(
                f"{index.description} holds more than {MAX_PHOTOS:,} photos, more than an evaluation holds in memory"
            )
        keys: list[str] = []
        products: list[str] = []
        blocks: list[np.ndarray] = []
        for batch_keys, batch_products, vectors in index.iter_vectors():  # the contract's bounded batches
            keys += batch_keys
            products += batch_products
            blocks.append(np.asarray(vectors, dtype=np.float32))
            if len(keys) > MAX_PHOTOS:  # photos added since the count: stop rather than grow
                raise NothingToEvaluate(f"{index.description} grew past {MAX_PHOTOS:,} photos while being read")
        ids, codes = np.unique(np.asarray(products, dtype=object), return_inverse=True)
        self.photo_keys = keys
        self.product_ids = [str(pid) for pid in ids]
        self.codes = codes.astype(np.int32).reshape(-1)
        self.vectors = np.concatenate(blocks) if blocks else np.zeros((0, embedder.dim), dtype=np.float32)
        counts = np.bincount(self.codes, minlength=len(self.product_ids)) if len(self.codes) else np.zeros(0, int)
        candidates = [i for i in range(len(self.photo_keys)) if counts[self.codes[i]] >= 2]
        self.products_evaluated = int((counts >= 2).sum())
        order = np.argsort(self.codes, kind="stable")
        starts = np.searchsorted(self.codes[order], np.arange(len(self.product_ids) + 1))
        self._rows_of = {pid: order[starts[c] : starts[c + 1]] for c, pid in enumerate(self.product_ids)}
        if not candidates:
            raise NothingToEvaluate(
                "no product has two or more photos with a vector, so no photo can be held out and found again: add "
                "more photos to some products (each side, other light), then evaluate"
            )
        self.sampled = len(candidates) > max_queries
        if self.sampled:
            candidates = sorted(random.Random(seed).sample(candidates, max_queries))
        self.queries = candidates
        wanted = matcher.rerank_default if rerank is None else bool(rerank)
        self.rerank = wanted and matcher.has_features_table()
        if wanted and not self.rerank:
            self.notes.append("no keypoints are stored yet, so results are not verified: run `python -m vpm index`")
        products = {}
        ids = sorted({self.product_ids[self.codes[i]] for i in self.queries})
        for start in range(0, len(ids), 500):
            products.update(matcher.catalog.get_many(ids[start : start + 500]))
        self.category_of = {pid: p.category for pid, p in products.items()}
        self.done = 0
        self._hits1: list[bool] = []
        self._hits5: list[bool] = []
        self._true_scores: list[float] = []
        self._per_category: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
        self._confusions: list[Confusion] = []
        self.stopped = False

    @property
    def total(self) -> int:
        return len(self.queries)

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def step(self, count: int | None = None) -> int:
        """Search with the next `count` (default: `batch`) held-out photos; returns how many were done."""
        from . import rerank as verification

        batch = self.queries[self.done : self.done + (count or self.batch)]
        if not batch:
            return 0
        scores = self.vectors[batch] @ self.vectors.T
        k = max(5, verification.RERANK_TOP if self.rerank else 5)
        every_row = np.arange(len(self.photo_keys))
        results = []
        for j, i in enumerate(batch):
            row = scores[j]
            row[i] = -np.inf  # the held-out photo is not in its own catalog
            hits = best_per_product(row, self.codes, self.product_ids, self.photo_keys, every_row, k, None).hits
            hits = [h for h in hits if np.isfinite(h.score)]
            own = self.codes == self.codes[i]
            own[i] = False
            right_row = int(np.flatnonzero(own)[np.argmax(row[own])])
            results.append((i, hits, right_row, float(row[right_row])))
        if self.rerank:
            results = self._verify(results, scores)
        for i, hits, right_row, right_score in results:
            own_id = self.product_ids[self.codes[i]]
            ranked = [h.product_id for h in hits]
            hit1, hit5 = bool(ranked[:1] == [own_id]), own_id in ranked[:5]
            self._hits1.append(hit1)
            self._hits5.append(hit5)
            self._true_scores.append(right_score)
            self._per_category[self.category_of.get(own_id, "(deleted)")].append((hit1, hit5))
            if not hit1 and hits:
                self._confusions.append(Confusion(own_id, self.photo_keys[i], hits[0].product_id, hits[0].photo_key,
                                                  hits[0].score, self.photo_keys[right_row], right_score))
        self._confusions = sorted(self._confusions, key=lambda c: -c.margin)[:CONFUSIONS_SHOWN]
        self.done += len(batch)
        return len(batch)

    def _verify(self, results, scores_of):
        from . import rerank as verification

        photos_of = {}  # (query, product) -> the photos verified: its best ones by cosine, as a search does
        for j, (i, hits, _right_row, _right_score) in enumerate(results):
            for h in hits[: verification.RERANK_TOP]:
                rows = self._rows_of[h.product_id]
                rows = rows[rows != i]
                best = rows[np.argsort(-scores_of[j][rows])][: verification.RERANK_PHOTOS]
                photos_of[(i, h.product_id)] = [self.photo_keys[r] for r in best]
        keys = {self.photo_keys[i] for i, *_ in results} | {k for keys in photos_of.values() for k in keys}
        stored = self.matcher.features.features_for(keys)
        out = []
        for i, hits, right_row, right_score in results:
            top = hits[: verification.RERANK_TOP]
            outcome = verification.rerank([h.score for h in top], stored.get(self.photo_keys[i]),
                                          [[stored.get(k) for k in photos_of[(i, h.product_id)]] for h in top])
            out.append((i, [top[j] for j in outcome.order] + hits[len(top):], right_row, right_score))
        return out

    def run(self, progress: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> QualityReport:
        """Every batch until done, or until `should_stop()` says so (the report then covers what was done)."""
        while not self.finished:
            if should_stop is not None and should_stop():
                self.stopped = True
                break
            self.step()
            if progress is not None:
                progress(self.done, self.total)
        return self.report()

    def report(self) -> QualityReport:
        def mean(values) -> float:
            return float(np.mean(values)) if len(values) else 0.0

        categories = [
            CategoryQuality(name, len(hits), mean([a for a, _ in hits]), mean([b for _, b in hits]))
            for name, hits in sorted(self._per_category.items(), key=lambda item: item[0].casefold())
        ]
        threshold = (float(np.quantile(self._true_scores, 1 - KEEP_TRUE_MATCHES, method="lower"))
                     if self._true_scores else None)
        return QualityReport(
            self.model_id, self.rerank, self.done, self.total, self.products_evaluated, mean(self._hits1),
            mean(self._hits5), threshold, categories, list(self._confusions), self.stopped or not self.finished,
            self.sampled, list(self.notes),
        )


def evaluate(matcher: Matcher, *, rerank: bool | None = None, max_queries: int = MAX_QUERIES,
             progress: Callable[[int, int], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> QualityReport:
    return Evaluation(matcher, rerank=rerank, max_queries=max_queries).run(progress, should_stop)


def report_text(report: QualityReport, name_of: Callable[[str], str] | None = None) -> str:
    """The report for a terminal."""
    name_of = name_of or (lambda product_id: product_id)
    lines = [
        f"model {report.model_id}" + (" · verified by keypoints" if report.rerank else "")
        + f" · {report.queries} of {report.planned} held-out photos of {report.products} products"
        + (" (a sample)" if report.sampled else "") + (" · STOPPED early" if report.stopped else ""),
        f"recall@1 {report.recall_at_1:.1%}   recall@5 {report.recall_at_5:.1%}",
    ]
    if report.threshold_95 is not None:
        lines.append(f"threshold that keeps {KEEP_TRUE_MATCHES:.0%} of true matches: {report.threshold_95 * 100:.0f}%"
                     f" (cosine {report.threshold_95:.3f})")
    if report.categories:
        width = max(len(c.category) for c in report.categories)
        lines.append("")
        lines.append(f"{'category':<{width}}  queries  recall@1  recall@5")
        lines += [f"{c.category:<{width}}  {c.queries:>7}  {c.recall_at_1:>8.1%}  {c.recall_at_5:>8.1%}"
                  for c in report.categories]
    if report.confusions:
        lines.append("")
        lines.append("worst confusions (query photo -> wrong product first -> right product):")
        lines += [f"  {c.query_photo} -> {name_of(c.wrong_product)} ({c.wrong_score * 100:.0f}%) -> "
                  f"{name_of(c.query_product)} ({c.right_score * 100:.0f}%)" for c in report.confusions]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)
