"""Words search in every face: the Matcher, `python -m vpm search --text` and POST /api/search {text}.

Without a model that reads words (the offline built-in image model) the words index answers alone; with CLIP (the
suite's tiny, random one) its ranking is fused with the words ranking, so a product's own name finds it first
whatever CLIP thinks. Either way the answer says what answered it and where each product's words were found.
"""

from __future__ import annotations

import json

import pytest

from vpm.core.word_search import CLIP_AND_WORDS, WORDS_ONLY

from conftest import make_product_photo

PRODUCTS = [
    ("oat-milk", "Oatly Oat Milk", "dairy"),
    ("apple-juice", "Tropicana Apple Juice", "juice"),
    ("orange-juice", "Tropicana Orange Juice", "juice"),
    ("red-mug", "Red Ceramic Mug", "kitchen"),
    ("trail-shoe", "Trail Running Shoe", "shoes"),
]


def stock(matcher) -> None:
    for seed, (pid, name, category) in enumerate(PRODUCTS, start=1):
        matcher.add_product(make_product_photo(seed), f"{pid}.png", name=name, category=category, product_id=pid)


@pytest.fixture
def offline_settings(settings, monkeypatch):
    """The parametrised backend with the built-in image model, which reads photos only (what runs offline)."""
    from vpm.core.config import load_settings

    monkeypatch.setenv("VPM_MODEL", "efficientnet-lite0")
    monkeypatch.setenv("VPM_DEVICE", "cpu")
    return load_settings()


@pytest.fixture
def offline(offline_settings):
    from vpm.core.matcher import Matcher

    matcher = Matcher(offline_settings)
    stock(matcher)
    return matcher


@pytest.fixture
def fused(matcher):
    """The tiny CLIP's Matcher over the same products."""
    stock(matcher)
    return matcher


# --- the Matcher ------------------------------------------------------------------------------------------------


def test_offline_words_find_a_product_by_its_misspelled_name_and_say_where(offline):
    assert offline.text_search_unavailable() is not None  # the model reads photos only

    response = offline.search_text("tropicana aple juice")

    assert [m.product.id for m in response.results][:1] == ["apple-juice"]
    assert {m.product.id for m in response.results} == {"apple-juice", "orange-juice"}
    assert response.answered_by == WORDS_ONLY and response.score_kind == "words"
    first = response.results[0]
    assert first.words_only and "name" in first.matched_fields and first.matched_in.startswith("matched in: name")
    assert first.image_url and first.photo_key in {p.key for p in first.product.photos}


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_offline_words_respect_categories_leave_out_rejected_products_and_refuse_an_empty_query(offline):
    from vpm.core.errors import InvalidRequest

    assert offline.search_text("juice", categories=["dairy"]).results == []
    mixed = offline.search_mixed(text="tropicana juice", not_ids=["apple-juice"])
    assert [m.product.id for m in mixed.results] == ["orange-juice"] and mixed.answered_by == WORDS_ONLY
    with pytest.raises(InvalidRequest, match="empty"):
        offline.search_text("   ")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_product_added_after_the_first_words_search_is_found_by_the_next(offline):
    assert offline.search_text("lime").results == []
    offline.add_product(make_product_photo(40), "lime.png", name="Lime", category="fruit", product_id="lime")
    assert [m.product.id for m in offline.search_text("lime").results] == ["lime"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_with_clip_a_products_own_name_finds_it_first_and_clip_still_ranks_the_rest(fused):
    for pid, name, _category in PRODUCTS:
        response = fused.search_text(name, threshold=-1)
        assert response.results[0].product.id == pid, name
        assert response.answered_by == CLIP_AND_WORDS and response.score_kind == "similarity"
        assert "name" in response.results[0].matched_fields and not response.results[0].words_only
    everything = fused.search_text("red ceramic mug", threshold=-1, top_k=len(PRODUCTS))
    assert {m.product.id for m in everything.results} == {pid for pid, _n, _c in PRODUCTS}  # CLIP's share stays
    assert [m.product.id for m in everything.results if m.matched_fields] == ["red-mug"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_with_clip_a_strict_threshold_keeps_only_what_the_words_found(fused):
    response = fused.search_text("tropicana juice", threshold=0.999)

    assert {m.product.id for m in response.results} == {"apple-juice", "orange-juice"}
    for m in response.results:  # each still carries CLIP's cosine for its best photo
        stored = fused.vectors.vectors_for_keys([m.photo_key])[m.photo_key]
        text = fused.embed_query_text("tropicana juice")
        assert m.score == pytest.approx(float(stored @ text), abs=1e-4)
    without = fused.search_mixed(text="tropicana juice", not_ids=["orange-juice"], threshold=0.999)
    assert [m.product.id for m in without.results] == ["apple-juice"]


# --- the CLI ----------------------------------------------------------------------------------------------------


def test_cli_text_offline_prints_what_answered_and_where_words_matched(offline, cli, monkeypatch):
    monkeypatch.setenv("VPM_MODEL", "efficientnet-lite0")

    code, out, err = cli("search", "--text", "oatly oatmilk")

    assert code == 0, err
    assert f"answered by: {WORDS_ONLY}" in out
    lines = out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("#"))
    assert "matched in" in header and "score" not in header and "%" not in out  # no percentage for words
    assert "Oatly Oat Milk" in lines[lines.index(header) + 1] and "name" in lines[lines.index(header) + 1]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_cli_text_json_offline_and_nothing_found(offline, cli, monkeypatch):
    monkeypatch.setenv("VPM_MODEL", "efficientnet-lite0")

    code, out, _err = cli("search", "--text", "tropicana apple", "--json")
    body = json.loads(out)
    assert code == 0 and body["answered_by"] == WORDS_ONLY and body["score_kind"] == "words"
    assert body["results"][0]["id"] == "apple-juice" and body["results"][0]["matched_fields"][0] == "name"

    code, out, _err = cli("search", "--text", "zzyzx")
    assert code == 0 and "no product's name, brand, description, category or package text" in out


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_cli_text_with_clip_is_fused(fused, cli):
    code, out, err = cli("search", "--text", "Trail Running Shoe", "--threshold", "0.999", "--json")

    body = json.loads(out)
    assert code == 0, err
    assert body["answered_by"] == CLIP_AND_WORDS and [r["id"] for r in body["results"]] == ["trail-shoe"]
    assert body["results"][0]["matched_fields"] == ["name", "category"]  # "shoe", and its category "shoes"


# --- the API ----------------------------------------------------------------------------------------------------


def client_for(settings, matcher):
    from fastapi.testclient import TestClient

    from vpm.faces.api import create_app

    return TestClient(create_app(settings, matcher), raise_server_exceptions=False)


def test_api_text_offline_answers_by_words(offline_settings, offline):
    body = client_for(offline_settings, offline).post("/api/search", json={"text": "red mug"}).json()

    assert body["success"] and body["answered_by"] == WORDS_ONLY and body["score_kind"] == "words"
    assert body["results"][0]["id"] == "red-mug" and "name" in body["results"][0]["matched_fields"]
    assert body["results"][0]["image_url"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_api_text_offline_with_not_ids_and_a_bad_query(offline_settings, offline):
    client = client_for(offline_settings, offline)

    body = client.post("/api/search", json={"text": "tropicana juice", "not_ids": ["apple-juice"]}).json()
    assert [r["id"] for r in body["results"]] == ["orange-juice"] and body["answered_by"] == WORDS_ONLY

    refused = client.post("/api/search", json={"text": "!!!"})
    assert refused.status_code == 422 and "no letters or digits" in refused.json()["error"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_api_text_with_clip_is_fused(search_settings, fused):
    body = client_for(search_settings, fused).post(
        "/api/search", json={"text": "oatly oat milk", "threshold": 0.999}).json()

    assert body["answered_by"] == CLIP_AND_WORDS and [r["id"] for r in body["results"]] == ["oat-milk"]
    assert body["results"][0]["signals"]["image"] is not None  # CLIP's cosine, beside the words
