"""More like this (Matcher.similar, `python -m vpm similar`, GET /api/products/{id}/similar): the catalog ranked
against a product's own stored vectors, nothing embedded, the product itself left out. Both backends."""

from __future__ import annotations

import json

import pytest

from synthetic import shopper_view, textured, to_bytes


def stock(matcher):
    """Three families of look-alikes: two photos each of packs 1-3, and a close variant of pack 1."""
    made = {}
    for s in (1, 2, 3):
        photos = [(to_bytes(textured(s)), f"p{s}-a.png"), (to_bytes(shopper_view(textured(s), s), "JPEG"), f"p{s}-b.jpg")]
        made[s] = matcher.create_product(photos, name=f"Pack {s}", category="Even" if s % 2 == 0 else "Odd")
    made["variant"] = matcher.create_product([(to_bytes(shopper_view(textured(1), 40), "JPEG"), "v.jpg")],
                                             name="Pack 1 variant", category="Even")
    return made


class CountingCalls:
    def __init__(self, embedder):
        self.embedder, self.images = embedder, 0

    def __getattr__(self, name):
        return getattr(self.embedder, name)

    def embed_images(self, images, **kw):
        self.images += len(images)
        return self.embedder.embed_images(images, **kw)


def test_more_like_this_ranks_by_the_products_own_photos_without_embedding_and_leaves_it_out(matcher):
    made = stock(matcher)
    counting = CountingCalls(matcher.embedder)
    matcher._embedder = counting

    response = matcher.similar(made[1].id)

    ids = [m.product.id for m in response.results]
    assert made[1].id not in ids and ids[0] == made["variant"].id  # its look-alike first, itself never
    assert sorted(ids) == sorted([made[2].id, made[3].id, made["variant"].id])
    scores = [m.score for m in response.results]
    assert scores == sorted(scores, reverse=True) and response.score_kind == "similarity"
    assert counting.images == 0  # stored vectors only
    assert response.query == "more like Pack 1" and all(m.image_url for m in response.results)
    assert [m.product.id for m in matcher.similar(made[1].id, categories=["odd"]).results] == [made[3].id]
    assert len(matcher.similar(made[1].id, top_k=1).results) == 1


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_more_like_this_of_an_unknown_product_says_so(matcher):
    from vpm.core.catalog import ProductNotFound

    stock(matcher)
    with pytest.raises(ProductNotFound):
        matcher.similar("no-such-product")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_cli_similar_prints_a_table_and_json(matcher, capsys):
    from vpm.faces.cli import main

    made = stock(matcher)
    assert main(["similar", made[1].id]) == 0
    out = capsys.readouterr().out
    assert out.startswith("query: more like Pack 1") and "Pack 1 variant" in out

    assert main(["similar", made[1].id, "--top-k", "2", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["results"][0]["id"] == made["variant"].id and len(document["results"]) == 2

    assert main(["similar", "nope"]) == 1
    assert "no product with id 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_api_similar_answers_the_ranked_products_and_404_for_an_unknown_id(matcher, search_settings):
    from fastapi.testclient import TestClient

    from vpm.faces.api import create_app

    made = stock(matcher)
    client = TestClient(create_app(search_settings, matcher), raise_server_exceptions=False)

    body = client.get(f"/api/products/{made[1].id}/similar", params={"top_k": 2}).json()

    assert body["success"] and body["results"][0]["id"] == made["variant"].id
    assert len(body["results"]) == 2 and body["score_kind"] == "similarity"
    assert client.get("/api/products/nope/similar").status_code == 404
    assert client.get(f"/api/products/{made[1].id}/similar", params={"top_k": 0}).status_code == 422
