"""From the vector index's candidates to the list a person sees: every signal gathered, one score, one order.

The index gives the products whose best photo is closest by the plain cosine. For a photo query this module then
1. compares the first POOL of them again through the catalog's projection, when it has one (vpm/core/projection.py);
2. verifies the first RERANK_TOP by keypoints (those within VERIFY_REACH of the first), each by its best photos, and
   remembers which photo verified best, so the card, its keypoint count and "Why this match?" all speak of the same
   photo (vpm/core/rerank.py); but only when the runner-up is within VERIFY_MARGIN of the first (`verification_needed`):
   a clear winner keeps its place and costs no keypoints, not even the query's own (they may be passed as a
   function, called only then);
3. reads the query's package text only when it can change the first answer (a runner-up within TEXT_MARGIN of the
   first), quickly (vpm/models/package_text.py `quick`), and compares it with the candidates' stored text;
4. scores each candidate with the catalog's calibration and orders the list by that score (vpm/core/scoring.py).
Everything it reads (vectors, keypoints, texts of the candidates) is read in one batch per kind.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vpm.core import scoring
from vpm.core.catalog import CatalogError
from vpm.core.results import Match
from vpm.core.storage import StorageError

if TYPE_CHECKING:
    from vpm.core.rerank import LocalFeatures

log = logging.getLogger(__name__)

MAX_PHOTOS_COMPARED = 8  # photos of one product compared through the projection (its first ones beyond)


@dataclass(frozen=True)
class Stores:
    """What ranking reads, each optional: vectors by photo key, keypoints by photo key, package text by photo key."""

    vectors_for: Callable[[list[str]], dict[str, np.ndarray]]
    features_for: Callable[[set[str]], dict] | None = None
    texts_for: Callable[[list[str]], dict[str, str]] | None = None


@dataclass(frozen=True)
class Ranked:
    matches: list[Match]  # best first, each with its score
    verified: bool  # whether keypoints were compared
    reranked: bool  # whether the signals changed the order the plain cosine gave
    text_read: bool  # whether the query's package text was read and compared


def rank_photo_query(matches: list[Match], query_vector: np.ndarray, model: scoring.ScoreModel, stores: Stores, *,
                     projection=None, query_features: LocalFeatures | Callable[[], LocalFeatures | None] | None = None,
                     read_query_text: Callable[[], str] | None = None) -> Ranked:
    """Score and order the candidates of one photo query (given best first by the plain cosine). The matches'
    URLs are left for the caller to set on the few it shows: the photo a match is shown by may change here.
    `query_features` are the query's keypoints, or a function that computes them (called only when a search
    verifies: most need not)."""
    from vpm.core import rerank as verification

    before = [m.product.id for m in matches]
    verifying = query_features is not None and stores.features_for is not None
    cosines = _cosines(matches, query_vector, stores, projection) if projection is not None else {}
    if projection is not None and cosines:
        matches = _through_projection(matches, cosines)
    top = matches[: verification.RERANK_TOP]
    inliers: dict[str, int] = {}
    verified = False
    features = None
    if verifying and verification_needed([m.similarity for m in top]):
        try:
            features = query_features() if callable(query_features) else query_features
        except Exception as err:  # noqa: BLE001 - verification is an extra: never the reason a search fails
            log.warning("no keypoints for the query photo (%s): results are not verified", err)
    if features is not None:
        try:
            reach = within_reach(top)
            if projection is None and verification.RERANK_PHOTOS > 1:  # which photos to verify: the best by cosine
                cosines = _cosines(reach, query_vector, stores, None)
            inliers, best_photo = _verify(reach, features, stores, cosines)
            verified = True
            matches = [dataclasses.replace(m, photo_key=best_photo[m.product.id])
                       if best_photo.get(m.product.id, m.photo_key) != m.photo_key else m for m in matches]
        except (StorageError, CatalogError) as err:  # derived data: never the reason a search fails
            log.warning("could not read the candidates' keypoints (%s): results are not verified", err)
    signals = [scoring.Signals(m.similarity, inliers.get(m.product.id) if verified and i < len(top) else None)
               for i, m in enumerate(matches)]
    texts: dict[str, str] = {}
    query_text = ""
    if read_query_text is not None and stores.texts_for is not None and _text_can_change_first(signals):
        query_text = read_query_text()
        if query_text:
            texts, similarity = _compare_text(top, query_text, stores)
            signals = [dataclasses.replace(s, text=similarity.get(m.product.id)) if i < len(top) else s
                       for i, (s, m) in enumerate(zip(signals, matches, strict=True))]
    scores = model.scores([s.evidence for s in signals]) if signals else np.zeros(0)
    scored = [dataclasses.replace(m, score=float(p), inliers=s.inliers, text=s.text,
                                  reads=_shared_words(query_text, texts.get(m.product.id, "")))
              for m, s, p in zip(matches, signals, scores, strict=True)]
    order = sorted(range(len(scored)), key=lambda i: (-scored[i].score, -signals[i].evidence, i))
    ranked = [scored[i] for i in order]
    return Ranked(ranked, verified, [m.product.id for m in ranked] != before, bool(query_text))


def _cosines(matches: list[Match], query_vector: np.ndarray, stores: Stores, projection) -> dict[str, float]:
    """The query's cosine with every photo of the first candidates (the first POOL through the projection, when
    there is one; else the first RERANK_TOP, to pick the photos to verify), from one read of their vectors."""
    from vpm.core import rerank as verification
    from vpm.core.projection import POOL

    first = matches[: POOL if projection is not None else verification.RERANK_TOP]
    keys = [p.key for m in first for p in m.product.photos[:MAX_PHOTOS_COMPARED]]
    try:
        vectors = stores.vectors_for(keys)
    except (StorageError, CatalogError) as err:
        log.warning("could not read the candidates' vectors (%s): ranked by the index's cosine alone", err)
        return {}
    if not vectors:
        return {}
    known = list(vectors)
    stacked = np.stack([vectors[k] for k in known])
    query = np.asarray(query_vector, dtype=np.float32)
    if projection is not None:  # one projection of every photo and of the query, whatever the list's length
        with verification.one_blas_thread():  # on BLAS's threads these two products cost ~30 ms of CPU, not ~2.5
            stacked, query = projection.apply(stacked), projection.apply(query)
    return dict(zip(known, (stacked @ query).tolist(), strict=True))


def _through_projection(matches: list[Match], cosines: dict[str, float]) -> list[Match]:
    """The first POOL candidates compared again through the projection, each by its best photo there."""
    from vpm.core.projection import POOL

    rescored = []
    for m in matches[:POOL]:
        photos = [(cosines[p.key], p.key) for p in m.product.photos[:MAX_PHOTOS_COMPARED] if p.key in cosines]
        if not photos:
            continue  # no vector yet (an add in flight): it cannot be compared fairly
        cosine, key = max(photos)
        rescored.append(dataclasses.replace(m, similarity=cosine, photo_key=key))
    rescored.sort(key=lambda m: -m.similarity)
    floor = rescored[-1].similarity if rescored else None
    rest = [dataclasses.replace(m, similarity=min(m.similarity, floor)) if floor is not None else m
            for m in matches[POOL:]]  # beyond the pool: never above what the pool's last was compared at
    return rescored + rest


# When to verify, measured on bench/bench_quality.py's held-out shopper-like photos (both protocols, with and without
# the projection; every candidate's keypoints counted, then each rule replayed on the same lists): with the runner-up
# VERIFY_MARGIN or more behind the first, keypoints never changed a first result for the better, nor a top 5, so such
# a list is ranked without them; recall@1 and @5 were those of verifying every list, which 0.04-0.06 did not keep
# (each lost one or two right answers). Lists verified: 55% (all references, through the projection), 68% (one
# reference, through the views' projection), 87-90% (without a projection, whose cosines lie closer together).
VERIFY_MARGIN = 0.08
# Keypoints add at most KEYPOINT_WEIGHT to a candidate's evidence: one further behind the first cannot overtake it, so
# only the candidates within this reach are verified (9-10 of the 20 on a verified list through the projection, 18
# without; recall@1 and @5 as with all 20).
VERIFY_REACH = scoring.KEYPOINT_WEIGHT


def verification_needed(similarities: Sequence[float]) -> bool:
    """Whether keypoints could change the first answer: a runner-up within VERIFY_MARGIN of the first. A lone
    candidate is verified too: with no rival to lead, its keypoints are all its score can learn (and cost one match)."""
    if len(similarities) < 2:
        return len(similarities) == 1
    first, second = sorted(similarities, reverse=True)[:2]
    return first - second < VERIFY_MARGIN


def within_reach(top: list[Match]) -> list[Match]:
    """The candidates close enough to the first for their keypoints to lift them past it."""
    first = max(m.similarity for m in top)
    return [m for m in top if m.similarity >= first - VERIFY_REACH]


def _verify(top: list[Match], query_features, stores: Stores,
            cosines: dict[str, float]) -> tuple[dict[str, int], dict[str, str]]:
    """Each candidate's verified keypoint matches (the most among its best RERANK_PHOTOS photos by cosine) and
    which photo gave them (its best photo by cosine, and that photo's count, when none reached MIN_INLIERS)."""
    from vpm.core import rerank as verification

    photos_of = {m.product.id: _best_photos(m, cosines) for m in top}
    stored = stores.features_for({key for keys in photos_of.values() for key in keys})
    inliers: dict[str, int] = {}
    best_photo: dict[str, str] = {}
    pairs = [(m.product.id, key) for m in top for key in photos_of[m.product.id] if key in stored]
    with verification.one_blas_thread():  # one small matrix product a pair: on one thread, no spinning
        counts = verification.verify_many(query_features, [stored[key] for _pid, key in pairs])
    found_of: dict[str, dict[str, int]] = {}
    for (pid, key), found in zip(pairs, counts, strict=True):
        found_of.setdefault(pid, {})[key] = found.inliers
    for m in top:
        found = found_of.get(m.product.id)
        if not found:
            continue  # no stored keypoints yet: not verified
        key = max(found, key=found.__getitem__)
        if found[key] < verification.MIN_INLIERS:  # nothing verified: the card keeps its best photo by cosine
            key = m.photo_key if m.photo_key in found else key
        inliers[m.product.id] = found[key]  # the count of the photo the card shows, as "Why this match?" draws
        best_photo[m.product.id] = key
    return inliers, best_photo


def _best_photos(match: Match, cosines: dict[str, float]) -> list[str]:
    """The matched photo, then the product's next best photos by cosine (RERANK_PHOTOS in all)."""
    from vpm.core import rerank as verification

    others = [p.key for p in match.product.photos[:MAX_PHOTOS_COMPARED] if p.key != match.photo_key
              and p.key in cosines]
    others.sort(key=lambda key: -cosines[key])
    return [match.photo_key, *others[: verification.RERANK_PHOTOS - 1]]


# Text could lift a runner-up by up to TEXT_WEIGHT, but measured on the sample photos almost all of what it changes
# is within this of the first: reading only then read 53% of one-reference queries (not 94%) and 28% of
# all-reference ones (not 69%) for the same recall@1 (0.596 and 0.781 against 0.592 and 0.781).
TEXT_MARGIN = 0.05


def _text_can_change_first(signals: list[scoring.Signals]) -> bool:
    """Whether a runner-up is close enough to the first for the package text to decide between them."""
    if len(signals) < 2:
        return False
    evidence = sorted((s.evidence for s in signals), reverse=True)
    return evidence[0] - evidence[1] < TEXT_MARGIN


def _compare_text(top: list[Match], query_text: str, stores: Stores) -> tuple[dict[str, str], dict[str, float]]:
    from vpm.models import package_text

    keys = [p.key for m in top for p in m.product.photos[:MAX_PHOTOS_COMPARED]]
    try:
        stored = stores.texts_for(keys)
    except (StorageError, CatalogError) as err:
        log.warning("could not read the candidates' package text (%s): ranked without it", err)
        return {}, {}
    texts = {m.product.id: "\n".join(stored.get(p.key, "") for p in m.product.photos[:MAX_PHOTOS_COMPARED])
             for m in top}
    with_text = [m for m in top if texts[m.product.id].strip()]
    values = package_text.similarities(query_text, [texts[m.product.id] for m in with_text])
    return texts, {m.product.id: v for m, v in zip(with_text, values, strict=True)}


def _shared_words(query_text: str, candidate_text: str) -> tuple[str, ...]:
    """The telling words a result's photos read that the query's photo read too ("reads: OATLY, HAVRE")."""
    if not query_text or not candidate_text:
        return ()
    from vpm.models import package_text

    read = set(package_text.normalise(query_text).split())
    return tuple(w for w in package_text.words_shown(candidate_text, limit=6)
                 if package_text.normalise(w) in read)[:3]
