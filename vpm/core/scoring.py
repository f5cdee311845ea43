"""One score per search result: the signals fused, then calibrated so that "80%" means right about 80% of the time.

A photo search has up to three signals for each candidate product:
- the image similarity: the descriptor's cosine (through the catalog's projection when it has one, vpm/core/projection.py);
- the keypoint matches that verify it (vpm/core/rerank.py), as a share of MAX_INLIERS_COUNTED from MIN_INLIERS on;
- the package text both photos read (vpm/models/package_text.py), a similarity in [0, 1].

They are added into one evidence figure, `cosine + KEYPOINT_WEIGHT * keypoints + TEXT_WEIGHT * text`, by weights
measured on held-out photos (bench/bench_quality.py). How far a product's evidence stands above the best other
candidate's (its margin) says far more about whether it is right than the evidence alone (the built-in model's
cosines run high for every product), so the probability is a logistic curve of both,
`sigmoid(slope * evidence + margin_slope * margin + offset)`, fitted on the catalog's own held-out photos (`vpm
calibrate`; redone after an import), with photos of products the catalog lacks among them, so that a strong-looking
answer for something not in the catalog is not called certain. Both slopes are kept positive, so the probability
orders a list exactly as the evidence does. The list is ordered by it, the card shows it, the threshold filters it:
one number, everywhere. Before a catalog has a fit of
its own, the model's built-in curve (fitted on the sample photos) or a prior from its typical cosines is used, and
the source says which.

Words (a text query) have one signal, the text-image cosine, and no held-out pairs to fit: their score stays the
cosine, and `SearchResponse.score_kind` says so.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vpm.core.rerank import MAX_INLIERS_COUNTED, MIN_INLIERS
from vpm.models.builtin_model import BUILT_IN_THRESHOLDS
from vpm.models.clip_model import CLIP_THRESHOLDS
from vpm.models.embedder_base import Thresholds

# Measured on the 398 sample photos (bench/bench_quality.py, both protocols): the keypoints' and the text's
# weights beside a cosine. Verification re-orders close calls and text separates brands; neither overrules a
# clearly better image match.
KEYPOINT_WEIGHT = 0.15
TEXT_WEIGHT = 0.15
KEEP_TRUE_MATCHES = 0.95  # the default threshold keeps this share of the right products found in the top 5 ...
# ... of shoppers' photos. A fit sees the catalog's own photos, which match more cleanly: fitted to keep 95% of
# those, the threshold hid 6.6-8.6% on the bench's shopper-like photos, so the fit keeps this share instead.
FIT_KEEP = 0.98
MARGIN_CAP = 0.1  # a lead over the next candidate beyond this says nothing more (and a lone candidate has no rival)
ABSENT_SHARE = 0.25  # in a fit, photos of products the catalog lacks count this much against each one it has
RIDGE = 0.1  # on the fitted slopes; the sample photos' fit hardly moves (slopes ~4 and ~20 on thousands of pairs)
CALIBRATION_VERSION = 1


@dataclass(frozen=True)
class Signals:
    """What is known of one candidate: its cosine, its verified keypoints (None: not verified), its text (None:
    not read on both photos)."""

    cosine: float
    inliers: int | None = None
    text: float | None = None

    @property
    def keypoints(self) -> float:
        """The verified keypoints as a share in [0, 1]: 0 below MIN_INLIERS (what unrelated photos produce)."""
        if self.inliers is None or self.inliers < MIN_INLIERS:
            return 0.0
        return min(self.inliers, MAX_INLIERS_COUNTED) / MAX_INLIERS_COUNTED

    @property
    def evidence(self) -> float:
        return evidence(self.cosine, self.keypoints, self.text or 0.0)


def evidence(cosine, keypoints=0.0, text=0.0):
    """The fused figure the curve maps to a probability (numbers or numpy arrays)."""
    return cosine + KEYPOINT_WEIGHT * keypoints + TEXT_WEIGHT * text


def margins(evidence_values: np.ndarray) -> np.ndarray:
    """Each candidate's evidence minus the best other candidate's, capped at MARGIN_CAP (a lone candidate gets the
    cap: nothing rivals it, which is all a list of one can say)."""
    e = np.asarray(evidence_values, dtype=np.float64)
    if len(e) == 0:
        return e
    if len(e) == 1:
        return np.array([MARGIN_CAP])
    order = np.argsort(-e, kind="stable")
    first, second = e[order[0]], e[order[1]]
    rival = np.full(len(e), first)
    rival[order[0]] = second
    return np.minimum(e - rival, MARGIN_CAP)


@dataclass(frozen=True)
class ScoreModel:
    """The calibration of one model on one catalog: sigmoid(slope * evidence + margin_slope * margin + offset)."""

    model_id: str
    slope: float
    margin_slope: float
    offset: float
    threshold: float  # the default threshold, as a probability: keeps KEEP_TRUE_MATCHES of the top-5 right products
    source: str  # "catalog" (its held-out photos), "views" (views of its photos), "built-in" (sample photos), "prior"
    queries: int = 0  # held-out photos the fit saw
    pairs: int = 0  # (photo, candidate product) pairs the fit saw
    projection: str | None = None  # the projection's digest the fit was made through (vpm/core/projection.py)
    photos: int = 0  # the catalog's photos when it was fitted (an import refits once it has grown by over a tenth)
    fitted_at: str = ""
    recall: dict[str, float] = field(default_factory=dict)  # what the fit measured, for people
    version: int = CALIBRATION_VERSION

    def scores(self, evidence_values: Sequence[float]) -> np.ndarray:
        """The probabilities of one list of candidates (their evidence, in any order), each against its rivals."""
        e = np.asarray(evidence_values, dtype=np.float64)
        return self.probability(e, margins(e))

    def probability(self, evidence_values, margin_values) -> np.ndarray:
        z = self.slope * np.asarray(evidence_values, np.float64) + self.margin_slope * np.asarray(margin_values)
        return 1.0 / (1.0 + np.exp(-np.clip(z + self.offset, -60, 60)))

    @property
    def described(self) -> str:
        """Where the curve comes from, for a person: shown beside the threshold slider."""
        if self.source == "catalog":
            return f"fitted on {self.queries} held-out photos of this catalog"
        if self.source == "views":
            return f"fitted on shopper-like views of {self.queries} photos of this catalog"
        if self.source == "built-in":
            return "fitted on the sample photos (this catalog has no fit of its own yet)"
        return "a first guess for this model (not fitted on any photos yet)"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ScoreModel:
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("version") != CALIBRATION_VERSION:
            raise ValueError("not a calibration this release writes")
        known = set(cls.__dataclass_fields__)
        model = cls(**{k: v for k, v in raw.items() if k in known})
        numbers = (model.slope, model.margin_slope, model.offset, model.threshold)
        if not all(math.isfinite(v) for v in numbers) or model.slope < 0 or model.margin_slope < 0:
            raise ValueError("the calibration's numbers are not usable")
        return model


# The built-in model's curve, fitted by `fit` on the sample photos' held-out pairs (each of the 398 photos held out,
# every other photo the catalog, top 20 verified, text read) without a projection. A catalog replaces it with its
# own fit (`vpm calibrate`).
_BUILT_IN = {
    "efficientnet-lite0-rmac384": ScoreModel("efficientnet-lite0-rmac384", slope=4.374, margin_slope=26.80,
                                             offset=-5.089, threshold=0.02, source="built-in", queries=398,
                                             pairs=15427),
}
# Without any fit: a curve that puts 50% at the model family's own image cosine (its embedder's `thresholds.image`),
# rising to ~88% 0.1 above it. It only orders what the cosine orders; a fit replaces it.
_PRIOR_MIDPOINTS = {
    "clip": CLIP_THRESHOLDS.image,
    "efficientnet-lite0": BUILT_IN_THRESHOLDS.image,
    "other": Thresholds().image,
}
_PRIOR_SLOPE = 20.0


def default_model(model_id: str) -> ScoreModel:
    """The curve to use for a model before its catalog has a fit of its own."""
    if model_id in _BUILT_IN:
        return _BUILT_IN[model_id]
    lowered = model_id.lower()
    family = ("efficientnet-lite0" if lowered.startswith("efficientnet-lite0")
              else "clip" if "clip" in lowered else "other")
    midpoint = _PRIOR_MIDPOINTS[family]
    return ScoreModel(model_id, _PRIOR_SLOPE, 0.0, -_PRIOR_SLOPE * midpoint, 0.5, "prior")


@dataclass(frozen=True)
class HeldOut:
    """One held-out photo's candidate list: each candidate's evidence, and which one (if any) is its own product."""

    evidence: Sequence[float]
    own: int | None  # position of the photo's own product in `evidence`; None: not among the candidates


def fit(model_id: str, lists: Sequence[HeldOut], *, projection: str | None = None,
        recall: dict[str, float] | None = None) -> ScoreModel:
    """Fit the curve by weighted logistic regression (Newton's method, a little L2) on every (held-out photo,
    candidate) pair, and on each photo's list again without its own product (a product the catalog lacks), weighted
    ABSENT_SHARE. Slopes below zero are clamped at zero, so the probability keeps the evidence's order.

    The default threshold is the probability that keeps FIT_KEEP of the right products that ranked in the
    top 5, rounded down to a whole percent.
    """
    rows, labels, weights = [], [], []
    for held in lists:
        e = np.asarray(held.evidence, dtype=np.float64)
        if len(e) == 0:
            continue
        m = margins(e)
        rows += [[x, y, 1.0] for x, y in zip(e, m, strict=True)]
        labels += [float(i == held.own) for i in range(len(e))]
        weights += [1.0] * len(e)
        if held.own is not None and len(e) > 1:
            rest = np.delete(e, held.own)
            rows += [[x, y, 1.0] for x, y in zip(rest, margins(rest), strict=True)]
            labels += [0.0] * len(rest)
            weights += [ABSENT_SHARE] * len(rest)
    x, y, w8 = np.asarray(rows), np.asarray(labels), np.asarray(weights)
    if len(x) == 0 or y.min() == y.max():
        raise ValueError("a fit needs held-out photos whose own product is among the candidates, and others")
    w = np.array([5.0, 20.0, -5.0])
    # A little L2 on the slopes keeps them finite when the pairs separate perfectly (a small or easy catalog):
    # then the curve is steep, not a step.
    ridge = np.array([RIDGE, RIDGE, 1e-3])
    for _ in range(200):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -60, 60)))
        gradient = x.T @ (w8 * (p - y)) + ridge * w
        hessian = (x * (w8 * p * (1 - p))[:, None]).T @ x + np.diag(ridge)
        step = np.linalg.solve(hessian, gradient)
        step *= min(1.0, 5.0 / max(float(np.abs(step).max()), 1e-12))  # damped: never a leap past the optimum
        w -= step
        w[:2] = np.maximum(w[:2], 0.0)
        if np.abs(step).max() < 1e-8:
            break
    if not np.isfinite(w).all() or np.abs(w).max() > 1e4:
        raise ValueError("the pairs give no stable curve")
    model = ScoreModel(model_id, float(w[0]), float(w[1]), float(w[2]), 0.0, "catalog", queries=len(lists),
                       pairs=len(x), projection=projection,
                       fitted_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), recall=dict(recall or {}))
    kept = [float(model.scores(held.evidence)[held.own]) for held in lists
            if held.own is not None and held.own in np.argsort(-np.asarray(held.evidence), kind="stable")[:5]]
    if kept:
        floor = float(np.quantile(kept, 1 - FIT_KEEP, method="lower"))
        model = ScoreModel(**{**model.as_dict(), "threshold": math.floor(floor * 100) / 100})
    return model


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    pairs: int
    right: float  # the share of these pairs that were the right product

    def as_dict(self) -> dict[str, Any]:
        return {"low": round(self.low, 4), "high": round(self.high, 4), "pairs": self.pairs, "right": round(self.right, 4)}


def reliability(scores: Sequence[float], labels: Sequence[bool], bins: int = 10) -> list[CalibrationBin]:
    """How often the matches at each score were right: a well calibrated score has `right` inside its bin."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), int(mask.sum()), float(y[mask].mean())))
    return out
