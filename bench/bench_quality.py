"""Match quality of the built-in model, step by step, on real product photos (prints tables; `--json` too).

    python bench/bench_quality.py [--data ../shared/datasets/products-photos] [--steps rmac,rerank,text,projection]
                                  [--cache DIR] [--json out.json]

Two protocols, both with queries that look like a shopper's photo: each query photo gets a small random crop
(80-95% of each side), a small rotation (up to ±8°) and a JPEG re-encode (quality 60-85), seeded per photo.
- one reference: each product's "gallery" photo (metadata.csv's suggested_role) is the catalog; every other
  photo, perturbed, is a query (84 references, 314 queries).
- all references: every photo in turn is held out and perturbed as the query; the product's other photos (and
  every other product's photos) are the catalog, and products are ranked by their best photo (398 queries).
A hit is the query's own product; recall@k is the share of queries with it in the first k products.

Steps (each adds one thing to the one before; any of them with --steps, the last four by default):
- baseline (224 px centre crop, average pool: the descriptor before issue 13), aspect (384 px shorter side, aspect
  kept), rmac (regional max-pooling), flip (mirror image added): the plain cosine, each product by its best photo.
- rerank: on the rmac descriptor (flip did not help, so the shipped descriptor leaves it out), the top 20 verified
  with SIFT + RANSAC by their best 2 photos, keypoints of the catalog computed beforehand as at add time. Two rows:
  `rerank-old`, the old fixed bonus (cos + 0.002 an inlier, at most 50, from 10 on), and `rerank`, a search as the
  app runs it (vpm/core/ranking.py): the index's best products, verified, ordered by the score of the shipped evidence
  (cos + KEYPOINT_WEIGHT × keypoints, vpm/core/scoring.py).
- text: + package text as a search reads it: the catalog's photos read (OCR) beforehand as at add time, the query's
  own photo (quickly, as the app reads a query) only when the runner-up's evidence is within ranking.TEXT_MARGIN of
  the first's. Its hit rate (the share of queries whose text was read) and the query's OCR time are printed.
- projection: + the catalog's projection (vpm/core/projection.py) on the index's first POOL products. All references
  only: fitted for each query without its photo, in the 5 photo folds vpm/core/evaluate.py uses (seeded; a query in
  fold k goes through the fit on the catalog photos outside fold k). A catalog of one photo per product has no
  pairs to fit on, so for one reference it does not apply (the row repeats `text`'s path, marked n/a).

For the last step, also: how often the first result was right at each score (vpm/core/scoring.py's `reliability`), with
the built-in curve for one reference, and for all references with a curve fitted (`scoring.fit`) on the catalog's
own unperturbed held-out photos of the other folds, as `vpm calibrate` sees them; how many lists are out of the
order of their shown whole percents (must be none); and how many right products in the top 5 the default
threshold would hide.

Nothing is kept on disk between runs unless `--cache DIR` names a folder for the catalog's keypoints and OCR text
(computed beforehand, untimed: only the iterations get faster).

Latency is one query's whole path, timed alone: decode, embed, rank, and from `rerank` on the query's keypoints,
their verification and the scoring, with `text` the query's OCR when it is read, with `projection` the projection.
Steps on one descriptor share each query's decode and embedding (and keypoints): those are timed once and added to
each step's own part, and a query's OCR is timed the first time it is read and added again to each later step that
reads it. The machine's load average is printed: wall-clock
figures from a busy machine are pessimistic. The CPU time of the same path (all of this process's threads) is
printed beside them: it hardly depends on the load, and on an idle 2-core machine the wall-clock time is about that
or less. Torch runs with OMP_WAIT_POLICY=PASSIVE, as the app does (vpm.models.embeddings sets it before torch loads).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import csv
import hashlib
import io
import itertools
import json
import math
import random
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared_photos import require_photos

from vpm.core import augmented, ranking, scoring
from vpm.core import projection as projections
from vpm.core import rerank as verification
from vpm.core.catalog import Photo, Product
from vpm.core.evaluate import FOLDS
from vpm.core.images import decode_image
from vpm.core.results import Match
from vpm.core.vector_index import best_per_product as index_best_per_product
from vpm.models import package_text
from vpm.models.embeddings import (
    LEGACY_DESCRIPTOR,
    Descriptor,
    EfficientNetEmbedder,
    _efficientnet_network,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "products-photos"
RMAC = Descriptor(pooling="rmac", flip=False)  # the shipped descriptor: what rerank and later steps build on
STEPS = {
    "baseline": LEGACY_DESCRIPTOR,
    "aspect": Descriptor(pooling="avg", flip=False),
    "rmac": RMAC,
    "flip": Descriptor(pooling="rmac", flip=True),
    "rerank": RMAC,
    "text": RMAC,
    "projection": RMAC,
}
DEFAULT_STEPS = "rmac,rerank,text,projection"  # the old descriptor steps are slow and settled: asked for by name
# The rows each step adds: "plain" ranks by the cosine alone; the others are named after their row.
ROWS = {"baseline": ["baseline"], "aspect": ["aspect"], "rmac": ["rmac"], "flip": ["flip"],
        "rerank": ["rerank-old", "rerank"], "text": ["text"], "projection": ["projection"]}
PLAIN = {"baseline", "aspect", "rmac", "flip"}
LABELS = {
    "baseline": "baseline: 224 centre crop, average pool",
    "aspect": "+ 384 px, aspect kept",
    "rmac": "+ R-MAC",
    "flip": "+ flip",
    "rerank-old": "R-MAC + rerank top 20, old bonus (0.002 an inlier)",
    "rerank": "R-MAC + verify top 20, cos + 0.15 × keypoints",
    "text": "+ package text (read when it can change the first)",
    "projection": "+ projection (5 folds)",
}
ONE, ALL = "one reference", "all references"
TOP_K = 10  # the results a search asks for by default: the app's candidate list is at least RERANK_TOP anyway
OLD_BONUS, OLD_MIN_INLIERS, OLD_MAX_INLIERS = 0.002, 10, 50  # the fixed bonus before vpm/core/scoring.py


def perturb(data: bytes, seed: int) -> bytes:
    """A small crop, a small rotation and a JPEG re-encode, the same for a given seed."""
    rng = random.Random(seed)
    image = decode_image(data).image
    w, h = image.size
    cw, ch = int(w * rng.uniform(0.8, 0.95)), int(h * rng.uniform(0.8, 0.95))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = image.crop((left, top, left + cw, top + ch))
    image = image.rotate(rng.uniform(-8, 8), resample=3, expand=False, fillcolor=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=rng.randint(60, 85))
    return out.getvalue()


def best_per_product(scores: np.ndarray, product_codes: np.ndarray, n_products: int) -> np.ndarray:
    """Each product's best score (-inf for a product with no photo among the references)."""
    best = np.full(n_products, -np.inf, dtype=np.float32)
    np.maximum.at(best, product_codes, scores)
    return best


@dataclass
class Data:
    """The photos, their products, the queries, and each protocol's catalog as `Product`s for vpm/core/ranking.py."""

    rows: list[dict]
    originals: list[bytes]
    queries: list[bytes]
    product_ids: list[str]
    codes: np.ndarray  # each photo's product, as a position in product_ids
    keys: list[str]  # each photo's key (its file name)
    gallery: np.ndarray  # bool: the one-reference catalog
    folds: np.ndarray  # each photo's fold for the projection and the fitted curve (as vpm/core/evaluate.py)
    catalog: dict[str, dict[str, Product]] = field(default_factory=dict)  # protocol -> product id -> product
    without: list[Product] = field(default_factory=list)  # photo i's product without photo i (all references)

    def __post_init__(self) -> None:
        shas = [hashlib.sha256(d).hexdigest() for d in self.originals]
        for protocol, allowed in ((ONE, self.gallery), (ALL, np.ones(len(self.rows), bool))):
            self.catalog[protocol] = {
                pid: self._product(c, list(np.flatnonzero(allowed & (self.codes == c))), shas)
                for c, pid in enumerate(self.product_ids)}
        self.without = [self._product(self.codes[i], [r for r in np.flatnonzero(self.codes == self.codes[i]) if r != i],
                                      shas) for i in range(len(self.rows))]

    def _product(self, code: int, photo_rows: list[int], shas: list[str]) -> Product:
        first = self.rows[photo_rows[0]] if photo_rows else self.rows[int(np.flatnonzero(self.codes == code)[0])]
        return Product(id=self.product_ids[code], name=first["name"][:200] or "?", category=first["category"],
                       photos=[Photo(key=self.keys[r], sha256=shas[r]) for r in photo_rows])

    def catalog_rows(self, protocol: str, i: int) -> np.ndarray:
        """The photos the query's catalog holds: never its own photo."""
        allowed = self.gallery.copy() if protocol == ONE else np.ones(len(self.rows), bool)
        allowed[i] = False
        return np.flatnonzero(allowed)

    def product(self, protocol: str, i: int, product_id: str) -> Product:
        if protocol == ALL and product_id == self.product_ids[self.codes[i]]:
            return self.without[i]
        return self.catalog[protocol][product_id]


@dataclass
class Tally:
    """One row's measurements in one protocol."""

    hits1: list[bool] = field(default_factory=list)
    hits5: list[bool] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    categories: dict[str, list[tuple[bool, bool]]] = field(default_factory=lambda: defaultdict(list))
    text_read: list[bool] = field(default_factory=list)
    ocr_ms: list[float] = field(default_factory=list)  # the query's OCR, when read
    # (query photo, evidence of the list in its shown order, position of the query's own product or None)
    lists: list[tuple[int, list[float], int | None]] = field(default_factory=list)

    def summary(self) -> dict:
        def pct(values, q):
            return round(float(np.percentile(values, q)), 1) if values else None

        return {
            "queries": len(self.hits1),
            "recall@1": round(float(np.mean(self.hits1)), 3),
            "recall@5": round(float(np.mean(self.hits5)), 3),
            "p50_ms": pct(self.ms, 50), "p95_ms": pct(self.ms, 95),
            "cpu_p50_ms": pct(self.cpu_ms, 50), "cpu_p95_ms": pct(self.cpu_ms, 95),
            "text_read": round(float(np.mean(self.text_read)), 3) if self.text_read else None,
            "query_ocr_p50_ms": pct(self.ocr_ms, 50),
            "categories": {c: [round(float(np.mean([a for a, _ in v])), 3), round(float(np.mean([b for _, b in v])), 3),
                               len(v)] for c, v in sorted(self.categories.items())},
        }


class Catalog:
    """One descriptor's catalog: its vectors, plus the keypoints and texts stored beside them, as ranking reads them."""

    def __init__(self, data: Data, vectors: np.ndarray, features, texts, model: scoring.ScoreModel) -> None:
        self.data, self.vectors, self.features, self.texts, self.model = data, vectors, features, texts, model
        self.row_of = {k: r for r, k in enumerate(data.keys)}
        self.projections: dict[str, dict[int, projections.Projection | None]] = {}

    def stores(self, text: bool) -> ranking.Stores:
        # Each protocol's `Product`s only name the photos its catalog holds, so every key asked for is allowed.
        def vectors_for(keys):
            return {k: self.vectors[self.row_of[k]] for k in keys}

        def features_for(keys):
            return {k: self.features[self.row_of[k]] for k in keys}

        def texts_for(keys):
            return {k: self.texts[self.row_of[k]] for k in keys}

        return ranking.Stores(vectors_for, features_for if self.features is not None else None,
                              texts_for if text else None)

    def fit_projections(self, embedder) -> None:
        """Per protocol and fold: the projection fitted on that protocol's catalog photos outside the fold. The
        one-reference catalog has no two photos of one product: as the app does (vpm/core/augmented.py), it is fitted on
        two shopper-like views of each gallery photo, and kept only when the second views find their own product
        first more often through it (the queries are never gallery photos, so one fit serves every fold)."""
        started = time.perf_counter()
        for protocol, base in ((ONE, self.data.gallery), (ALL, np.ones(len(self.data.rows), bool))):
            self.projections[protocol] = {}
            for k in range(FOLDS):
                keep = base & (self.data.folds != k)
                self.projections[protocol][k] = projections.fit(self.vectors[keep], self.data.codes[keep])
        fitted = {p: sum(v is not None for v in f.values()) for p, f in self.projections.items()}
        print(f"projection: {fitted[ALL]} of {FOLDS} folds fitted for all references "
              f"({time.perf_counter() - started:.1f} s)", flush=True)
        if not fitted[ONE]:
            self.views_projection(embedder)

    def views_projection(self, embedder) -> None:
        started = time.perf_counter()
        rows = np.flatnonzero(self.data.gallery)
        first, second = [], []
        for r in rows:
            a, b = augmented.views(decode_image(self.data.originals[r]).image,
                                   int(hashlib.sha256(self.data.keys[r].encode()).hexdigest()[:8], 16))
            va, vb = embedder.embed_images([a, b])
            first.append(va)
            second.append(vb)
        catalog, first, second = self.vectors[rows], np.asarray(first), np.asarray(second)
        codes = self.data.codes[rows]
        fitted = projections.fit(np.concatenate([catalog, first]), np.concatenate([codes, codes]))
        plain = augmented._recall(catalog, second)
        through = augmented._recall(fitted.apply(catalog), fitted.apply(second)) if fitted is not None else plain
        kept = fitted if fitted is not None and augmented.helps(catalog, second, fitted) else None
        self.projections[ONE] = dict.fromkeys(range(FOLDS), kept)
        spread = (augmented.separation(catalog, second),
                  augmented.separation(fitted.apply(catalog), fitted.apply(second)) if fitted is not None else 0.0)
        print(f"projection, one reference: fitted on two views of each of the {len(rows)} gallery photos "
              f"({time.perf_counter() - started:.1f} s); second views' recall@1 {plain:.3f} -> {through:.3f}, "
              f"separation {spread[0]:.2f} -> {spread[1]:.2f}: "
              + ("kept" if kept is not None else "not kept (its row repeats `text`)"), flush=True)

    def search(self, protocol: str, i: int, vector: np.ndarray, features, *, text: bool, project: bool,
               reader=None) -> ranking.Ranked:
        """One photo search as the app runs it: the index's best products by their best photo, then ranking."""
        data = self.data
        projection = self.projections[protocol][int(data.folds[i])] if project else None
        k = max(TOP_K, verification.RERANK_TOP, projections.POOL if projection is not None else 0)
        scores = self.vectors @ vector
        hits = index_best_per_product(scores, data.codes, data.product_ids, data.keys, data.catalog_rows(protocol, i),
                                      k, None).hits
        matches = [Match(data.product(protocol, i, h.product_id), h.score, h.photo_key, h.photo_key, None,
                         similarity=h.score) for h in hits]
        return ranking.rank_photo_query(matches, vector, self.model, self.stores(text), projection=projection,
                                        query_features=features, read_query_text=reader if text else None)


class QueryText:
    """One query's package text as ranking asks for it: read (OCR) the first time, and that time charged again to
    every later path that asks, since each path timed alone would have read it itself."""

    def __init__(self, image) -> None:
        self.image = image  # the decoded query photo, as the app keeps it for its reader
        self.first: tuple[str, float, float] | None = None  # the text, wall ms, CPU ms of the one real read
        self.asked = False  # by the path being timed
        self.charged = (0.0, 0.0)  # the earlier read's wall and CPU ms, when this path asked again

    def start(self) -> None:
        self.asked, self.charged = False, (0.0, 0.0)

    def __call__(self) -> str:
        self.asked = True
        if self.first is not None:
            self.charged = self.first[1:]
            return self.first[0]
        t, c = time.perf_counter(), time.process_time()
        text = package_text.read(self.image, quick=True)  # as the app reads a query photo: a person is waiting
        self.first = (text, (time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000)
        return text


def plain_order(catalog: Catalog, protocol: str, i: int, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                         np.ndarray, np.ndarray]:
    """Products by their best photo's cosine: (order, best per product, the catalog's rows, their cosines)."""
    data = catalog.data
    idx = data.catalog_rows(protocol, i)
    scores = catalog.vectors[idx] @ vector
    best = best_per_product(scores, data.codes[idx], len(data.product_ids))
    order = np.argsort(-best)
    return order[np.isfinite(best[order])], best, idx, scores


def old_rerank(catalog: Catalog, protocol: str, i: int, vector: np.ndarray, features) -> np.ndarray:
    """The top 20 verified by their best photos by cosine, re-ordered by cos + the old fixed bonus."""
    order, best, idx, scores = plain_order(catalog, protocol, i, vector)
    codes = catalog.data.codes[idx]
    top = order[: verification.RERANK_TOP]
    inliers = []
    with verification.one_blas_thread():
        for p in top:
            local = np.flatnonzero(codes == p)
            photos = local[np.argsort(-scores[local])][: verification.RERANK_PHOTOS]
            inliers.append(max((verification.verify(features, catalog.features[idx[r]]).inliers for r in photos),
                               default=0) if features is not None and len(features) >= verification.MIN_INLIERS else 0)
    combined = [float(best[p]) + (OLD_BONUS * min(n, OLD_MAX_INLIERS) if n >= OLD_MIN_INLIERS else 0.0)
                for p, n in zip(top, inliers, strict=True)]
    reordered = sorted(range(len(top)), key=lambda j: (-combined[j], j))
    return np.concatenate([top[reordered], order[verification.RERANK_TOP:]])


def run_group(data: Data, embedder, names: list[str], features, texts, calibrate: str | None) -> dict[str, dict]:
    """Every row of `names` on one descriptor: the catalog embedded once, each query decoded and embedded once."""
    started = time.perf_counter()
    vectors = embedder.embed_images([decode_image(d).image for d in data.originals], batch_size=16)
    index_img_per_s = round(len(data.originals) / (time.perf_counter() - started), 1)
    catalog = Catalog(data, vectors, features, texts, scoring.default_model(embedder.model_id))
    if "projection" in names:
        catalog.fit_projections(embedder)
    needs_keypoints = any(n not in PLAIN for n in names)
    tallies = {(n, p): Tally() for n in names for p in (ONE, ALL)}
    load = os.getloadavg()[0]
    for i, query in enumerate(data.queries):
        t0, c0 = time.perf_counter(), time.process_time()
        image = decode_image(query).image
        vector = embedder.embed_images([image])[0]
        embed_ms, embed_cpu = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
        query_features, keypoint_ms, keypoint_cpu = None, 0.0, 0.0
        if needs_keypoints:
            t0, c0 = time.perf_counter(), time.process_time()
            query_features = verification.extract(image)
            keypoint_ms, keypoint_cpu = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
        own = data.product_ids[data.codes[i]]
        reader = QueryText(image)
        for protocol in ([ONE] if not data.gallery[i] else []) + [ALL]:
            for name in names:
                reader.start()
                t1, c1 = time.perf_counter(), time.process_time()
                evidence: list[float] | None = None
                read = None
                if name in PLAIN:
                    order, best, _idx, _scores = plain_order(catalog, protocol, i, vector)
                    ranked = [data.product_ids[p] for p in order]
                    evidence = [float(best[p]) for p in order[: verification.RERANK_TOP]]
                elif name == "rerank-old":
                    ranked = [data.product_ids[p] for p in old_rerank(catalog, protocol, i, vector, query_features)]
                else:
                    result = catalog.search(protocol, i, vector, query_features, text=name in ("text", "projection"),
                                            project=name == "projection", reader=reader)
                    ranked = [m.product.id for m in result.matches]
                    evidence = [scoring.Signals(m.similarity, m.inliers, m.text).evidence for m in result.matches]
                    read = reader.asked if name in ("text", "projection") else None
                ms = embed_ms + (time.perf_counter() - t1) * 1000 + reader.charged[0]
                cpu = embed_cpu + (time.process_time() - c1) * 1000 + reader.charged[1]
                if name not in PLAIN:
                    ms, cpu = ms + keypoint_ms, cpu + keypoint_cpu
                tally = tallies[(name, protocol)]
                hit1, hit5 = ranked[:1] == [own], own in ranked[:5]
                tally.hits1.append(hit1)
                tally.hits5.append(hit5)
                tally.ms.append(ms)
                tally.cpu_ms.append(cpu)
                tally.categories[data.rows[i]["category"]].append((hit1, hit5))
                if read is not None:
                    tally.text_read.append(read)
                    if read:
                        tally.ocr_ms.append(reader.first[1])
                if evidence is not None:
                    tally.lists.append((i, evidence, ranked.index(own) if own in ranked[: len(evidence)] else None))
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(data.queries)} queries", file=sys.stderr, flush=True)
    out = {}
    for name in names:
        out[name] = {"step": name, "label": LABELS[name], "model_id": embedder.model_id,
                     "index_img_per_s": index_img_per_s, "load_average": round(load, 1),
                     ONE: tallies[(name, ONE)].summary(), ALL: tallies[(name, ALL)].summary()}
        if name == "projection":
            out[name][ONE]["not_applicable"] = all(v is None for v in catalog.projections[ONE].values())
    if calibrate in names:
        out[calibrate]["calibration"] = calibration(catalog, calibrate, tallies[(calibrate, ONE)],
                                                    tallies[(calibrate, ALL)])
    return out


def held_out_originals(catalog: Catalog, name: str) -> list[scoring.HeldOut]:
    """Each unperturbed catalog photo held out against all the others, with the signals `name` uses: the lists
    `vpm calibrate` fits on (vpm/core/evaluate.py: the top RERANK_TOP, text compared whenever the photo has some)."""
    data = catalog.data
    keypoints = name not in PLAIN
    text = name in ("text", "projection")
    with_text = catalog.stores(True)
    held = []
    for i in range(len(data.rows)):
        own = data.product_ids[data.codes[i]]
        result = catalog.search(ALL, i, catalog.vectors[i], catalog.features[i] if keypoints else None, text=False,
                                project=name == "projection")
        top = result.matches[: verification.RERANK_TOP]
        similarity: dict[str, float] = {}
        if text and catalog.texts[i]:
            _texts, similarity = ranking._compare_text(top, catalog.texts[i], with_text)
        evidence = [scoring.Signals(m.similarity, m.inliers, similarity.get(m.product.id)).evidence for m in top]
        ids = [m.product.id for m in top]
        held.append(scoring.HeldOut(evidence, ids.index(own) if own in ids else None))
    return held


def calibration(catalog: Catalog, name: str, one: Tally, every: Tally) -> dict:
    """The first result's score against whether it was right, the lists' shown order, what the threshold hides."""
    started = time.perf_counter()
    held = held_out_originals(catalog, name)
    folds = catalog.data.folds
    curves = {}
    try:
        for k in range(FOLDS):  # cross-fitted, like the projection: a query's curve never saw its own photo held out
            curves[k] = scoring.fit(catalog.model.model_id, [h for j, h in enumerate(held) if folds[j] != k])
    except ValueError as err:  # a fit can refuse (no stable curve): the built-in curve's figures still stand
        print(f"calibration: no curve could be fitted on the held-out photos ({err})", flush=True)
        curves = {}
    else:
        print(f"calibration: {len(held)} unperturbed held-out photos, {FOLDS} curves fitted on the other folds "
              f"({time.perf_counter() - started:.1f} s)", flush=True)
    out = {}
    for protocol, tally, model_of in ((ONE, one, lambda _i: catalog.model),
                                      (ALL, every, lambda i: curves[int(folds[i])])):
        if protocol == ALL and not curves:
            continue
        firsts, rights, unordered, in_top5, hidden = [], [], 0, 0, 0
        for i, evidence, own in tally.lists:
            if not evidence:
                continue
            model = model_of(i)
            scores = model.scores(evidence)  # the list in its shown order
            shown = [math.floor(s * 100) for s in scores]
            unordered += any(b > a for a, b in itertools.pairwise(shown))
            firsts.append(float(scores[0]))
            rights.append(own == 0)
            if own is not None and own < 5:
                in_top5 += 1
                hidden += bool(scores[own] < model.threshold - 1e-9)
        bins = scoring.reliability(firsts, rights)
        thresholds = sorted({model_of(i).threshold for i, _e, _o in tally.lists})
        out[protocol] = {
            "curve": (f"{catalog.model.source}, {catalog.model.model_id}" + (
                " (fitted without a projection: through the views' projection the app fits its own curve from the "
                "views, so this table only shows the order)" if name == "projection"
                and any(v is not None for v in catalog.projections.get(ONE, {}).values()) else ""))
            if protocol == ONE
            else f"fitted on the other {FOLDS - 1} folds' unperturbed held-out photos",
            "thresholds": thresholds,
            "bins": [b.as_dict() for b in bins],
            "lists": len(firsts), "lists_out_of_order": unordered,
            "right_in_top5": in_top5, "hidden_by_threshold": hidden,
        }
    return out


def catalog_keypoints(data: Data, cache: Path | None) -> list:
    """Each catalog photo's keypoints, computed beforehand as at add time (from --cache when there)."""
    path = cache / f"features-{verification.FEATURES_ID}-{_digest(data)}.npz" if cache else None
    if path is not None and path.exists():
        with np.load(path) as z:
            found = [verification.LocalFeatures(z[f"p{i}"], z[f"d{i}"], int(z[f"s{i}"][0]), int(z[f"s{i}"][1]))
                     for i in range(len(data.originals))]
        print(f"keypoints of {len(found)} catalog photos: from {path}")
        return found
    started = time.perf_counter()
    found = [verification.extract(decode_image(d).image) for d in data.originals]
    print(f"keypoints of {len(found)} catalog photos: {time.perf_counter() - started:.1f} s "
          f"(mean {np.mean([len(f) for f in found]):.0f} a photo)", flush=True)
    if path is not None:
        arrays = {}
        for i, f in enumerate(found):
            arrays.update({f"p{i}": f.points, f"d{i}": f.descriptors, f"s{i}": np.array([f.width, f.height])})
        np.savez(path, **arrays)
    return found


def catalog_texts(data: Data, cache: Path | None) -> list[str]:
    """Each catalog photo's package text, read beforehand as at add time (from --cache when there)."""
    if not package_text.available():
        print("package text: OCR is not available here (rapidocr): no text is read, `text` repeats `rerank`")
        return [""] * len(data.originals)
    path = cache / f"text-{package_text.TEXT_ID}-{_digest(data)}.json" if cache else None
    if path is not None and path.exists():
        print(f"package text of {len(data.originals)} catalog photos: from {path}")
        return json.loads(path.read_text())
    started, cpu = time.perf_counter(), time.process_time()
    texts = [package_text.read(decode_image(d).image) for d in data.originals]
    wall = time.perf_counter() - started
    print(f"package text of {len(texts)} catalog photos: {wall:.1f} s ({wall / len(texts) * 1000:.0f} ms a photo, "
          f"CPU {(time.process_time() - cpu) / len(texts) * 1000:.0f} ms); text read on "
          f"{sum(bool(t.strip()) for t in texts)} of them", flush=True)
    if path is not None:
        path.write_text(json.dumps(texts))
    return texts


def _digest(data: Data) -> str:
    return hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in data.originals)).hexdigest()[:16]


def _cell(a: dict, key: str, digits: int = 0) -> str:
    return "–" if a.get(key) is None else f"{a[key]:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with metadata.csv and the photos")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help=f"comma-separated, from {', '.join(STEPS)}")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--cache", type=Path, help="keep the catalog's keypoints and OCR text here between runs")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    require_photos(args.data, metadata=True, option="--data")
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {', '.join(unknown)}: choose from {', '.join(STEPS)}")
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)

    with open(args.data / "metadata.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    product_ids = sorted({r["product_id"] for r in rows})
    originals = [(args.data / r["file"]).read_bytes() for r in rows]
    # Product ids as the catalog allows them (letters, digits, - and _): "abo:B074M5HPBD" -> "abo_B074M5HPBD".
    safe_ids = [re.sub(r"[^A-Za-z0-9_-]", "_", pid) for pid in product_ids]
    if len(set(safe_ids)) != len(safe_ids):
        raise SystemExit("two product ids differ only in characters a catalog id cannot hold")
    data = Data(
        rows, originals, [perturb(d, args.seed * 100_003 + i) for i, d in enumerate(originals)], safe_ids,
        np.array([product_ids.index(r["product_id"]) for r in rows]), [r["file"] for r in rows],
        np.array([r["suggested_role"] == "gallery" for r in rows]),
        np.random.default_rng(args.seed).integers(0, FOLDS, len(rows)),  # as vpm/core/evaluate.py draws its folds
    )
    network = _efficientnet_network("cpu")
    import torch

    print(f"{len(rows)} photos of {len(product_ids)} products; torch {torch.get_num_threads()} threads; "
          f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    names = [n for s in steps for n in ROWS[s]]
    features = catalog_keypoints(data, args.cache) if any(n not in PLAIN for n in names) else None
    texts = catalog_texts(data, args.cache) if {"text", "projection"} & set(names) else None
    groups: dict[Descriptor, list[str]] = {}  # rows on one descriptor share the embeddings
    for s in steps:
        group = groups.setdefault(STEPS[s], [])
        group += [n for n in ROWS[s] if n not in group]
    found: dict[str, dict] = {}
    for descriptor, group in groups.items():
        embedder = EfficientNetEmbedder(network, "cpu", descriptor=descriptor)
        found.update(run_group(data, embedder, group, features, texts, names[-1]))
        for n in group:
            r = found[n]
            a, b = r[ONE], r[ALL]
            print(f"{LABELS[n]:<52} one ref: r@1 {a['recall@1']:.3f} r@5 {a['recall@5']:.3f} "
                  f"p50 {a['p50_ms']:.0f} p95 {a['p95_ms']:.0f} ms | all refs: r@1 {b['recall@1']:.3f} "
                  f"r@5 {b['recall@5']:.3f} p50 {b['p50_ms']:.0f} p95 {b['p95_ms']:.0f} ms | "
                  f"index {r['index_img_per_s']} img/s | load {r['load_average']:.1f}", flush=True)
    results = [found[n] for n in dict.fromkeys(names)]

    print()
    print("| step | one ref. r@1 | r@5 | p50 / p95 ms | CPU p50 / p95 ms | all refs r@1 | r@5 | p50 / p95 ms | "
          "CPU p50 / p95 ms | index img/s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        a, b = r[ONE], r[ALL]
        na = " (n/a)" if a.get("not_applicable") else ""
        print(f"| {r['label']} | {a['recall@1']:.3f}{na} | {a['recall@5']:.3f}{na} | {a['p50_ms']:.0f} / "
              f"{a['p95_ms']:.0f} | {a['cpu_p50_ms']:.0f} / {a['cpu_p95_ms']:.0f} | {b['recall@1']:.3f} | "
              f"{b['recall@5']:.3f} | {b['p50_ms']:.0f} / {b['p95_ms']:.0f} | {b['cpu_p50_ms']:.0f} / "
              f"{b['cpu_p95_ms']:.0f} | {r['index_img_per_s']} | {r['load_average']} |")
    if any(r[ONE].get("not_applicable") for r in results):
        print("(n/a) one reference: a catalog of one photo per product has no pairs to fit a projection on; the row "
              "runs `text`'s path")
    for r in results:
        if r[ALL].get("text_read") is not None:
            print(f"\n{r['label']}: the query's text read (runner-up within TEXT_MARGIN {ranking.TEXT_MARGIN} of "
                  f"the first) for " + ", ".join(
                      f"{r[p]['text_read']:.1%} of {r[p]['queries']} {p} queries (OCR p50 "
                      f"{_cell(r[p], 'query_ocr_p50_ms')} ms)" for p in (ONE, ALL)))
    if results:
        last = results[-1]
        print(f"\nper category ({last['label']}): recall@1 / recall@5 / queries")
        for protocol in (ONE, ALL):
            print(f"  {protocol}:")
            for category, (r1, r5, n) in last[protocol]["categories"].items():
                print(f"    {category:<26} {r1:.3f} {r5:.3f} {n:>4}")
        for protocol, c in last.get("calibration", {}).items():
            print(f"\nhow often the first result was right, by its score ({last['label']}, {protocol}, "
                  f"curve: {c['curve']}):")
            for b in c["bins"]:
                print(f"  {b['low']:>4.0%}-{b['high']:<4.0%} {b['pairs']:>5} results  {b['right']:>6.1%} right")
            print(f"  lists out of the order of their shown whole percents: {c['lists_out_of_order']} of "
                  f"{c['lists']}")
            print(f"  right products in the top 5 the default threshold ({', '.join(f'{t:.0%}' for t in c['thresholds'])})"
                  f" would hide: {c['hidden_by_threshold']} of {c['right_in_top5']} "
                  f"({c['hidden_by_threshold'] / max(1, c['right_in_top5']):.1%})")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
