"""Search through the Matcher, on both backends, with the tiny CLIP (and the offline fallback where it matters)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from vpm.core import health
from vpm.core.catalog import Photo, Product
from vpm.core.images import NotAnImageError
from vpm.core.matcher import DuplicatePhoto, Matcher
from vpm.core.urlfetch import URLRefused
from vpm.models.embeddings import DEFAULT_DESCRIPTOR, EmbeddingError

CATALOG = [  # name, category, photo seed, price
    ("Red mug", "Mugs", 1, 9.5),
    ("Blue mug", "Mugs", 2, None),
    ("Canvas bag", "Bags", 3, 30.0),
    ("Leather bag", "Bags", 4, 120.0),
    ("Desk lamp", "Lighting", 5, 45.0),
    ("Floor lamp", "Lighting", 6, None),
]


@pytest.fixture
def stocked(search_settings, counting_embedder, product_photo):
    """A catalog of six products added through a Matcher whose embedder counts its work."""
    embedder = counting_embedder()
    m = Matcher(search_settings, embedder=embedder)
    for name, category, seed, price in CATALOG:
        m.add_product(product_photo(seed), f"{seed}.png", name=name, category=category, price=price,
                      product_id=name.lower().replace(" ", "-"))
    return m


# --- image search ----------------------------------------------------------------------------------------------


def test_a_products_own_photo_finds_it_first_with_the_highest_score(stocked, product_photo):
    response = stocked.search_image(product_photo(3), "query.png", threshold=-1)
    first = response.results[0]
    assert first.product.id == "canvas-bag"
    assert first.similarity == pytest.approx(1.0, abs=1e-4)  # the image signal: the very same photo
    assert response.score_kind == "match" and 0.9 <= first.score <= 1.0  # the one score: a probability
    assert all(m.score < first.score for m in response.results[1:])
    assert response.best_score == first.score and response.best_match.product.id == "canvas-bag"
    assert response.model == stocked.embedder.model_id and response.query == "query.png"


def test_results_carry_what_a_client_needs_to_show_them(stocked, product_photo):
    response = stocked.search_image(product_photo(4), "q.png", threshold=-1, top_k=1)
    doc = response.as_dict()
    (item,) = doc["results"]
    assert item["id"] == "leather-bag" and item["name"] == "Leather bag" and item["category"] == "Bags"
    assert item["price"] == 120.0
    # Compare without the query: a presigned URL's signature changes with the second it was signed in.
    expected = stocked.url_for(stocked.get_product("leather-bag").image_key)
    assert item["image_url"].split("?")[0] == expected.split("?")[0]
    # Each upload's keys are the id plus a token of its own, so no two writers ever share one.
    assert re.search(r"images/leather-bag-[0-9a-f]{12}\.png$", item["image_url"].split("?")[0])
    assert re.search(r"thumbnails/leather-bag-[0-9a-f]{12}\.webp$", item["thumbnail_url"].split("?")[0])
    assert set(doc) >= {"model", "took_ms", "results", "best_score", "query"}
    assert doc["took_ms"] >= 0


def test_top_k_limits_and_orders_the_results(stocked, product_photo):
    response = stocked.search_image(product_photo(1), "q.png", threshold=-1, top_k=3)
    assert len(response.results) == 3
    scores = [m.score for m in response.results]
    assert scores == sorted(scores, reverse=True)
    everything = stocked.search_image(product_photo(1), "q.png", threshold=-1, top_k=50)
    assert len(everything.results) == len(CATALOG)
    assert [m.product.id for m in everything.results[:3]] == [m.product.id for m in response.results]


def test_threshold_hides_weaker_matches_and_best_score_says_how_close_it_came(stocked, product_photo):
    everything = stocked.search_image(product_photo(5), "q.png", threshold=-1, top_k=10)
    second = everything.results[1].score
    strict = stocked.search_image(product_photo(5), "q.png", threshold=(second + 1.0) / 2)
    assert [m.product.id for m in strict.results] == ["desk-lamp"]

    unrelated = product_photo(999)
    best = stocked.search_image(unrelated, "q.png", threshold=-1).results[0].score
    nothing = stocked.search_image(unrelated, "q.png", threshold=min(1.0, best + 0.001))
    assert nothing.results == []
    assert nothing.best_score == pytest.approx(best, abs=1e-5)


def test_the_default_threshold_depends_on_the_query_kind(stocked):
    assert -1 <= stocked.default_threshold("text") < stocked.default_threshold("image") <= 1
    with pytest.raises(ValueError):
        stocked.default_threshold("audio")


def test_category_filter_limits_results_to_those_categories(stocked, product_photo):
    response = stocked.search_image(product_photo(1), "q.png", threshold=-1, categories=["bags"])
    assert {m.product.category for m in response.results} == {"Bags"}
    response = stocked.search_image(product_photo(1), "q.png", threshold=-1, categories=["Bags", "LIGHTING"])
    assert {m.product.category for m in response.results} == {"Bags", "Lighting"}
    empty = stocked.search_image(product_photo(1), "q.png", categories=["Hats"])
    assert empty.results == [] and empty.best_score is None


def test_rank_refilters_without_embedding_again(stocked, product_photo):
    vector = stocked.embed_query_image(product_photo(2), "q.png")
    calls = len(stocked.embedder.image_calls)
    loose = stocked.rank(vector, top_k=10)
    assert len(loose.results) == len(CATALOG) and loose.threshold is None
    between = (loose.results[0].score + loose.results[1].score) / 2
    strict = stocked.rank(vector, top_k=10, threshold=between, query="q.png", took_ms=12.5)
    assert [m.product.id for m in strict.results] == ["blue-mug"]
    assert strict.took_ms >= 12.5 and strict.query == "q.png"
    assert len(stocked.embedder.image_calls) == calls


def test_a_bad_query_image_is_refused_with_an_image_error(stocked):
    with pytest.raises(NotAnImageError, match=r"notes\.txt"):
        stocked.search_image(b"just some text", "notes.txt")
    with pytest.raises(ValueError, match="between 0 and 1"):
        stocked.search_image(b"x", "x.png", threshold=80)


def test_batch_search_embeds_all_photos_in_one_call_and_keeps_their_order(stocked, product_photo):
    stocked.search_image(product_photo(1), "warm-up.png")  # the index is built; now count only the queries
    before = len(stocked.embedder.image_calls)
    responses = stocked.search_images(
        [(product_photo(6), "six.png"), (product_photo(1), "one.png"), (product_photo(3), "three.png")], threshold=-1
    )
    assert stocked.embedder.image_calls[before:] == [3]
    assert [r.query for r in responses] == ["six.png", "one.png", "three.png"]
    assert [r.results[0].product.id for r in responses] == ["floor-lamp", "red-mug", "canvas-bag"]


def test_a_product_without_a_readable_image_does_not_break_search(stocked, product_photo, caplog):
    lamp = stocked.get_product("floor-lamp")
    stocked.storage.delete(lamp.image_key)
    fresh = Matcher(stocked.settings, embedder=stocked.embedder)
    # The lamp's vector is stored, so it stays searchable even though its file went missing.
    assert fresh.search_image(product_photo(6), "q.png", threshold=-1).results[0].product.id == "floor-lamp"

    # A product whose image is gone AND has no vector is left out, with a warning, and the rest still work.
    ghost = Product(id="ghost", name="Ghost", category="Mugs",
                    photos=[Photo(key="images/ghost.png", sha256="f" * 64)])
    fresh.catalog.add([ghost])
    with caplog.at_level(logging.WARNING, logger="vpm.core.indexing"):
        fresh.reindex()
        response = fresh.search_image(product_photo(2), "q.png", threshold=-1)
    assert "ghost" not in [m.product.id for m in response.results]
    assert response.results[0].product.id == "blue-mug"
    assert "ghost" in caplog.text
    status = fresh.index_status()
    assert status.missing_ids == ["ghost"] and any("images/ghost.png" in p for p in status.problems)


def test_an_empty_catalog_gives_no_results_not_an_error(matcher, product_photo):
    response = matcher.search_image(product_photo(1), "q.png")
    assert response.results == [] and response.best_score is None


def test_counting_a_fresh_catalog_writes_nothing_and_sees_one_made_later(search_settings, counting_embedder,
                                                                           product_photo):
    # The first page of a fresh install counts the catalog: that visit must not create tables (a read-only
    # bucket, a second replica), and a catalog another process creates afterwards must be counted.
    reader = Matcher(search_settings, embedder=counting_embedder())
    assert reader.count_products() == 0 and reader.category_counts() == {}
    assert not reader.catalog_exists()

    writer = Matcher(search_settings, embedder=counting_embedder())
    writer.add_product(product_photo(1), "1.png", name="Red mug", category="Mugs")
    assert reader.count_products() == 1 and reader.category_counts() == {"Mugs": 1}


# --- text search -----------------------------------------------------------------------------------------------


def test_text_search_ranks_by_cosine_to_the_text_vector(stocked):
    response = stocked.rank(stocked.embed_query_text("a red ceramic mug"), kind="text", threshold=-1, top_k=10,
                            query="a red ceramic mug")
    assert response.query == "a red ceramic mug"
    text_vector = stocked.embedder.embed_texts(["a red ceramic mug"])[0]
    products = list(stocked.iter_products())
    stored = stocked.vectors.vectors_for_shas([p.image_sha256 for p in products])
    scores = {p.id: float(stored[p.image_sha256] @ text_vector) for p in products}
    assert [m.product.id for m in response.results] == sorted(scores, key=scores.get, reverse=True)
    assert response.results[0].score == pytest.approx(max(scores.values()), abs=1e-5)
    fused = stocked.search_text("a red ceramic mug", threshold=-1, top_k=10)  # CLIP fused with the words
    assert fused.answered_by == "CLIP + words" and fused.results[0].product.id == "red-mug"


def test_an_empty_text_query_is_refused(stocked):
    with pytest.raises(EmbeddingError, match="empty"):
        stocked.search_text("   ")


# --- the index: written before metadata, persisted, reused ------------------------------------------------------


def test_adding_a_product_writes_image_thumbnail_vector_then_the_row(search_settings, tiny_clip, product_photo):
    m = Matcher(search_settings, embedder=tiny_clip)
    order: list[str] = []
    real_put, real_upsert, real_add = m.storage.put, m.vectors.upsert, m.catalog.add
    m.storage.put = lambda key, *a, **k: (order.append(key), real_put(key, *a, **k))[1]
    m.vectors.upsert = lambda entries: (order.append("vectors"), real_upsert(entries))[1]
    m.catalog.add = lambda products: (order.append("row"), real_add(products))[1]
    product = m.add_product(product_photo(1), "mug.png", name="Mug", category="Mugs")
    assert order == [product.image_key, product.thumbnail_key, "vectors", "row"]


def test_a_failed_row_write_removes_the_files_and_vectors_it_wrote(search_settings, tiny_clip, product_photo):
    from vpm.core.storage import StorageError

    m = Matcher(search_settings, embedder=tiny_clip)

    def refuse(products):
        raise StorageError("the bucket went read-only")

    m.catalog.add = refuse
    with pytest.raises(StorageError, match="read-only"):
        m.add_product(product_photo(1), "mug.png", name="Mug", category="Mugs")
    assert list(m.storage.iter_objects(search_settings.s3_image_prefix)) == []
    assert list(m.storage.iter_objects(search_settings.s3_thumbnail_prefix)) == []
    assert m.vectors.count() == 0


def test_adding_a_product_embeds_only_that_product(stocked, product_photo):
    before = stocked.embedder.images_embedded
    stocked.search_image(product_photo(1), "q.png")  # the query only: the catalog is already indexed
    assert stocked.embedder.images_embedded == before + 1
    stocked.add_product(product_photo(8), "new.png", name="New", category="Mugs")
    assert stocked.embedder.images_embedded == before + 2
    assert stocked.search_image(product_photo(8), "q.png").results[0].product.name == "New"
    assert stocked.embedder.images_embedded == before + 3


def test_a_photo_with_bytes_embedded_before_reuses_that_vector(stocked, product_photo):
    before = stocked.embedder.images_embedded
    stocked.add_product(product_photo(1), "again.png", name="Red mug again", category="Mugs", allow_duplicate=True)
    assert stocked.embedder.images_embedded == before


def test_a_new_matcher_over_the_same_storage_does_not_re_embed(stocked, counting_embedder, product_photo):
    restarted = Matcher(stocked.settings, embedder=counting_embedder())
    response = restarted.search_image(product_photo(4), "q.png", threshold=-1)
    assert response.results[0].product.id == "leather-bag"
    assert restarted.embedder.image_calls == [1]  # the query; every catalog vector came from the index


def test_searches_reuse_the_in_memory_vectors_until_the_index_changes(stocked, counting_embedder, product_photo,
                                                                      monkeypatch):
    from vpm.backends import lance_vectors

    loads: list[int] = []
    real_snapshot = lance_vectors._Snapshot

    def counting_snapshot(*args, **kwargs):
        loads.append(1)
        return real_snapshot(*args, **kwargs)

    monkeypatch.setattr(lance_vectors, "_Snapshot", counting_snapshot)
    stocked.search_image(product_photo(1), "q.png")
    stocked.search_image(product_photo(2), "q.png")
    assert len(loads) <= 1  # loaded at most once, then reused

    # Another replica adds a product: the next search here sees it, loading its vector instead of embedding it.
    other = Matcher(stocked.settings, embedder=counting_embedder())
    other.add_product(product_photo(9), "nine.png", name="Nine", category="Mugs", product_id="nine")
    before = stocked.embedder.images_embedded
    response = stocked.search_image(product_photo(9), "q.png")
    assert response.results[0].product.id == "nine"
    assert stocked.embedder.images_embedded == before + 1  # just the query


def test_edits_and_deletes_show_up_in_the_next_search(stocked, product_photo):
    stocked.update_product("red-mug", category="Kitchen")
    response = stocked.search_image(product_photo(1), "q.png", categories=["Kitchen"], threshold=-1)
    assert [m.product.id for m in response.results] == ["red-mug"]

    stocked.delete_product("red-mug")
    response = stocked.search_image(product_photo(1), "q.png", threshold=-1)
    assert "red-mug" not in [m.product.id for m in response.results]
    assert stocked.vectors.count() == len(CATALOG) - 1  # its vector went with it


def test_reindex_drops_vectors_no_photo_points_at(stocked):
    from vpm.core.vector_index import PhotoVector

    vector = stocked.vectors.vectors_for_shas([stocked.get_product("red-mug").image_sha256])
    stray = PhotoVector("images/never-landed.png", "never-landed", "e" * 64, "Mugs", next(iter(vector.values())))
    stocked.vectors.upsert([stray])  # an add that crashed between its vector and its row
    assert stocked.vectors.count() == len(CATALOG) + 1
    status = stocked.reindex()
    assert status.ok and status.vectors == len(CATALOG) and stocked.vectors.count() == len(CATALOG)


def test_a_refused_query_does_no_indexing_work(stocked, counting_embedder):
    other = Matcher(stocked.settings, embedder=counting_embedder("other-model", permute=1))
    with pytest.raises(NotAnImageError):
        other.search_image(b"text", "notes.txt")
    assert other.embedder.images_embedded == 0


# --- changing the model ----------------------------------------------------------------------------------------


def test_another_model_never_uses_the_first_models_vectors(stocked, counting_embedder, product_photo):
    first_model_vectors = stocked.vectors.count()
    other = Matcher(stocked.settings, embedder=counting_embedder("other-model", permute=3))

    status = other.index_status()
    assert status.model_id == "other-model" and status.vectors == 0 and status.missing == len(CATALOG)
    progress: list[tuple[int, int]] = []
    status = other.reindex(progress=lambda done, total, message="": progress.append((done, total)))
    assert status.ok and status.vectors == len(CATALOG)
    assert progress[0] == (0, len(CATALOG)) and progress[-1] == (len(CATALOG), len(CATALOG))
    assert other.embedder.images_embedded == len(CATALOG)

    # The query and the catalog are both in the other model's space: the own photo still scores 1.
    response = other.search_image(product_photo(2), "q.png", threshold=-1)
    assert response.model == "other-model"
    assert response.results[0].product.id == "blue-mug"
    assert response.results[0].similarity == pytest.approx(1.0, abs=1e-4)
    # ...and the first model's vectors were not touched.
    assert stocked.vectors.count() == first_model_vectors


def test_switching_models_re_embeds_the_catalog_on_first_search(stocked, counting_embedder, product_photo):
    other = Matcher(stocked.settings, embedder=counting_embedder("other-model", permute=1))
    other.search_image(product_photo(1), "q.png")
    assert other.embedder.images_embedded == len(CATALOG) + 1


def test_a_large_gap_is_left_to_the_index_command_not_the_search(stocked, counting_embedder, product_photo,
                                                                  monkeypatch, caplog):
    from vpm.core import matcher as matcher_module

    monkeypatch.setattr(matcher_module, "AUTO_EMBED_MAX", 2)
    other = Matcher(stocked.settings, embedder=counting_embedder("other-model", permute=1))
    with caplog.at_level(logging.WARNING, logger="vpm.core.matcher"):
        response = other.search_image(product_photo(1), "q.png")
    assert other.embedder.images_embedded == 1 and response.results == []
    assert "python -m vpm index" in caplog.text


def test_search_still_answers_when_the_vectors_cannot_be_stored(stocked, counting_embedder, product_photo, caplog):
    from vpm.core.storage import StorageError

    other = Matcher(stocked.settings, embedder=counting_embedder("other-model", permute=1))

    def read_only(entries):
        raise StorageError("access denied to the vectors table")

    other.vectors.upsert = read_only
    with caplog.at_level(logging.WARNING, logger="vpm.core.matcher"):
        response = other.search_image(product_photo(3), "q.png", threshold=-1)
    assert response.results == []  # nothing is indexed for this model yet, and that is said in the log
    assert "access denied" in caplog.text


def test_rebuild_re_embeds_every_product(stocked, counting_embedder):
    m = Matcher(stocked.settings, embedder=counting_embedder())
    assert m.reindex().ok and m.embedder.images_embedded == 0
    status = m.reindex(rebuild=True)
    assert status.ok and m.embedder.images_embedded == len(CATALOG)
    assert m.vectors.count() == len(CATALOG)


# --- several photos per product --------------------------------------------------------------------------------


def test_a_product_with_several_photos_is_found_by_any_of_them_once(stocked, product_photo):
    shoe = stocked.create_product(
        [(product_photo(20), "front.png"), (product_photo(21), "side.png"), (product_photo(22), "back.png")],
        name="Trail shoe", category="Shoes", product_id="trail-shoe",
    )
    for number, seed in enumerate((20, 21, 22)):
        response = stocked.search_image(product_photo(seed), "q.png", threshold=-1)
        first = response.results[0]
        assert first.product.id == "trail-shoe" and first.photo_key == shoe.photos[number].key
        assert [m.product.id for m in response.results].count("trail-shoe") == 1


def test_photos_are_added_to_and_removed_from_a_product(stocked, product_photo):
    bag = stocked.add_photos("canvas-bag", [(product_photo(30), "inside.png")])
    assert len(bag.photos) == 2
    response = stocked.search_image(product_photo(30), "q.png", threshold=-1)
    assert response.results[0].product.id == "canvas-bag" and response.results[0].photo_key == bag.photos[1].key
    removed = stocked.remove_photo("canvas-bag", bag.photos[1].key)
    assert len(removed.photos) == 1
    assert not stocked.storage.exists(bag.photos[1].key) and not stocked.storage.exists(bag.photos[1].thumbnail_key)
    response = stocked.search_image(product_photo(30), "q.png", threshold=-1)
    assert all(m.photo_key != bag.photos[1].key for m in response.results)


def test_a_photo_already_in_the_catalog_names_its_product(stocked, product_photo):
    with pytest.raises(DuplicatePhoto, match="Red mug"):
        stocked.add_product(product_photo(1), "again.png", name="Copy", category="Mugs")
    with pytest.raises(DuplicatePhoto, match="same photo"):
        stocked.create_product([(product_photo(40), "a.png"), (product_photo(40), "b.png")], name="X", category="Y")
    assert stocked.count_products() == len(CATALOG)


def test_listing_is_paged_and_filtered_without_reading_everything(stocked):
    page = stocked.page_products(limit=4)
    assert page.total == len(CATALOG) and len(page.items) == 4 and page.has_more
    assert [p.name for p in stocked.page_products(categories=["bags"]).items] == ["Leather bag", "Canvas bag"]
    assert [p.id for p in stocked.page_products(name_contains="LAMP").items] == ["floor-lamp", "desk-lamp"]
    assert stocked.category_counts() == {"Mugs": 2, "Bags": 2, "Lighting": 2}


# --- the offline fallback --------------------------------------------------------------------------------------


@pytest.fixture
def fallback_matcher(settings, monkeypatch, tmp_path):
    """VPM_MODEL=clip-ViT-B-32 with an empty Hugging Face cache and the hub offline: EfficientNet takes over."""
    from vpm.core.config import load_settings

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("VPM_MODEL", "clip-ViT-B-32")
    monkeypatch.setenv("VPM_DEVICE", "cpu")
    return Matcher(load_settings())


def test_the_fallback_model_searches_images_and_refuses_text_saying_why(fallback_matcher, product_photo):
    m = fallback_matcher
    for seed in (1, 2, 3):
        m.add_product(
            product_photo(seed, size=64), f"{seed}.png", name=f"P{seed}", category="Mugs", product_id=f"p{seed}"
        )
    built_in = DEFAULT_DESCRIPTOR.model_id
    assert m.embedder.model_id == built_in and m.embedder.fallback_reason

    response = m.search_image(product_photo(2, size=64), "q.png", threshold=-1)
    assert response.model == built_in
    assert response.results[0].product.id == "p2" and response.results[0].similarity == pytest.approx(1.0, abs=1e-4)

    words = m.search_text("p2")  # no model reads words: the words index answers
    assert words.answered_by == "words in names and package text" and words.results[0].product.id == "p2"
    message = m.text_search_unavailable()
    assert message.startswith("search by words is off:")
    assert "is running in its place, and it reads photos only" in message and "set VPM_MODEL to a CLIP" not in message

    checks = {c.name: c for c in health.full_checks(m)}
    assert checks["model"].status == "warn"
    assert "clip-ViT-B-32" in checks["model"].detail and "VPM_MODEL" in checks["model"].fix
    assert checks["index"].status == "pass"


# --- URL search ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://127.0.0.1:8080/admin.png", "127.0.0.1"),
        ("file:///etc/passwd", "file"),
    ],
)
def test_url_search_refuses_internal_addresses_saying_why(stocked, url, why):
    with pytest.raises(URLRefused, match=why):
        stocked.search_url(url)


def test_url_search_searches_the_fetched_image(stocked, product_photo, monkeypatch):
    fetched = []

    def fake_fetch(url: str):
        fetched.append(url)
        return product_photo(4), "bag.png"

    monkeypatch.setattr(stocked, "fetch_url_image", fake_fetch)
    response = stocked.search_url("https://shop.example/bag.png", threshold=-1)
    assert fetched == ["https://shop.example/bag.png"]
    assert response.query == "https://shop.example/bag.png"
    assert response.results[0].product.id == "leather-bag"


# --- health ----------------------------------------------------------------------------------------------------


def test_health_reports_model_and_index_coverage(stocked, counting_embedder):
    checks = {c.name: c for c in health.full_checks(stocked)}
    assert {"storage reachable", "storage read/write", "catalog readable", "model", "index"} <= set(checks)
    assert checks["model"].status == "pass"
    assert checks["index"].status == "pass" and f"{len(CATALOG)}/{len(CATALOG)}" in checks["index"].detail

    other = Matcher(stocked.settings, embedder=counting_embedder("other-model", permute=2))
    index_check = {c.name: c for c in health.full_checks(other)}["index"]
    assert index_check.status == "warn"
    assert f"0/{len(CATALOG)}" in index_check.detail and "python -m vpm index" in index_check.fix


def test_the_model_loads_lazily_from_settings(matcher):
    assert not matcher.model_loaded
    assert matcher.embedder.supports_text
    assert matcher.model_loaded
    assert Path(matcher.settings.vpm_model).name == matcher.embedder.display_name


def test_a_query_embedded_once_reranks_like_a_fresh_search(stocked, product_photo):
    """The Search page keeps one embedded query and re-ranks it as the slider moves: same answers, no re-embed."""
    photo = product_photo(3)
    query = stocked.embed_query(data=photo, filename="query.png")
    assert (query.kind, query.label, query.image) == ("image", "query.png", photo)
    embedded_before = stocked.embedder.images_embedded
    loose = stocked.rank(query.vector, threshold=-1, top_k=10)
    strict = stocked.rank(query.vector, threshold=(loose.results[0].score + loose.results[1].score) / 2, top_k=10)
    assert stocked.embedder.images_embedded == embedded_before
    fresh = stocked.search_image(photo, "query.png", threshold=-1, top_k=10)
    assert [m.product.id for m in loose.results] == [m.product.id for m in fresh.results]
    assert len(strict.results) == 1 and len(loose.results) == 6
    words = stocked.embed_query(text="  a red mug ")
    assert (words.kind, words.label, words.image) == ("text", "a red mug", None)
    with pytest.raises(ValueError, match="needs a photo"):
        stocked.embed_query()


def test_a_damaged_vector_table_is_reported_and_rebuilt_on_request(stocked, counting_embedder, product_photo):
    from vpm.backends import engine

    storage, prefix = stocked.storage, stocked.settings.metadata_prefix
    table = f"{prefix}vectors-{stocked.embedder.model_id}.lance/_versions/"
    for info in list(storage.iter_objects(table)):
        storage.put(info.key, b"not a manifest")
    engine.forget()
    restarted = Matcher(stocked.settings, embedder=counting_embedder())
    with pytest.raises(engine.TableUnreadable, match="index --rebuild"):
        restarted.search_image(product_photo(1), "q.png")
    assert restarted.count_products() == len(CATALOG)  # the products are untouched

    status = restarted.reindex(rebuild=True)
    assert status.ok and status.vectors == len(CATALOG)
    assert restarted.search_image(product_photo(1), "q.png").results[0].product.id == "red-mug"

