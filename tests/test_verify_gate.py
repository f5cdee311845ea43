"""Verification only where it can change the answer (vpm/core/ranking.py `verification_needed`): a clear winner keeps its
place without any keypoints, close candidates are verified and re-ordered, and either way the list is in the order
of the score it shows. Pure ranking on real keypoints of synthetic packs; no catalog, no model."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from vpm.core import ranking, rerank, scoring
from vpm.core.catalog import Photo, Product
from vpm.core.presentation import score_percent
from vpm.core.results import Match

from synthetic import shopper_view, textured

MODEL = scoring.default_model("efficientnet-lite0-rmac384")  # the built-in curve: slopes of a real fit


def product(seed: int) -> Product:
    key = f"images/p{seed}.png"
    return Product(id=f"p{seed}", name=f"Pack {seed}", category="Packs",
                   photos=[Photo(key=key, sha256=hashlib.sha256(key.encode()).hexdigest())])


class Shelf:
    """Products with one photo each, their stored keypoints, and a record of what a search read."""

    def __init__(self, seeds: list[int]) -> None:
        self.products = {s: product(s) for s in seeds}
        self.features = {p.photos[0].key: rerank.extract(textured(s)) for s, p in self.products.items()}
        self.read: list[set[str]] = []

    def stores(self) -> ranking.Stores:
        def vectors_for(keys):
            return {}  # no projection, one photo a product: nothing needs the candidates' vectors

        def features_for(keys):
            self.read.append(set(keys))
            return {k: self.features[k] for k in keys if k in self.features}

        return ranking.Stores(vectors_for, features_for)

    def matches(self, cosines: dict[int, float]) -> list[Match]:
        """The index's candidates, best first by cosine."""
        order = sorted(cosines, key=lambda s: -cosines[s])
        return [Match(self.products[s], cosines[s], self.products[s].photos[0].key, None, None, similarity=cosines[s])
                for s in order]


class CountingKeypoints:
    """The query's keypoints as the matcher hands them over: computed only if asked for."""

    def __init__(self, seed: int) -> None:
        self.seed, self.calls = seed, 0

    def __call__(self) -> rerank.LocalFeatures:
        self.calls += 1
        return rerank.extract(shopper_view(textured(self.seed), 7))


def assert_in_shown_order(ranked: ranking.Ranked) -> None:
    scores = [m.score for m in ranked.matches]
    assert scores == sorted(scores, reverse=True)
    shown = [score_percent(s) for s in scores]
    assert shown == sorted(shown, reverse=True)


def test_a_clear_winner_is_not_verified_and_keeps_its_place_without_computing_any_keypoints():
    shelf = Shelf([1, 2, 3])
    query = CountingKeypoints(2)  # a photo of product 2, which the index puts well behind product 1
    matches = shelf.matches({1: 0.90, 2: 0.90 - 2 * ranking.VERIFY_MARGIN, 3: 0.70})

    ranked = ranking.rank_photo_query(matches, np.zeros(4, np.float32), MODEL, shelf.stores(), query_features=query)

    assert [m.product.id for m in ranked.matches] == ["p1", "p2", "p3"]
    assert not ranked.verified and not ranked.reranked
    assert query.calls == 0 and shelf.read == []  # neither the query's keypoints nor the candidates' were touched
    assert all(m.inliers is None for m in ranked.matches)  # no card claims a keypoint count
    assert_in_shown_order(ranked)


def test_close_candidates_are_verified_and_the_one_whose_keypoints_agree_moves_first():
    shelf = Shelf([1, 2, 3])
    query = CountingKeypoints(2)
    matches = shelf.matches({1: 0.90, 2: 0.90 - ranking.VERIFY_MARGIN / 2, 3: 0.89 - ranking.VERIFY_REACH})

    ranked = ranking.rank_photo_query(matches, np.zeros(4, np.float32), MODEL, shelf.stores(), query_features=query)

    assert ranked.verified and ranked.reranked
    assert [m.product.id for m in ranked.matches][:1] == ["p2"]
    assert ranked.matches[0].inliers >= rerank.MIN_INLIERS
    assert query.calls == 1 and len(shelf.read) == 1  # the candidates' keypoints in one read
    # p3 lies further behind the first than keypoints can lift it: neither read nor verified
    assert shelf.read[0] == {"images/p1.png", "images/p2.png"}
    assert ranked.matches[-1].product.id == "p3" and ranked.matches[-1].inliers is None
    assert_in_shown_order(ranked)


def test_keypoints_already_computed_are_used_as_they_are():
    shelf = Shelf([1, 2])
    features = CountingKeypoints(2)()
    matches = shelf.matches({1: 0.80, 2: 0.80 - ranking.VERIFY_MARGIN / 2})

    ranked = ranking.rank_photo_query(matches, np.zeros(4, np.float32), MODEL, shelf.stores(),
                                      query_features=features)

    assert ranked.verified and [m.product.id for m in ranked.matches] == ["p2", "p1"]


def test_a_query_whose_keypoints_cannot_be_computed_is_still_answered_unverified():
    shelf = Shelf([1, 2])

    def broken() -> rerank.LocalFeatures:
        raise RuntimeError("OpenCV is not there")

    ranked = ranking.rank_photo_query(shelf.matches({1: 0.80, 2: 0.80 - ranking.VERIFY_MARGIN / 2}), np.zeros(4, np.float32), MODEL,
                                      shelf.stores(), query_features=broken)

    assert not ranked.verified and [m.product.id for m in ranked.matches] == ["p1", "p2"]
    assert_in_shown_order(ranked)


@pytest.mark.parametrize(("similarities", "needed"), [
    ([0.9, 0.9 - ranking.VERIFY_MARGIN / 2, 0.5], True),  # a close runner-up
    ([0.9, 0.9 - 2 * ranking.VERIFY_MARGIN, 0.5], False),  # a clear winner
    ([0.5, 0.9, 0.9 - ranking.VERIFY_MARGIN / 2], True),  # in any order: the two best count
    ([0.9], True),  # a lone candidate: no rival, so its keypoints are all its score can learn
    ([], False),
])
def test_verification_is_needed_only_when_the_runner_up_is_close(similarities, needed):
    assert ranking.verification_needed(similarities) is needed


def test_verifying_many_candidates_at_once_counts_what_verifying_each_alone_counts():
    query = rerank.extract(shopper_view(textured(5), 3))
    candidates = [rerank.extract(textured(s)) for s in (4, 5, 6)] + [None, rerank.extract(textured(5, (64, 64)))]

    together = rerank.verify_many(query, candidates)

    alone = [rerank.verify(query, c) if c is not None else rerank.NO_MATCH for c in candidates]
    assert [v.inliers for v in together] == [v.inliers for v in alone]
    assert together[1].inliers >= 30 and together[3] == rerank.NO_MATCH
