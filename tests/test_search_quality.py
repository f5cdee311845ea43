"""Keypoints stored beside the vectors, verification of the top candidates, search by region (Matcher level).

Runs on both backends (a local folder, and S3 through moto's HTTP server) with the tiny CLIP.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from vpm.backends.lance_features import PhotoFeatures
from vpm.core import rerank
from vpm.core.images import InvalidBox

from synthetic import shopper_view, textured, to_bytes


def add(matcher, name: str, seeds: list[int], category: str = "Packs", size=(320, 320)):
    photos = [(to_bytes(textured(seed, size)), f"{name}-{seed}.png") for seed in seeds]
    return matcher.create_product(photos, name=name, category=category)


def test_adding_a_product_stores_each_photos_keypoints_with_its_vectors(matcher):
    product = add(matcher, "Cereal", [1, 2])

    keys = [p.key for p in product.photos]
    stored = matcher.features.features_for(keys)
    assert sorted(stored) == sorted(keys)
    assert all(0 < len(f) <= rerank.MAX_KEYPOINTS for f in stored.values())
    assert matcher.vectors.photo_keys_with_vectors(keys) == set(keys)


def test_the_same_bytes_reuse_their_keypoints(matcher, monkeypatch):
    add(matcher, "Cereal", [1])
    calls = []
    real = rerank.extract
    monkeypatch.setattr(rerank, "extract", lambda image: calls.append(1) or real(image))

    twin = matcher.create_product([(to_bytes(textured(1)), "again.png")], name="Twin", category="Packs",
                                  allow_duplicate=True)

    assert calls == []  # the same SHA-256: computed once, stored twice
    assert twin.photos[0].key in matcher.features.features_for([twin.photos[0].key])


def test_removing_a_photo_or_a_product_removes_its_keypoints(matcher):
    product = add(matcher, "Cereal", [1, 2])
    first, second = (p.key for p in product.photos)

    matcher.remove_photo(product.id, first)
    assert set(matcher.features.features_for([first, second])) == {second}

    matcher.delete_product(product.id)
    assert matcher.features.features_for([first, second]) == {}


def test_a_failed_add_leaves_no_keypoints(matcher, monkeypatch):
    def refuse(product):
        raise RuntimeError("the row did not land")

    monkeypatch.setattr(matcher.catalog, "add_one", refuse)
    with pytest.raises(RuntimeError):
        add(matcher, "Cereal", [1])

    assert matcher.features.count() == 0
    assert matcher.vectors.count() == 0


def test_an_add_lands_when_its_keypoints_cannot_be_stored_and_vpm_index_fills_them_in(matcher, monkeypatch, caplog):
    from vpm.backends.engine import EngineError

    def unavailable(entries):
        raise EngineError("could not store keypoints in the photos' keypoints: a writer committed first")

    monkeypatch.setattr(matcher.features, "upsert", unavailable)
    product = add(matcher, "Cereal", [1, 2])

    keys = [p.key for p in product.photos]
    assert matcher.get_product(product.id).photos == product.photos
    assert matcher.vectors.photo_keys_with_vectors(keys) == set(keys)
    assert "fills them in" in caplog.text
    monkeypatch.undo()
    assert matcher.keypoints_missing() == 2
    matcher.reindex()
    assert sorted(matcher.features.features_for(keys)) == sorted(keys)


def test_photos_without_keypoints_get_them_from_vpm_index_and_orphans_go(matcher):
    product = add(matcher, "Cereal", [1, 2])
    keys = [p.key for p in product.photos]
    matcher.features.delete_photos(keys)
    matcher.features.upsert([PhotoFeatures("images/gone.png", "gone", "0" * 64, rerank.extract(textured(3)))])

    matcher.reindex()

    assert sorted(matcher.features.features_for([*keys, "images/gone.png"])) == sorted(keys)


def test_a_search_verifies_its_top_candidates_and_says_so(matcher):
    products = [add(matcher, f"Pack {seed}", [seed]) for seed in range(1, 5)]
    query = to_bytes(shopper_view(textured(3), 1), "JPEG")

    verified = matcher.search_image(query, "shelf.jpg", threshold=-1, rerank=True)
    plain = matcher.search_image(query, "shelf.jpg", threshold=-1, rerank=False)

    assert verified.verified and not plain.verified
    assert verified.results[0].product.id == products[2].id  # the verified one first, whatever the tiny CLIP says
    assert verified.results[0].inliers >= rerank.MIN_INLIERS
    assert all(m.inliers is None for m in plain.results)
    assert verified.reranked == ([m.product.id for m in verified.results] != [m.product.id for m in plain.results])
    document = verified.as_dict()
    assert document["rerank"] is True and document["results"][0]["verified_matches"] >= rerank.MIN_INLIERS


def test_rerank_follows_the_setting_when_not_asked(matcher, monkeypatch):
    add(matcher, "Pack", [1])
    query = to_bytes(shopper_view(textured(1), 1), "JPEG")

    assert matcher.search_image(query, "q.jpg").verified  # VPM_RERANK defaults to on
    monkeypatch.setattr(type(matcher), "rerank_default", property(lambda self: False))
    assert not matcher.search_image(query, "q.jpg").verified


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_search_region_searches_only_that_part_of_the_photo(matcher):
    left, right = add(matcher, "Left pack", [11]), add(matcher, "Right pack", [12])
    shelf = Image.new("RGB", (660, 330), "white")
    shelf.paste(textured(11), (0, 0))
    shelf.paste(textured(12), (335, 5))
    data = to_bytes(shelf)

    on_left = matcher.search_image(data, "shelf.png", threshold=-1, box="0,0,320,320")
    on_right = matcher.search_image(data, "shelf.png", threshold=-1, box=[335, 5, 320, 320])

    assert on_left.results[0].product.id == left.id and on_left.box.as_list() == [0, 0, 320, 320]
    assert on_right.results[0].product.id == right.id
    assert on_right.as_dict()["box"] == [335, 5, 320, 320]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_region_outside_the_photo_is_refused_before_anything_is_searched(matcher):
    add(matcher, "Pack", [1])

    with pytest.raises(InvalidBox, match="past the photo"):
        matcher.search_image(to_bytes(textured(1)), "q.png", box="300,0,100,100")
    with pytest.raises(ValueError, match="only applies to a photo"):
        matcher.embed_query(text="a pack", box="0,0,20,20")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_an_embedded_query_keeps_its_keypoints_so_ranking_again_verifies_without_recomputing(matcher, monkeypatch):
    add(matcher, "Pack", [1])
    embedded = matcher.embed_query(data=to_bytes(shopper_view(textured(1), 2), "JPEG"), filename="q.jpg",
                                   box="0,0,200,200")
    monkeypatch.setattr(rerank, "extract", lambda image: pytest.fail("the query's keypoints were computed again"))

    response = matcher.rank(embedded.vector, features=embedded.features, rerank=True, box=embedded.box)

    assert embedded.box.as_list() == [0, 0, 200, 200] and response.verified


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_why_this_match_draws_the_verified_matches(matcher):
    product = add(matcher, "Pack", [1])
    query = to_bytes(shopper_view(textured(1), 3), "JPEG")

    png, inliers = matcher.explain_match(query, "q.jpg", product.id, product.photos[0].key)

    assert Image.open(io.BytesIO(png)).format == "PNG" and inliers >= rerank.MIN_INLIERS


# ------------------------------------------------------------------------------------------- CLI and API


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_cli_search_takes_rerank_and_a_box(matcher, cli, tmp_path):
    import json

    left = add(matcher, "Left pack", [11])
    shelf = Image.new("RGB", (660, 330), "white")
    shelf.paste(textured(11), (0, 0))
    shelf.paste(textured(12), (335, 5))
    path = tmp_path / "shelf.png"
    path.write_bytes(to_bytes(shelf))

    code, out, _ = cli("search", path, "--box", "0,0,320,320", "--threshold", "-1", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["box"] == [0, 0, 320, 320] and document["rerank"] is True
    assert document["results"][0]["id"] == left.id and document["results"][0]["verified_matches"] >= 10

    code, out, _ = cli("search", path, "--box", "0,0,320,320", "--threshold", "-1", "--no-rerank")
    assert code == 0 and "region 0,0,320,320" in out and "verified" not in out

    code, _, err = cli("search", path, "--box", "600,0,320,320")
    assert code == 1 and "past the photo" in err
    code, _, err = cli("search", path, "--box", "1,2,3")
    assert code == 1 and "x,y,w,h" in err
    code, _, err = cli("search", "--text", "a pack", "--box", "0,0,20,20")
    assert code == 1 and "not to --text" in err

    matcher.features.delete_photos([left.photos[0].key])
    code, out, _ = cli("index")
    assert code == 0 and "keypoints (to verify matches) for 1/1 photos" in out


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_api_search_takes_rerank_and_a_box(search_settings):
    from fastapi.testclient import TestClient

    from vpm.core.matcher import Matcher
    from vpm.faces.api import create_app

    matcher = Matcher(search_settings)
    client = TestClient(create_app(search_settings, matcher), raise_server_exceptions=False)
    left = add(matcher, "Left pack", [11])
    shelf = Image.new("RGB", (660, 330), "white")
    shelf.paste(textured(11), (0, 0))
    photo = ("shelf.png", to_bytes(shelf), "image/png")

    response = client.post("/api/search", files={"image": photo}, data={"box": "0,0,320,320", "threshold": "-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["box"] == [0, 0, 320, 320] and body["rerank"] is True and body["results"][0]["id"] == left.id

    response = client.post("/api/search", files={"image": photo}, data={"rerank": "false", "threshold": "-1"})
    assert response.status_code == 200 and response.json()["rerank"] is False
    assert response.json()["results"][0]["verified_matches"] is None

    outside = client.post("/api/search", files={"image": photo}, data={"box": "600,0,320,320"})
    assert outside.status_code == 422 and "past the photo" in outside.json()["error"]
    malformed = client.post("/api/search", files={"image": photo}, data={"box": "1,2"})
    assert malformed.status_code == 422 and "box" in malformed.json()["error"]
    words = client.post("/api/search", json={"text": "a pack", "box": [0, 0, 20, 20]})
    assert words.status_code == 422 and "not to 'text'" in words.json()["error"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_bulk_import_stores_the_keypoints_with_the_vectors(matcher, tmp_path):
    folder = tmp_path / "shop" / "Packs"
    folder.mkdir(parents=True)
    for seed in (1, 2, 3):
        (folder / f"pack-{seed}.png").write_bytes(to_bytes(textured(seed)))

    report = matcher.import_path(tmp_path / "shop")

    keys = [p.key for product in report.imported for p in product.photos]
    assert len(keys) == 3
    assert sorted(matcher.features.features_for(keys)) == sorted(keys)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_keypoints_missing_from_an_older_catalog_are_filled_in_once(matcher, search_settings):
    from vpm.core.matcher import Matcher

    product = add(matcher, "Pack", [1, 2])
    keys = [p.key for p in product.photos]
    matcher.features.delete_photos(keys)
    fresh = Matcher(search_settings)

    assert fresh.keypoints_missing() == 2
    fresh.search_image(to_bytes(textured(1)), "q.png")  # the first search fills them in

    assert sorted(fresh.features.features_for(keys)) == sorted(keys)
    assert fresh.keypoints_missing() == 0


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_product_is_verified_by_its_matched_photo_and_its_next_best(matcher):
    from vpm.core import ranking
    from vpm.core.results import Match

    product = add(matcher, "Pack", [1, 2, 3])
    first, _second, third = (p.key for p in product.photos)
    query_vector = matcher.vectors.vectors_for_keys([third])[third]
    match = Match(product, 0.5, first, None, None)

    cosines = ranking._cosines([match], query_vector, matcher._ranking_stores(True), None)
    assert ranking._best_photos(match, cosines) == [first, third]


def test_rerank_counts_the_best_verified_photo_of_a_product():
    product = textured(21)
    query = rerank.extract(shopper_view(product, 4))
    other, same = rerank.extract(textured(22)), rerank.extract(product)

    outcome = rerank.rerank([0.86, 0.8], query, [[rerank.extract(textured(23))], [other, same, None]])

    assert outcome.order == [1, 0] and outcome.inliers[1] >= rerank.MIN_INLIERS
