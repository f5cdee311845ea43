"""Queries beyond one photo (vpm/core/query_mix.py): several photos as one query, a photo refined by words, "not this one".

The arithmetic is checked against rclip's, computed here from the model's own vectors: with the tiny CLIP (words
and photos) and with the offline built-in model (photos and rejections; words say why they are off). Both backends
for the Matcher; the CLI and the API on a local folder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vpm.core import query_mix
from vpm.core.errors import InvalidRequest

from synthetic import shopper_view, textured, to_bytes

WORDS = "a pack with stripes"


def stock(matcher):
    """Packs 1-4, two photos each (a clean one and a shopper's view)."""
    made = {}
    for s in (1, 2, 3, 4):
        photos = [(to_bytes(textured(s)), f"p{s}-a.png"),
                  (to_bytes(shopper_view(textured(s), s), "JPEG"), f"p{s}-b.jpg")]
        made[s] = matcher.create_product(photos, name=f"Pack {s}", category="Packs", product_id=f"pack-{s}")
    return made


def query_photo(seed: int, view: int = 77) -> tuple[bytes, str]:
    return to_bytes(shopper_view(textured(seed), view), "JPEG"), f"shot-{seed}-{view}.jpg"


def best_cosines(matcher, vector: np.ndarray) -> dict[str, float]:
    """Each product's best photo cosine with `vector`, from the stored vectors (what the index ranks by)."""
    found = {}
    for product in matcher.iter_products():
        stored = matcher.vectors.vectors_for_keys([p.key for p in product.photos])
        found[product.id] = max(float(v @ vector) for v in stored.values())
    return found


def assert_ranked_by(response, expected: dict[str, float], left_out: set[str] = frozenset()):
    """The response lists every product but the left-out ones, best first, each with the expected cosine."""
    ids = [m.product.id for m in response.results]
    assert sorted(ids) == sorted(set(expected) - left_out)
    for match in response.results:
        assert match.similarity == pytest.approx(expected[match.product.id], abs=2e-5)
    similarities = [m.similarity for m in response.results]
    assert similarities == sorted(similarities, reverse=True)


def unit(v):
    return np.asarray(v, dtype=np.float64) / np.linalg.norm(v)


# --- the arithmetic ---------------------------------------------------------------------------------------------


def test_combine_normalises_each_term_then_weighs_sums_and_subtracts():
    a, b, c = np.array([3.0, 0, 0]), np.array([0, 0.5, 0]), np.array([0, 0, 7.0])
    assert np.allclose(query_mix.combine([(a, 1.0), (b, 2.0)]), np.array([1, 2, 0]) / np.sqrt(5))
    assert np.allclose(query_mix.combine([(a, 1.0), (b, 1.0), (c, -0.5)]), unit([1, 1, -0.5]))
    assert np.allclose(query_mix.combine([(a, 1.0)]), [1, 0, 0])


# --- the tiny CLIP: words and photos ----------------------------------------------------------------------------


def test_words_refine_a_photo_by_rclips_arithmetic(matcher):
    stock(matcher)
    data, name = query_photo(2)
    photo = matcher.embed_query_image(data, name)
    words = matcher.embed_query_text(WORDS)

    refined = matcher.search_mixed([(data, name)], text=WORDS, text_weight=0.7, threshold=-1, rerank=False)

    assert_ranked_by(refined, best_cosines(matcher, unit(unit(photo) + 0.7 * unit(words))))
    assert refined.query == f"{name} + “{WORDS}”" and refined.score_kind == "match"
    mix = refined.as_dict()["query_mix"]
    assert (mix["text"], mix["text_weight"], mix["photos"], mix["notice"]) == (WORDS, 0.7, [name], None)
    # Weight 0: the photo's own ranking; the default weight: the words as much as the photo.
    plain = matcher.search_image(data, name, threshold=-1, rerank=False)
    unweighted = matcher.search_mixed([(data, name)], text=WORDS, text_weight=0, threshold=-1, rerank=False)
    assert [(m.product.id, round(m.similarity, 5)) for m in unweighted.results] == \
        [(m.product.id, round(m.similarity, 5)) for m in plain.results]
    default = matcher.search_mixed([(data, name)], text=WORDS, threshold=-1, rerank=False)
    assert_ranked_by(default, best_cosines(matcher, unit(unit(photo) + query_mix.TEXT_WEIGHT * unit(words))))


def test_not_this_one_leaves_the_product_out_and_subtracts_its_look(matcher):
    stock(matcher)
    data, name = query_photo(3)
    photo = matcher.embed_query_image(data, name)
    first = matcher.search_image(data, name, threshold=-1, rerank=False).results[0].product.id
    stored = matcher.vectors.vectors_for_keys([p.key for p in matcher.get_product(first).photos])
    look = unit(sum(unit(v) for v in stored.values()))

    response = matcher.search_mixed([(data, name)], not_ids=[first], threshold=-1, rerank=False)

    expected = best_cosines(matcher, unit(unit(photo) - query_mix.NEGATIVE_WEIGHT * look))
    assert_ranked_by(response, expected, left_out={first})
    assert response.best_match.product.id != first
    assert response.as_dict()["query_mix"]["not_ids"] == [first]
    assert response.as_dict()["query_mix"]["negative_weight"] == query_mix.NEGATIVE_WEIGHT


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_words_alone_move_away_from_a_rejected_look(matcher):
    made = stock(matcher)
    words = matcher.embed_query_text(WORDS)
    rejected = made[1].id
    stored = matcher.vectors.vectors_for_keys([p.key for p in made[1].photos])
    look = unit(sum(unit(v) for v in stored.values()))

    response = matcher.search_mixed(text=WORDS, not_ids=[rejected], threshold=-1)

    assert response.score_kind == "similarity" and response.query == f"{WORDS} (not {rejected})"
    assert_ranked_by(response, best_cosines(matcher, unit(unit(words) - query_mix.NEGATIVE_WEIGHT * look)),
                     left_out={rejected})


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_bad_parts_are_refused_saying_which_and_nothing_is_searched(matcher):
    from vpm.core.images import ImageError

    stock(matcher)
    photo = query_photo(1)
    with pytest.raises(InvalidRequest, match="no product with id 'nope' to leave out"):
        matcher.search_mixed([photo], not_ids=["nope"])
    with pytest.raises(InvalidRequest, match="the words' weight must be a number from 0 to 3"):
        matcher.search_mixed([photo], text=WORDS, text_weight=5)
    with pytest.raises(InvalidRequest, match="at most 5 photos"):
        matcher.search_mixed([photo] * 6)
    with pytest.raises(ImageError, match="broken.jpg"):
        matcher.search_mixed([photo, (b"not an image", "broken.jpg")])


# --- the offline built-in model: several photos, not this one ----------------------------------------------------


@pytest.fixture
def offline_matcher(settings, monkeypatch):
    """A Matcher with the built-in image-only model (what runs offline when CLIP cannot load)."""
    from vpm.core.config import load_settings
    from vpm.core.matcher import Matcher

    monkeypatch.setenv("VPM_MODEL", "efficientnet-lite0")
    monkeypatch.setenv("VPM_DEVICE", "cpu")
    return Matcher(load_settings())


def test_several_photos_search_as_one_query_of_their_mean_vector(offline_matcher):
    m = offline_matcher
    stock(m)
    photos = [query_photo(2, 11), query_photo(2, 12), query_photo(2, 13)]
    vectors = [m.embed_query_image(data, name) for data, name in photos]

    response = m.search_mixed(photos, threshold=-1)

    assert response.results[0].product.id == "pack-2"
    assert response.photos == tuple(name for _data, name in photos) and response.fusion == "mean vector"
    centre = unit(sum(unit(v) for v in vectors))
    cosines = best_cosines(m, centre)
    assert response.results[0].similarity == pytest.approx(cosines["pack-2"], abs=2e-5)
    if response.verified:  # the built-in model verifies by default: with the first photo, and it says so
        assert response.verified_with == photos[0][1]
    unverified = m.search_mixed(photos, threshold=-1, rerank=False)
    assert_ranked_by(unverified, cosines)
    assert unverified.verified_with is None


def test_with_the_offline_model_not_this_one_works_and_words_say_why_they_are_off(offline_matcher):
    m = offline_matcher
    stock(m)
    photo = query_photo(4)
    plain = m.search_image(*photo, threshold=-1, rerank=False)
    first = plain.results[0].product.id

    rejected = m.search_mixed([photo], not_ids=[first], threshold=-1, rerank=False)
    with_words = m.search_mixed([photo], text="in red", threshold=-1, rerank=False)

    assert first not in [r.product.id for r in rejected.results] and len(rejected.results) == 3
    assert with_words.notice.startswith("Refine with words is off:") and "reads photos only" in with_words.notice
    assert "\n" not in with_words.notice and with_words.text is None
    assert [r.product.id for r in with_words.results] == [r.product.id for r in plain.results]


# --- CLI ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def shots(tmp_path):
    """Three photos of pack 2 and one of pack 3, as files."""
    paths = {}
    for label, (seed, view) in {"front": (2, 11), "back": (2, 12), "side": (2, 13), "other": (3, 14)}.items():
        paths[label] = tmp_path / f"{label}.jpg"
        paths[label].write_bytes(query_photo(seed, view)[0])
    return paths


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_cli_together_text_and_not(matcher, cli, shots):
    stock(matcher)

    code, out, err = cli("search", shots["front"], shots["back"], "--together", "--threshold", "-1", "--json")
    assert code == 0, err
    document = json.loads(out)  # one query: one document
    assert document["query_mix"]["photos"] == ["front.jpg", "back.jpg"]
    assert document["query_mix"]["fusion"] == "mean vector" and len(document["results"]) == 4

    code, out, err = cli("search", shots["front"], "--text", WORDS, "--text-weight", "0.5", "--not", "pack-1",
                         "--not", "pack-4", "--threshold", "-1", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert {r["id"] for r in document["results"]} == {"pack-2", "pack-3"}
    assert (document["query_mix"]["text"], document["query_mix"]["text_weight"]) == (WORDS, 0.5)

    code, out, _ = cli("search", shots["front"], shots["back"], "--together", "--not", "pack-3")
    assert code == 0 and out.startswith("query: front.jpg + back.jpg (not pack-3)")
    assert "2 photos as one query (mean vector)" in out and "rejected looks subtracted at 0.1" in out

    code, out, _ = cli("search", shots["front"], shots["other"], "--threshold", "-1", "--json")
    assert code == 0 and len(json.loads(out)) == 2  # without --together: two searches, as before


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize("args, message", [
    (("{front}", "--together"), "--together searches several IMAGE arguments as one query"),
    (("--text", "x", "--text-weight", "2"), "--text-weight weighs --text beside a photo"),
    (("{front}", "--text", "x", "--text-weight", "9"), "the words' weight must be a number from 0 to 3"),
    (("{front}", "--not", "nope"), "no product with id 'nope' to leave out"),
])
def test_cli_refuses_what_cannot_be_searched_saying_why(matcher, cli, shots, args, message):
    stock(matcher)
    code, out, err = cli("search", *[a.format(front=shots["front"]) for a in args])
    assert code == 1 and out == "" and message in err


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_cli_words_beside_a_photo_with_the_offline_model_say_so_in_one_line(offline_matcher, cli, shots,
                                                                               monkeypatch):
    stock(offline_matcher)
    monkeypatch.setenv("VPM_MODEL", "efficientnet-lite0")

    code, out, err = cli("search", shots["front"], "--text", "in red", "--not", "pack-1", "--threshold", "-1")

    assert code == 0 and "Pack 2" in out and "Pack 1" not in out
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "Refine with words is off" in notes[0]


# --- API ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def client(matcher, search_settings):
    from fastapi.testclient import TestClient

    from vpm.faces.api import create_app

    stock(matcher)
    return TestClient(create_app(search_settings, matcher), raise_server_exceptions=False)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_api_takes_several_image_parts_words_and_not_ids(client, shots):
    files = [("image", ("front.jpg", shots["front"].read_bytes(), "image/jpeg")),
             ("image", ("back.jpg", shots["back"].read_bytes(), "image/jpeg"))]
    body = client.post("/api/search", files=files, data={"threshold": "-1", "not_ids": ["pack-4"]}).json()
    assert body["success"] and body["query_mix"]["photos"] == ["front.jpg", "back.jpg"]
    assert "pack-4" not in [r["id"] for r in body["results"]] and len(body["results"]) == 3

    body = client.post("/api/search", files=files[:1], data={"text": WORDS, "text_weight": "0.3",
                                                              "threshold": "-1"}).json()
    assert body["query_mix"]["text"] == WORDS and body["query_mix"]["text_weight"] == 0.3

    body = client.post("/api/search", json={"text": WORDS, "not_ids": ["pack-1"], "threshold": -1}).json()
    assert body["success"] and "pack-1" not in [r["id"] for r in body["results"]]

    single = client.post("/api/search", files=files[:1], data={"threshold": "-1"}).json()
    assert single["success"] and "query_mix" not in single  # one photo alone: the search as before


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize("request_, message", [
    ({"data": {"not_ids": "nope"}}, "no product with id 'nope' to leave out"),
    ({"data": {"text": WORDS, "text_weight": "7"}}, "text_weight"),
    ({"data": {"text_weight": "0.5"}}, "'text_weight' weighs 'text' beside the photo"),
    ({"six": True}, "send at most 5 photos of one product in one search (got 6)"),
])
def test_api_refuses_bad_parts_with_422_saying_which(client, shots, request_, message):
    photo = ("image", ("front.jpg", shots["front"].read_bytes(), "image/jpeg"))
    files = [photo] * (6 if request_.get("six") else 1)
    response = client.post("/api/search", files=files, data=request_.get("data", {}))
    assert response.status_code == 422 and message in response.json()["error"]
