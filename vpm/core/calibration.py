"""A catalog's calibration: the score's curve and the projection, fitted on its own held-out photos, and kept.

`calibrate` runs the held-out evaluation (vpm/core/evaluate.py) on a bounded sample, keeps the projection only when it
found the right product first more often, fits the score on the signals searches will use, and writes both beside
the tables: `metadata/calibration/<model>-projection.npz` first, then `metadata/calibration/<model>.json`, which
names the projection by its digest (what a search reads is always whole: a JSON naming a projection that is not
there, or another one, is used without it). Both are derived data: a missing or damaged one means the model's
built-in curve, never a failed search. They are redone after an import and by `python -m vpm calibrate`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vpm.core import projection as projections
from vpm.core import scoring
from vpm.core.storage import ObjectNotFound, Storage, StorageError

if TYPE_CHECKING:
    from vpm.core.matcher import Matcher

log = logging.getLogger(__name__)

CALIBRATION_QUERIES = 400  # held-out photos a calibration searches with (a seeded sample beyond): ~20-60 s here
RELOAD_S = 30.0  # a process looks for a newer calibration (another replica's import) at most this often


@dataclass(frozen=True)
class Calibration:
    score: scoring.ScoreModel
    projection: projections.Projection | None = None


def _keys(prefix: str, model_id: str) -> tuple[str, str]:
    folder = f"{prefix}calibration/"
    return f"{folder}{model_id}.json", f"{folder}{model_id}-projection.npz"


def load(storage: Storage, prefix: str, model_id: str) -> Calibration:
    """The catalog's calibration for this model, or the model's built-in one when it has none (or it is damaged)."""
    json_key, projection_key = _keys(prefix, model_id)
    try:
        model = scoring.ScoreModel.from_json(storage.get(json_key))
    except ObjectNotFound:
        return Calibration(scoring.default_model(model_id))
    except (StorageError, ValueError, TypeError) as err:
        log.warning("the calibration of %s cannot be read (%s): using the model's built-in one; run `python -m vpm "
                    "calibrate` to make it again", model_id, err)
        return Calibration(scoring.default_model(model_id))
    if model.model_id != model_id:
        return Calibration(scoring.default_model(model_id))
    if model.projection is None:
        return Calibration(model)
    try:
        projection = projections.Projection.from_bytes(storage.get(projection_key))
    except (StorageError, ValueError, KeyError, OSError) as err:
        log.warning("the projection of %s cannot be read (%s): using the model's built-in calibration", model_id, err)
        return Calibration(scoring.default_model(model_id))
    if projection.digest != model.projection:
        log.warning("the projection of %s is not the one its calibration was fitted with: using the built-in one",
                    model_id)
        return Calibration(scoring.default_model(model_id))
    return Calibration(model, projection)


def save(storage: Storage, prefix: str, calibration: Calibration) -> None:
    json_key, projection_key = _keys(prefix, calibration.score.model_id)
    if calibration.projection is not None:
        storage.put(projection_key, calibration.projection.to_bytes(), "application/octet-stream")
    storage.put(json_key, calibration.score.to_json(), "application/json")


def calibrate(matcher: Matcher, *, max_queries: int = CALIBRATION_QUERIES,
              progress: Callable[[int, int], None] | None = None) -> Calibration | None:
    """Fit and keep this catalog's calibration for the active model, and return it.

    Products with two or more photos are the held-out photos (vpm/core/evaluate.py). A catalog with too few of them
    for a projection (mostly one photo a product) learns from two shopper-like views of its photos instead
    (vpm/core/augmented.py). None when neither gives anything to fit (the model's built-in curve stays)."""
    from vpm.core import augmented
    from vpm.core.evaluate import Evaluation, NothingToEvaluate

    report = None
    try:
        evaluation = Evaluation(matcher, max_queries=max_queries)
        report = evaluation.run(progress)
    except NothingToEvaluate:
        evaluation = None
    kept: projections.Projection | None = None
    model = None if report is None else report.score_model
    if evaluation is not None and report is not None and report.projection_kept:
        kept = projections.fit(evaluation.vectors, evaluation.codes)
    elif evaluation is None or not evaluation.projection:  # too few pairs of real photos: learn from views
        outcome = augmented.calibrate(matcher, progress=progress)
        if outcome is not None and outcome.score is not None and (outcome.projection is not None or model is None):
            kept, model = outcome.projection, outcome.score
            log.info("calibrated from two views of %d photos: recall@1 %.3f plain, %.3f projected%s", outcome.photos,
                     outcome.recall_plain, outcome.recall_projected, "" if kept else " (projection not kept)")
    if model is None:
        return None
    model = scoring.ScoreModel(**{**model.as_dict(), "projection": None if kept is None else kept.digest,
                                  "photos": matcher.catalog.photo_count()})
    calibration = Calibration(model, kept)
    save(matcher.storage, matcher.where.prefix, calibration)
    log.info("calibrated %s on %d held-out photos: threshold %.0f%%%s", model.model_id, model.queries,
             model.threshold * 100, ", with its projection" if kept else "")
    return calibration


class CalibrationCache:
    """A process's copy of the active calibration, looked for again at most every RELOAD_S seconds: in the
    background, so no search waits on the two reads it takes (two round trips to a bucket) but the first."""

    def __init__(self) -> None:
        self._loaded: dict[str, tuple[float, Calibration]] = {}
        self._reloading: set[str] = set()
        self._lock = threading.Lock()
        self._generation = 0  # bumped by forget: a reload started before it must not bring back what it forgot

    def get(self, storage: Storage, prefix: str, model_id: str) -> Calibration:
        now = time.monotonic()
        cached = self._loaded.get(model_id)
        if cached is None:
            cached = (now, load(storage, prefix, model_id))
            self._loaded[model_id] = cached
        elif now - cached[0] > RELOAD_S:
            self._reload(storage, prefix, model_id)
        return cached[1]

    def _reload(self, storage: Storage, prefix: str, model_id: str) -> None:
        with self._lock:
            if model_id in self._reloading:
                return
            self._reloading.add(model_id)
            generation = self._generation

        def run() -> None:
            try:
                started = time.monotonic()
                loaded = load(storage, prefix, model_id)
                with self._lock:
                    if generation == self._generation:  # not forgotten meanwhile
                        self._loaded[model_id] = (started, loaded)
            finally:
                with self._lock:
                    self._reloading.discard(model_id)

        threading.Thread(target=run, name="vpm-calibration-reload", daemon=True).start()

    def forget(self) -> None:
        with self._lock:
            self._generation += 1
            self._loaded.clear()
