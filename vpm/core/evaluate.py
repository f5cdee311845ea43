"""How good is matching on this catalog: each photo of a product with 2+ photos is held out and searched with.

The held-out photo's stored vector is the query, every other photo of the catalog the references, products ranked
by their best photo (as a search does), then each signal is added as a search adds it: the keypoints of the top
candidates (when re-ranking is on), the package text read on the photos (when it is stored), and the catalog's own
projection (vpm/core/projection.py), fitted for each held-out photo without it (five folds of the photos), so that
no figure is measured on a photo its fit has seen. The report gives recall@1 and @5 with each signal on and off,
overall and per category for what searches use, the worst confusions (query photo -> the wrong product that came
first -> the right product), and the fitted score (vpm/core/scoring.py): its curve, its default threshold and how often
the matches at each score were right.

Latency: each signal's row has the p50 and p95 of the time its ranking took a query (the search over the stored
vectors, the verification of the candidates' stored keypoints, the comparison of their stored text, the projection),
and the report the time a query photo's decoding and embedding took with the model, measured one photo at a time on
the first LATENCY_PHOTOS held-out photos (the rest of a search, reading the query's keypoints and text, is not
timed here: bench/bench_quality.py times a query's whole path).

It only reads: stored vectors, keypoints and text (or, to compare another model, the vectors vpm/models/model_compare.py
embedded into a temporary folder), and nothing it does writes to the catalog or its tables (no table is created, no
index built); `vpm calibrate` is what keeps a fit. `Evaluation.step` runs a batch at a time, so a page can show
progress and stop between batches, and the CLI can stop on Ctrl-C with what it has.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vpm.core import projection as projections
from vpm.core import scoring
from vpm.core.errors import VpmError
from vpm.core.vector_index import best_per_product

if TYPE_CHECKING:
    from vpm.core.matcher import Matcher
    from vpm.core.vector_index import VectorIndex
    from vpm.models.embedder_base import Embedder

log = logging.getLogger(__name__)

MAX_PHOTOS = 100_000  # vectors held for an evaluation (~200 MB of 512-d; 500 MB of the built-in 1280-d)
MAX_QUERIES = 2_000  # held-out photos at most (an even, seeded sample beyond): minutes, not hours, on 2 cores
CONFUSIONS_SHOWN = 8
KEEP_TRUE_MATCHES = scoring.KEEP_TRUE_MATCHES
BATCH = 25
FOLDS = 5  # the projection is fitted five times, each time without a fifth of the photos, which it is tried on
PROJECTION_GAIN = 0.01  # kept only when recall@1 through it beats recall@1 without it by this much
# The signals, each added to the one before; the last one a search uses is the one reported in full.
CONFIGURATIONS = ("image only", "+ keypoints", "+ package text", "+ projection")
LATENCY_PHOTOS = 20  # held-out photos decoded and embedded one at a time to time the model


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
class SignalQuality:
    """Recall with the signals up to one of CONFIGURATIONS on."""

    name: str
    recall_at_1: float
    recall_at_5: float
    used: bool  # whether searches use this configuration (the signals this catalog has and keeps)
    p50_ms: float | None = None  # the time its ranking took a query (median), from the stored vectors, keypoints, text
    p95_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"signals": self.name, "recall@1": round(self.recall_at_1, 4), "recall@5": round(self.recall_at_5, 4),
                "used": self.used, "p50_ms": _round_ms(self.p50_ms), "p95_ms": _round_ms(self.p95_ms)}


def _round_ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def percentiles(values: list[float]) -> tuple[float | None, float | None]:
    """(p50, p95) of some timings in ms; (None, None) for none."""
    if not values:
        return None, None
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


@dataclass(frozen=True)
class QualityReport:
    model_id: str
    rerank: bool
    queries: int  # held-out photos searched with
    planned: int  # how many there were to search with (more than `queries` when stopped)
    products: int  # products with 2+ photos that have a vector
    recall_at_1: float  # with the signals searches use
    recall_at_5: float
    threshold: float | None  # the fitted score's default threshold (a probability); None: nothing to fit
    categories: list[CategoryQuality]
    confusions: list[Confusion]
    stopped: bool = False
    sampled: bool = False  # a seeded sample of the held-out photos (more than MAX_QUERIES)
    notes: list[str] = field(default_factory=list)
    signals: list[SignalQuality] = field(default_factory=list)
    score_model: scoring.ScoreModel | None = None  # fitted on these held-out photos
    calibration: list[scoring.CalibrationBin] = field(default_factory=list)
    projection_kept: bool = False
    text: bool = False  # whether package text was stored and used
    embed_p50_ms: float | None = None  # decoding and embedding one query photo with the model
    embed_p95_ms: float | None = None
    embed_photos: int = 0  # how many photos that was timed on

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_id, "rerank": self.rerank, "queries": self.queries, "planned": self.planned,
            "products": self.products, "recall@1": round(self.recall_at_1, 4), "recall@5": round(self.recall_at_5, 4),
            "threshold": None if self.threshold is None else round(self.threshold, 4),
            "signals": [s.as_dict() for s in self.signals],
            "projection_kept": self.projection_kept, "package_text": self.text,
            "score": None if self.score_model is None else self.score_model.as_dict(),
            "calibration": [b.as_dict() for b in self.calibration],
            "categories": [
                {"category": c.category, "queries": c.queries, "recall@1": round(c.recall_at_1, 4),
                 "recall@5": round(c.recall_at_5, 4)} for c in self.categories
            ],
            "confusions": [c.as_dict() for c in self.confusions],
            "embed_p50_ms": _round_ms(self.embed_p50_ms), "embed_p95_ms": _round_ms(self.embed_p95_ms),
            "embed_photos": self.embed_photos,
            "stopped": self.stopped, "sampled": self.sampled, "notes": list(self.notes),
        }


@dataclass(frozen=True)
class _Candidate:
    product: str
    cosine: float
    photo: int  # row of its best photo by that cosine
    inliers: int | None
    text: float | None


class Evaluation:
    """One hold-out evaluation of a catalog, run a batch at a time (`step`) until `finished`."""

    def __init__(self, matcher: Matcher, *, rerank: bool | None = None, max_queries: int = MAX_QUERIES,
                 seed: int = 13, batch: int = BATCH, projection: bool = True, vectors: VectorIndex | None = None,
                 embedder: Embedder | None = None, only_keys: set[str] | None = None,
                 latency_photos: int = 0) -> None:
        """`vectors` (default: the active model's in the catalog) are the photos' vectors of `embedder` (default: the
        active model); `only_keys` keeps only these photos (a comparison gives every model the same ones);
        `latency_photos` held-out photos are decoded and embedded to time the model (a report asks for
        LATENCY_PHOTOS; a fit of the score, which reports nothing, for none)."""
        self.matcher = matcher
        self.batch = max(1, batch)
        embedder = embedder or matcher.embedder
        self.embedder = embedder
        self.model_id = vectors.model_id if vectors is not None else embedder.model_id
        self.notes: list[str] = []
        if vectors is None and (not matcher.catalog_exists() or not matcher.has_vector_index(self.model_id)):
            raise NothingToEvaluate(
                f"there are no {self.model_id} vectors to evaluate yet: add products with two or more photos each, "
                "then search once or run `python -m vpm index`"
            )
        index = vectors if vectors is not None else matcher.vector_index(self.model_id)
        if index.count() > MAX_PHOTOS:
            raise NothingToEvaluate(
                f"{index.description} holds more than {MAX_PHOTOS:,} photos, more than an evaluation holds in memory"
            )
        keys: list[str] = []
        products: list[str] = []
        blocks: list[np.ndarray] = []
        for batch_keys, batch_products, block in index.iter_vectors():  # the contract's bounded batches
            if only_keys is not None:
                kept = [j for j, key in enumerate(batch_keys) if key in only_keys]
                batch_keys, batch_products = [batch_keys[j] for j in kept], [batch_products[j] for j in kept]
                block = np.asarray(block)[kept]
            keys += batch_keys
            products += batch_products
            blocks.append(np.asarray(block, dtype=np.float32))
            if len(keys) > MAX_PHOTOS:  # photos added since the count: stop rather than grow
                raise NothingToEvaluate(f"{index.description} grew past {MAX_PHOTOS:,} photos while being read")
        # In the order of the photos' keys, whatever order the table keeps: the sample, the folds and the timed photos
        # are then the same for every model compared on them.
        by_key = sorted(range(len(keys)), key=keys.__getitem__)
        keys, products = [keys[j] for j in by_key], [products[j] for j in by_key]
        ids, codes = np.unique(np.asarray(products, dtype=object), return_inverse=True)
        self.photo_keys = keys
        self.product_ids = [str(pid) for pid in ids]
        self.codes = codes.astype(np.int32).reshape(-1)
        self.vectors = (np.concatenate(blocks)[by_key] if blocks
                        else np.zeros((0, getattr(index, "dim", embedder.dim)), dtype=np.float32))
        counts = np.bincount(self.codes, minlength=len(self.product_ids)) if len(self.codes) else np.zeros(0, int)
        candidates = [i for i in range(len(self.photo_keys)) if counts[self.codes[i]] >= 2]
        self.products_evaluated = int((counts >= 2).sum())
        order = np.argsort(self.codes, kind="stable")
        starts = np.searchsorted(self.codes[order], np.arange(len(self.product_ids) + 1))
        self._rows_of = {c: order[starts[c] : starts[c + 1]] for c in range(len(self.product_ids))}
        self._code_of = {pid: c for c, pid in enumerate(self.product_ids)}
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
        self._texts = matcher.stored_texts(self.photo_keys)
        self.text = bool(self._texts)
        # Five fits of the projection, each without one fifth of the photos: a photo is only ever searched through
        # a fit that did not see it.
        self._fold = np.random.default_rng(seed).integers(0, FOLDS, len(self.photo_keys))
        self._projections: dict[int, projections.Projection | None] = {}
        # Whether there is anything to fit on: pairs of photos of one product (the folds fit it, not this).
        self.projection = projection and len(projections.same_product_pairs(self.codes)[0]) >= projections.MIN_PAIRS
        if projection and not self.projection:
            self.notes.append(
                f"too few products have two or more photos for a projection of this catalog's own (it needs "
                f"{projections.MIN_PAIRS} pairs of photos of one product)"
            )
        products = {}
        ids = sorted({self.product_ids[self.codes[i]] for i in self.queries})
        for start in range(0, len(ids), 500):
            products.update(matcher.catalog.get_many(ids[start : start + 500]))
        self.category_of = {pid: p.category for pid, p in products.items()}
        self.done = 0
        self._lists: dict[str, list[tuple[int, list[_Candidate]]]] = {"plain": [], "projected": []}
        self._image_only: list[tuple[bool, bool]] = []
        self._inliers: dict[tuple[int, int], int] = {}
        self.stopped = False
        self._ms: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))  # query row -> stage -> ms
        self.latency_photos = max(0, latency_photos)
        self._embed_ms: list[float] = []
        self._embed_tried = 0
        self._warmed = False

    @property
    def total(self) -> int:
        return len(self.queries)

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def _projection_for(self, query_row: int) -> projections.Projection | None:
        fold = int(self._fold[query_row])
        if fold not in self._projections:
            keep = self._fold != fold
            self._projections[fold] = projections.fit(self.vectors[keep], self.codes[keep])
        return self._projections[fold]

    def step(self, count: int | None = None) -> int:
        """Search with the next `count` (default: `batch`) held-out photos; returns how many were done."""
        batch = self.queries[self.done : self.done + (count or self.batch)]
        if not batch:
            return 0
        self._time_embedding(batch)
        started = time.perf_counter()
        scores = self.vectors[batch] @ self.vectors.T
        shared_ms = (time.perf_counter() - started) * 1000 / len(batch)  # one matrix product for the whole batch
        every_row = np.arange(len(self.photo_keys))
        pending = []
        for j, i in enumerate(batch):
            started = time.perf_counter()
            row = scores[j]
            row[i] = -np.inf  # the held-out photo is not in its own catalog
            pool = best_per_product(row, self.codes, self.product_ids, self.photo_keys, every_row,
                                    projections.POOL, None).hits
            pool = [h for h in pool if np.isfinite(h.score)]
            ranked = [h.product_id for h in pool]
            own_id = self.product_ids[self.codes[i]]
            self._image_only.append((ranked[:1] == [own_id], own_id in ranked[:5]))
            codes = [self._code_of[h.product_id] for h in pool]
            plain = self._candidates(i, row, codes)
            pending.append((i, "plain", plain, row))
            searched = time.perf_counter()
            self._ms[i]["search"] += shared_ms + (searched - started) * 1000
            if self.projection:
                fitted = self._projection_for(i)
                if fitted is not None:
                    rows = np.concatenate([self._rows_of[c] for c in codes])
                    rows = rows[rows != i]
                    projected = np.full(len(self.photo_keys), -np.inf, dtype=np.float32)
                    projected[rows] = fitted.apply(self.vectors[rows]) @ fitted.apply(self.vectors[i])
                    pending.append((i, "projected", self._candidates(i, projected, codes), projected))
                else:
                    pending.append((i, "projected", plain, row))
                self._ms[i]["projection"] += (time.perf_counter() - searched) * 1000
        if self.rerank:
            self._verify(pending)
        for i, kind, candidates, row in pending:
            started = time.perf_counter()
            texts = self._text_similarities(i, candidates)
            self._ms[i][f"text {kind}"] += (time.perf_counter() - started) * 1000
            self._lists[kind].append((i, [
                _Candidate(c.product, c.cosine, c.photo, self._verified(i, c, row) if self.rerank else None, text)
                for c, text in zip(candidates, texts, strict=True)
            ]))
        self.done += len(batch)
        return len(batch)

    def _candidates(self, query_row: int, row: np.ndarray, codes: list[int]) -> list[_Candidate]:
        """The pool's products by their best photo in `row`, best first, the first RERANK_TOP kept."""
        from vpm.core import rerank as verification

        found = []
        for c in codes:
            rows = self._rows_of[c]
            rows = rows[rows != query_row]
            if len(rows):
                best = rows[int(np.argmax(row[rows]))]
                found.append(_Candidate(self.product_ids[c], float(row[best]), int(best), None, None))
        found.sort(key=lambda c: -c.cosine)
        return found[: verification.RERANK_TOP]

    def _photos_verified(self, query_row: int, candidate: _Candidate, row_scores) -> list[int]:
        from vpm.core import rerank as verification

        rows = self._rows_of[self._code_of[candidate.product]]
        rows = rows[rows != query_row]
        return [int(r) for r in rows[np.argsort(-row_scores[rows])][: verification.RERANK_PHOTOS]]

    def _verify(self, pending) -> None:
        """The keypoint matches of every (held-out photo, candidate photo) pair not yet verified, read in one go."""
        from vpm.core import rerank as verification

        wanted: dict[int, set[int]] = defaultdict(set)
        for i, _kind, candidates, row in pending:
            for c in candidates:
                wanted[i].update(self._photos_verified(i, c, row))
        keys = {self.photo_keys[i] for i in wanted} | {self.photo_keys[r] for rows in wanted.values() for r in rows}
        started = time.perf_counter()
        stored = self.matcher.features.features_for(keys)
        shared_ms = (time.perf_counter() - started) * 1000 / max(1, len(wanted))  # one read for the whole batch
        with verification.one_blas_thread():
            for i, rows in wanted.items():
                started = time.perf_counter()
                query = stored.get(self.photo_keys[i])
                for r in rows:
                    if (i, r) not in self._inliers:
                        candidate = stored.get(self.photo_keys[r])
                        self._inliers[(i, r)] = (verification.verify(query, candidate).inliers
                                                 if query is not None and candidate is not None else 0)
                self._ms[i]["keypoints"] += shared_ms + (time.perf_counter() - started) * 1000

    def _time_embedding(self, rows: list[int]) -> None:
        """Decode and embed the first LATENCY_PHOTOS held-out photos one at a time with the model, timed (after one
        untimed call, so a first call's set-up is not counted). A photo that cannot be read is skipped."""
        from vpm.core.images import ImageError, decode_image
        from vpm.core.storage import StorageError
        from vpm.models.embedder_base import EmbeddingError

        for i in rows:
            if self._embed_tried >= self.latency_photos:
                return
            self._embed_tried += 1
            key = self.photo_keys[i]
            try:
                data = self.matcher.storage.get(key)
                if not self._warmed:
                    self.embedder.embed_images([decode_image(data, key, max_bytes=max(len(data), 1)).image])
                    self._warmed = True
                started = time.perf_counter()
                self.embedder.embed_images([decode_image(data, key, max_bytes=max(len(data), 1)).image])
                self._embed_ms.append((time.perf_counter() - started) * 1000)
            except (StorageError, ImageError, EmbeddingError) as err:
                log.info("%s is not timed: %s", key, err)

    def _verified(self, query_row: int, candidate: _Candidate, row: np.ndarray) -> int:
        return max((self._inliers.get((query_row, r), 0)
                    for r in self._photos_verified(query_row, candidate, row)), default=0)

    def _text_similarities(self, query_row: int, candidates: list[_Candidate]) -> list[float | None]:
        """Each candidate's package-text similarity to the held-out photo's, one comparison for the whole list."""
        query = self._texts.get(self.photo_keys[query_row], "") if self.text else ""
        if not query:
            return [None] * len(candidates)
        from vpm.models import package_text

        return package_text.similarities(query, [self._product_text(query_row, c.product) for c in candidates])

    def _product_text(self, query_row: int, product: str) -> str:
        rows = self._rows_of[self._code_of[product]]
        return "\n".join(self._texts.get(self.photo_keys[r], "") for r in rows if r != query_row)

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

    # ------------------------------------------------------------------------------------------- report

    def _evidence(self, candidates: list[_Candidate], keypoints: bool, text: bool) -> list[float]:
        return [scoring.Signals(c.cosine, c.inliers if keypoints else None, c.text if text else None).evidence
                for c in candidates]

    def _held_out(self, kind: str, keypoints: bool, text: bool) -> list[tuple[int, scoring.HeldOut, list]]:
        out = []
        for i, candidates in self._lists[kind]:
            own_id = self.product_ids[self.codes[i]]
            own = next((j for j, c in enumerate(candidates) if c.product == own_id), None)
            out.append((i, scoring.HeldOut(self._evidence(candidates, keypoints, text), own), candidates))
        return out

    @staticmethod
    def _recall(held: list[tuple[int, scoring.HeldOut, list]]) -> tuple[float, float]:
        hits1 = hits5 = 0
        for _i, h, _c in held:
            order = list(np.argsort(-np.asarray(h.evidence), kind="stable"))
            hits1 += h.own is not None and order[:1] == [h.own]
            hits5 += h.own is not None and h.own in order[:5]
        return hits1 / max(1, len(held)), hits5 / max(1, len(held))

    def report(self) -> QualityReport:
        def mean(values) -> float:
            return float(np.mean(values)) if len(values) else 0.0

        configurations = [("image only", "plain", False, False)]
        if self.rerank:
            configurations.append(("+ keypoints", "plain", True, False))
        if self.text:
            configurations.append(("+ package text", "plain", self.rerank, True))
        used = configurations[-1]
        if self.projection and self._lists["projected"]:
            configurations.append(("+ projection", "projected", self.rerank, self.text))
        measured = {}
        latency = {}
        for name, kind, keypoints, text in configurations:
            held = self._held_out(kind, keypoints, text)
            measured[name] = (self._recall(held) if name != "image only"
                              else (mean([a for a, _ in self._image_only]), mean([b for _, b in self._image_only])))
            stages = ["search"] + (["projection"] if kind == "projected" else []) + (
                ["keypoints"] if keypoints else []) + ([f"text {kind}"] if text else [])
            latency[name] = percentiles([sum(self._ms[i].get(s, 0.0) for s in stages) for i, _h, _c in held])
        projection_kept = ("+ projection" in measured
                           and measured["+ projection"][0] >= measured[used[0]][0] + PROJECTION_GAIN)
        if projection_kept:
            used = configurations[-1]
        elif "+ projection" in measured:
            self.notes.append("this catalog's own projection did not find the right product first more often on its "
                              "held-out photos, so searches do without it")
        held = self._held_out(used[1], used[2], used[3])
        signals = [SignalQuality(name, *measured[name], name == used[0], *latency[name]) for name, *_ in configurations]
        recall_1, recall_5 = measured[used[0]]

        per_category: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
        confusions: list[Confusion] = []
        for i, h, candidates in held:
            own_id = self.product_ids[self.codes[i]]
            order = list(np.argsort(-np.asarray(h.evidence), kind="stable"))
            hit1, hit5 = h.own is not None and order[:1] == [h.own], h.own is not None and h.own in order[:5]
            per_category[self.category_of.get(own_id, "(deleted)")].append((hit1, hit5))
            if not hit1 and order:
                wrong = candidates[order[0]]
                right = candidates[h.own] if h.own is not None else None
                confusions.append(Confusion(
                    own_id, self.photo_keys[i], wrong.product, self.photo_keys[wrong.photo], wrong.cosine,
                    self.photo_keys[right.photo] if right else None, right.cosine if right else float("nan")))
        confusions = sorted(confusions, key=lambda c: -(c.margin if np.isfinite(c.margin) else 9))[:CONFUSIONS_SHOWN]
        categories = [
            CategoryQuality(name, len(hits), mean([a for a, _ in hits]), mean([b for _, b in hits]))
            for name, hits in sorted(per_category.items(), key=lambda item: item[0].casefold())
        ]
        model = bins = None
        try:
            model = scoring.fit(self.model_id, [h for _i, h, _c in held],
                                recall={"recall@1": round(recall_1, 4), "recall@5": round(recall_5, 4)})
            tops = [(float(model.scores(h.evidence).max()), int(np.argmax(h.evidence)) == h.own)
                    for _i, h, _c in held if len(h.evidence)]
            bins = scoring.reliability([s for s, _ in tops], [r for _, r in tops])
        except ValueError as err:
            self.notes.append(f"no score could be fitted: {err}")
        return QualityReport(
            self.model_id, self.rerank, self.done, self.total, self.products_evaluated, recall_1, recall_5,
            None if model is None else model.threshold, categories, confusions,
            self.stopped or not self.finished, self.sampled, list(dict.fromkeys(self.notes)), signals, model,
            bins or [], projection_kept, self.text, *percentiles(self._embed_ms), len(self._embed_ms),
        )


def evaluate(matcher: Matcher, *, rerank: bool | None = None, max_queries: int = MAX_QUERIES,
             progress: Callable[[int, int], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> QualityReport:
    return Evaluation(matcher, rerank=rerank, max_queries=max_queries, latency_photos=LATENCY_PHOTOS).run(
        progress, should_stop)


def report_text(report: QualityReport, name_of: Callable[[str], str] | None = None) -> str:
    """The report for a terminal."""
    name_of = name_of or (lambda product_id: product_id)
    lines = [
        f"model {report.model_id}" + (" · verified by keypoints" if report.rerank else "")
        + f" · {report.queries} of {report.planned} held-out photos of {report.products} products"
        + (" (a sample)" if report.sampled else "") + (" · STOPPED early" if report.stopped else ""),
        f"recall@1 {report.recall_at_1:.1%}   recall@5 {report.recall_at_5:.1%}",
    ]
    if report.embed_p50_ms is not None:
        lines.append(f"a query photo's decoding and embedding: p50 {report.embed_p50_ms:.0f} ms, p95 "
                     f"{report.embed_p95_ms:.0f} ms ({report.embed_photos} photos, one at a time)")
    if report.signals:
        lines.append("")
        lines.append("signals (each added to the ones above)   recall@1  recall@5  ranking p50 / p95 ms")
        lines += [f"  {s.name:<38} {s.recall_at_1:>8.1%}  {s.recall_at_5:>8.1%}  {latency_cell(s):>20}"
                  + ("  <- what searches use" if s.used else "") for s in report.signals]
    if report.score_model is not None:
        model = report.score_model
        lines.append("")
        lines.append(f"score: {score_sentence(model)}")
        if report.calibration:
            lines.append("how often the first result was right, by its score:")
            lines += [f"  {b.low:>4.0%}-{b.high:<4.0%} {b.pairs:>5} results  {b.right:>6.1%} right"
                      for b in report.calibration]
    if report.categories:
        width = max(len(c.category) for c in report.categories)
        lines.append("")
        lines.append(f"{'category':<{width}}  queries  recall@1  recall@5")
        lines += [f"{c.category:<{width}}  {c.queries:>7}  {c.recall_at_1:>8.1%}  {c.recall_at_5:>8.1%}"
                  for c in report.categories]
    if report.confusions:
        lines.append("")
        lines.append("worst confusions (query photo -> wrong product first -> right product):")
        lines += [f"  {c.query_photo} -> {name_of(c.wrong_product)} (image {c.wrong_score:.2f}) -> "
                  f"{name_of(c.query_product)} (image {c.right_score:.2f})" for c in report.confusions]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def latency_cell(signal: SignalQuality) -> str:
    """"p50 / p95" of a signal row's ranking time, in ms ("-" when nothing was timed)."""
    if signal.p50_ms is None or signal.p95_ms is None:
        return "-"
    return f"{signal.p50_ms:.1f} / {signal.p95_ms:.1f}"


def score_sentence(model: scoring.ScoreModel) -> str:
    """The fitted score's meaning in one sentence, for the CLI and the Match quality page."""
    return (f"a match's percentage is how often such a match was right on these held-out photos; the default "
            f"threshold {model.threshold:.0%} still shows {KEEP_TRUE_MATCHES:.0%} of the right products that reach "
            f"the top 5")
