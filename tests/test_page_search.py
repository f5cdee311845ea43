"""Search page: photo / link / words in, a grid of scored cards out; the slider re-ranks without re-embedding."""

from __future__ import annotations

import csv
import io
import re

import pytest

from vpm.core.presentation import nothing_found_text, results_count_text, results_csv

from pagetools import shown

SEARCH = "pages/search.py"
CATALOG = [
    ("Red mug", "Kitchen", 1, 12.5),
    ("Blue mug", "Kitchen", 2),
    ("Trail shoe", "Shoes", 3, 89.0),
    ("Road shoe", "Shoes", 4),
    ("Desk lamp", "Lighting", 5),
    ("Floor lamp", "Lighting", 6),
]
NAMES = {row[0] for row in CATALOG}


def card_names(at) -> list[str]:
    """Product names on the result cards, in the order shown."""
    names = []
    for m in at.markdown:
        found = re.fullmatch(r"\*\*(.+)\*\*", m.value)
        if found and found.group(1) in NAMES:
            names.append(found.group(1))
    return names


def shown_count(at) -> int | None:
    for m in at.markdown:
        found = re.fullmatch(r"\*\*(\d+) match(?:es)? at or above \d+%\*\*", m.value)
        if found:
            return int(found.group(1))
    return None


@pytest.fixture
def counted_embedder(app_settings, monkeypatch):
    """The process-wide tiny CLIP with its image and text calls counted (the page shares this instance)."""
    from vpm.models.embeddings import load_embedder

    embedder = load_embedder(app_settings.vpm_model, app_settings.vpm_device)
    calls = {"images": 0, "texts": 0}
    embed_images, embed_texts = embedder.embed_images, embedder.embed_texts

    def count_images(images, *args, **kwargs):
        calls["images"] += 1
        return embed_images(images, *args, **kwargs)

    def count_texts(texts, *args, **kwargs):
        calls["texts"] += 1
        return embed_texts(texts, *args, **kwargs)

    monkeypatch.setattr(embedder, "embed_images", count_images)
    monkeypatch.setattr(embedder, "embed_texts", count_texts)
    return calls


def upload(at, name: str, data: bytes, mime: str = "image/png"):
    at.file_uploader(key="search_upload").set_value((name, data, mime))
    return at.run()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_empty_catalog_says_so_and_links_to_the_catalog(app_settings, open_page):
    at = open_page(SEARCH)

    assert not at.exception
    assert any("catalog is empty" in i.value for i in at.info)
    assert "Add or import products" in [link.value for link in at.page_link]
    assert not at.file_uploader  # nothing to search yet


def test_uploading_a_photo_shows_the_matching_product_first_with_its_score(
    backend, app_settings, seed_catalog, open_page, product_photo
):
    seed_catalog(CATALOG)
    at = open_page(SEARCH)
    assert not at.exception
    assert not at.camera_input  # the camera is only asked for behind the toggle

    at = upload(at, "my-photo.png", product_photo(3))

    assert not at.exception
    names = card_names(at)
    assert names[0] == "Trail shoe"  # the very same picture: the highest score of the list
    assert at.progress[0].value >= 99 and at.progress[0].text == f"{at.progress[0].value}% match"
    assert [p.value for p in at.progress] == sorted((p.value for p in at.progress), reverse=True)
    assert any(c.value.startswith("looks 100% alike") for c in at.caption)  # what the score is made of
    assert shown_count(at) == len(names)
    assert any("Search took" in c.value for c in at.caption)
    assert any(c.value == "Shoes · $89.00" for c in at.caption)  # category and price on the card
    assert at.image  # the query photo is shown next to the results
    assert at.download_button[0].label == "Download results (CSV)"


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_moving_the_threshold_refilters_without_embedding_again(
    app_settings, seed_catalog, open_page, product_photo, counted_embedder
):
    seed_catalog(CATALOG)  # embeds the products (their vectors are cached as they are added)
    at = open_page(SEARCH)
    seeded = counted_embedder["images"]
    at = upload(at, "query.png", product_photo(1))
    assert counted_embedder["images"] == seeded + 1  # the query only

    at.slider(key="search_threshold_image").set_value(0).run()
    everything = shown_count(at)
    at.slider(key="search_threshold_image").set_value(99).run()
    only_exact = shown_count(at)
    at.slider(key="search_top_k").set_value(2).run()
    at.slider(key="search_threshold_image").set_value(0).run()

    assert not at.exception
    assert everything == len(CATALOG)
    assert only_exact == 1
    assert card_names(at) and len(card_names(at)) == 2  # top-k caps the cards
    assert counted_embedder["images"] == seeded + 1  # four re-rankings, no new embedding


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_category_filter_narrows_the_results(app_settings, seed_catalog, open_page, product_photo):
    seed_catalog(CATALOG)
    at = open_page(SEARCH)
    at = upload(at, "query.png", product_photo(1))
    at.slider(key="search_threshold_image").set_value(0).run()

    at.multiselect(key="search_categories").set_value(["Lighting"]).run()

    assert not at.exception
    assert sorted(card_names(at)) == ["Desk lamp", "Floor lamp"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_nothing_above_the_threshold_names_the_closest_product_and_offers_it(
    app_settings, seed_catalog, open_page, product_photo
):
    seed_catalog(CATALOG)
    at = open_page(SEARCH)
    at = upload(at, "unlike-anything.png", product_photo(99))
    at.slider(key="search_threshold_image").set_value(0).run()
    closest = card_names(at)[0]

    at.slider(key="search_threshold_image").set_value(100).run()

    assert not at.exception
    assert card_names(at) == []
    warning = at.warning[0].value
    assert warning.startswith(f"No product reaches 100%. The closest is {closest} at ")
    assert "lower the threshold" in warning
    at.button(key="search_show_best").click().run()  # "Show it": the slider comes down to its score
    assert not at.exception
    assert card_names(at)[0] == closest and at.slider(key="search_threshold_image").value < 100


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_bad_file_shows_the_specific_message_and_the_page_keeps_working(
    app_settings, seed_catalog, open_page, product_photo
):
    seed_catalog(CATALOG)
    at = open_page(SEARCH)
    at = upload(at, "good.png", product_photo(2))
    assert card_names(at)

    at = upload(at, "holiday.jpg", b"this is a text file, not a photo", "image/jpeg")

    assert not at.exception
    assert len(at.error) == 1 and "holiday.jpg" in shown(at.error[0].value)
    assert card_names(at) == []  # the earlier results are not passed off as this file's

    at = upload(at, "good-again.png", product_photo(4))
    assert not at.exception
    assert not at.error
    assert card_names(at)[0] == "Road shoe"


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_refused_link_says_why(app_settings, seed_catalog, open_page):
    seed_catalog(CATALOG[:2])
    at = open_page(SEARCH)
    at.radio(key="search_mode").set_value("Image link").run()

    at.text_input(key="search_url").input("http://127.0.0.1:8501/secret.png").run()

    assert not at.exception
    assert len(at.error) == 1
    assert "127.0.0.1" in shown(at.error[0].value) or "private" in at.error[0].value.lower()
    assert card_names(at) == []


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_camera_is_behind_a_toggle_and_its_photo_is_searched(app_settings, seed_catalog, open_page, product_photo):
    seed_catalog(CATALOG)
    at = open_page(SEARCH)
    assert not at.camera_input

    at.toggle(key="search_camera").set_value(True).run()
    at.camera_input(key="search_camera_input").set_value(("photo.jpg", product_photo(5, fmt="JPEG"), "image/jpeg"))
    at.run()

    assert not at.exception
    assert card_names(at)[0] == "Desk lamp"
    assert not at.file_uploader  # the camera replaces the upload box while it is on


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_an_image_link_is_fetched_once_and_searched(app_settings, seed_catalog, open_page, product_photo, monkeypatch):
    from vpm.core import urlfetch

    seed_catalog(CATALOG)
    fetched = []

    def fake_fetch(url, **limits):  # the network is out of reach here; the page's handling is what is tested
        fetched.append(url)
        return urlfetch.FetchedImage(product_photo(6), "lamp.png", "image/png", url)

    monkeypatch.setattr(urlfetch, "fetch_image_bytes", fake_fetch)
    at = open_page(SEARCH)
    at.radio(key="search_mode").set_value("Image link").run()

    at.text_input(key="search_url").input("https://shop.example/lamp.png").run()
    at.slider(key="search_threshold_image").set_value(50).run()

    assert not at.exception
    assert card_names(at)[0] == "Floor lamp"
    assert at.image  # the fetched picture is shown as the query
    assert fetched == ["https://shop.example/lamp.png"]  # moving the slider did not fetch again


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_lost_vector_cache_is_rebuilt_with_progress_before_the_first_search(
    app_settings, seed_catalog, open_page, product_photo
):
    import shutil

    from vpm.backends import engine

    seed_catalog(CATALOG)
    for table in (app_settings.vpm_data_dir / "metadata").glob("vectors-*.lance"):
        shutil.rmtree(table)  # derived data: may be lost
    engine.forget()

    at = open_page(SEARCH)
    at = upload(at, "query.png", product_photo(2))

    assert not at.exception
    assert [s.label for s in at.status] == ["Search index ready"]
    assert card_names(at)[0] == "Blue mug"


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_text_search_with_tiny_clip(app_settings, seed_catalog, open_page, counted_embedder):
    seed_catalog(CATALOG)
    at = open_page(SEARCH)
    at.radio(key="search_mode").set_value("Words").run()
    assert counted_embedder["texts"] == 0

    at.text_input(key="search_text").input("trail shoe").run()
    # The tiny random model's text-image scores sit far below a real CLIP's default; show everything it has.
    at.slider(key="search_threshold_text").set_value(0).run()

    assert not at.exception
    assert any(m.value == "For “trail shoe”" for m in at.markdown)
    assert card_names(at)
    assert counted_embedder["texts"] == 1


def test_words_offline_are_looked_up_in_names_and_each_card_says_where(
    backend, app_settings, seed_catalog, open_page, monkeypatch, tmp_path
):
    seed_catalog(CATALOG)
    monkeypatch.setenv("VPM_MODEL", str(tmp_path / "no-model-here"))  # not a model: the offline fallback runs
    at = open_page(SEARCH)

    at.radio(key="search_mode").set_value("Words").run()
    notes = [shown(c.value) for c in at.caption if "reads photos only" in shown(c.value)]
    assert len(notes) == 1 and "\n" not in notes[0] and "package text" in notes[0]
    assert [s.key for s in at.slider] == ["search_top_k"]  # no threshold: words alone rank, no percentage

    at.text_input(key="search_text").input("trial shoe").run()  # misspelled

    assert not at.exception
    assert card_names(at)[0] == "Trail shoe" and "Road shoe" in card_names(at)
    assert any(shown(c.value) == "answered by: words in names and package text" for c in at.caption)
    assert any(m.value == f"**{len(card_names(at))} products found by these words**" for m in at.markdown)
    matched = [shown(c.value) for c in at.caption if shown(c.value).startswith("matched in:")]
    assert len(matched) == len(card_names(at)) and matched[0] == "matched in: name, category"  # "Shoes"
    assert not at.progress  # a words match is no percentage

    at.text_input(key="search_text").input("zzyzx").run()
    assert not at.exception and not card_names(at)
    assert any(shown(w.value).startswith("No product's name, brand, description") for w in at.warning)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_words_with_clip_fuse_its_ranking_with_the_words_and_say_so(
    app_settings, seed_catalog, open_page, counted_embedder
):
    seed_catalog(CATALOG)
    at = open_page(SEARCH)
    at.radio(key="search_mode").set_value("Words").run()
    assert not [c for c in at.caption if "reads photos only" in c.value]

    at.text_input(key="search_text").input("desk lamp").run()
    at.slider(key="search_threshold_text").set_value(100).run()  # CLIP's share hidden: the words still find it

    assert not at.exception
    assert card_names(at) == ["Desk lamp", "Floor lamp"]
    assert any(shown(c.value) == "answered by: CLIP + words" for c in at.caption)
    assert [shown(c.value) for c in at.caption if shown(c.value).startswith("matched in:")] == [
        "matched in: name", "matched in: name"]
    assert len(at.progress) == 2  # CLIP's cosine still shown beside where the words matched
    assert counted_embedder["texts"] == 1  # the slider re-ranks without embedding the words again


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_full_search_gate_shows_the_queue_then_says_busy_and_a_free_place_searches(
    app_settings, seed_catalog, open_page, product_photo, monkeypatch
):
    import threading

    from streamlit.delta_generator import DeltaGenerator

    from vpm.core.admission import QUEUE_MARK, shared_gate

    seed_catalog(CATALOG)
    monkeypatch.setenv("VPM_SEARCH_CONCURRENCY", "1")
    monkeypatch.setenv("VPM_SEARCH_QUEUE_TIMEOUT_S", "0.5")
    drawn: list[str] = []
    info = DeltaGenerator.info

    def recorded(self, body, *args, **kwargs):  # the queue notice is replaced once the wait ends: note it as drawn
        drawn.append(str(body))
        return info(self, body, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "info", recorded)
    gate = shared_gate(1, 0.5)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:  # another visitor's search, running
        with gate.admit():
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert holding.wait(10)
        at = open_page(SEARCH)
        at = upload(at, "shot.png", product_photo(3))

        assert not at.exception
        assert any(QUEUE_MARK in text and "1 search" in text for text in drawn)
        busy = [e.value for e in at.error]
        assert len(busy) == 1 and "the app is busy" in busy[0].lower() and "Nothing was searched" in busy[0]
        assert not card_names(at)
    finally:
        release.set()
        holder.join(10)

    at = upload(at, "again.png", product_photo(3))  # a place is free: the search runs
    assert not at.exception and not at.error and card_names(at)[0] == "Trail shoe"


def test_results_csv_lists_matches_best_first_and_keeps_formulas_inert():
    from vpm.core.catalog import Product
    from vpm.core.matcher import Match

    matches = [
        Match(Product(id="a", name="=cmd()", category="X", price=3.5), 0.91234, "images/a.jpg", "https://cdn/a.jpg",
              None),
        Match(Product(id="b", name="Plain", category="Y"), 0.5, "images/b.jpg", None, None),
    ]
    rows = list(csv.reader(io.StringIO(results_csv(matches).decode("utf-8-sig"))))

    assert rows[0] == ["rank", "id", "name", "category", "price", "score_percent", "score", "image_url"]
    assert rows[1] == ["1", "a", "'=cmd()", "X", "3.50", "91", "0.9123", "https://cdn/a.jpg"]
    assert rows[2] == ["2", "b", "Plain", "Y", "", "50", "0.5000", ""]


def test_result_texts_read_well():
    assert results_count_text(1, 0.75) == "1 match at or above 75%"
    assert results_count_text(3, 0.0) == "3 matches at or above 0%"
    assert nothing_found_text(0.613, 0.8).startswith("No product reaches 80%. The best match scored 61%")
    assert nothing_found_text(None, 0.8) == "No products to compare with in the chosen categories."


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_model_that_cannot_load_is_explained_instead_of_crashing(app_settings, seed_catalog, open_page, monkeypatch):
    seed_catalog(CATALOG[:1])
    monkeypatch.setenv("VPM_DEVICE", "toaster")

    at = open_page(SEARCH)

    assert not at.exception
    assert "VPM_DEVICE='toaster'" in shown(at.error[0].value)
    assert "Open Health for what to do" in [link.value for link in at.page_link]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_more_like_this_on_a_card_shows_that_products_look_alikes_and_back_returns(
    app_settings, seed_catalog, open_page, product_photo
):
    seed_catalog(CATALOG)
    at = open_page(SEARCH)
    at = upload(at, "my-photo.png", product_photo(3))
    at.slider(key="search_threshold_image").set_value(0).run()
    first = card_names(at)[0]

    at.button(key="vpm_more_results_0").click().run()

    assert not at.exception
    assert any(h.value == f"More like {first}" for h in at.subheader)
    assert first not in card_names(at) and len(card_names(at)) == len(CATALOG) - 1
    at.button(key="search_similar_back").click().run()
    assert not at.exception and card_names(at)[0] == first


# --- several photos, words beside a photo, not this one (vpm/core/query_mix.py) ---------------------------------------


def session_query_caption(at) -> str:
    return next((c.value for c in at.caption if c.value.startswith("This session's query:")), "")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_more_photos_of_the_product_are_searched_with_the_first_as_one_query(
    app_settings, seed_catalog, open_page, product_photo, counted_embedder
):
    seed_catalog(CATALOG)
    at = open_page(SEARCH)
    at = upload(at, "front.png", product_photo(3))
    before = counted_embedder["images"]

    at.file_uploader(key="search_more").set_value([("back.png", product_photo(3, size=80), "image/png"),
                                                   ("side.jpg", product_photo(3, fmt="JPEG"), "image/jpeg")]).run()
    at.slider(key="search_threshold_image").set_value(0).run()

    assert not at.exception
    assert card_names(at)[0] == "Trail shoe"
    assert any("3 photos searched as one query (mean vector)" in c.value for c in at.caption)
    assert counted_embedder["images"] == before + 1  # the three photos in one model call, the slider none
    captions = [c for image in at.image for c in image.captions]
    assert "Your photos" in captions and "Your photo" not in captions


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_words_refine_the_photo_with_the_weight_shown_and_the_slider_embeds_nothing(
    app_settings, seed_catalog, open_page, product_photo, counted_embedder
):
    from vpm.core.matcher import Matcher

    seed_catalog(CATALOG)
    at = open_page(SEARCH)
    at = upload(at, "shot.png", product_photo(5))
    at.slider(key="search_threshold_image").set_value(0).run()
    photo_order = card_names(at)

    at.text_input(key="search_refine").input("a striped running shoe").run()
    at.slider(key="search_refine_weight").set_value(2.5).run()

    assert not at.exception
    expected = Matcher(app_settings).search_mixed([(product_photo(5), "shot.png")], text="a striped running shoe",
                                                  text_weight=2.5, threshold=0)
    assert card_names(at) == [m.product.name for m in expected.results]
    assert session_query_caption(at) == ("This session's query: refined by “a striped running shoe”. Weights: "
                                         "words weigh 2.5 beside the photos (1 = as much); each rejected product's "
                                         "look is subtracted at 0.1.")
    assert counted_embedder["texts"] == 1  # the words once; moving their weight re-ranks only
    at.slider(key="search_refine_weight").set_value(0.0).run()
    assert card_names(at) == photo_order  # weight 0: the photo alone


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_not_this_one_hides_a_result_for_the_session_until_cleared(
    app_settings, seed_catalog, open_page, product_photo
):
    seed_catalog(CATALOG)
    at = open_page(SEARCH)
    at = upload(at, "shot.png", product_photo(3))
    at.slider(key="search_threshold_image").set_value(0).run()
    first = card_names(at)[0]

    at.button(key="vpm_not_results_0").click().run()

    assert not at.exception
    assert first not in card_names(at) and len(card_names(at)) == len(CATALOG) - 1
    assert session_query_caption(at).startswith(f"This session's query: not {first}. Weights:")
    at = upload(at, "another.png", product_photo(4))  # a new photo: still not that one, for the session
    assert first not in card_names(at)

    at.button(key="search_clear").click().run()
    assert first in card_names(at) and not session_query_caption(at)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_with_a_photo_only_model_refining_says_why_in_one_line_and_not_this_one_still_works(
    app_settings, seed_catalog, open_page, product_photo, monkeypatch, tmp_path
):
    seed_catalog(CATALOG)
    monkeypatch.setenv("VPM_MODEL", str(tmp_path / "no-model-here"))  # not a model: the offline fallback runs
    at = open_page(SEARCH)
    at = upload(at, "shot.png", product_photo(3))
    at.slider(key="search_threshold_image").set_value(0).run()

    assert not [t for t in at.text_input if t.key == "search_refine"]
    off = [shown(c.value) for c in at.caption if shown(c.value).startswith("Refine with words is off:")]
    assert len(off) == 1 and "\n" not in off[0] and "reads photos only" in off[0]
    first = card_names(at)[0]
    at.button(key="vpm_not_results_0").click().run()
    assert not at.exception and first not in card_names(at) and card_names(at)
