"""Search page: verification switch, search by region (sliders with a live preview), and "why this match"."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from synthetic import shopper_view, textured, to_bytes

SEARCH = "pages/search.py"


@pytest.fixture
def packs(app_settings):
    from vpm.core.matcher import Matcher

    matcher = Matcher(app_settings)
    return [matcher.create_product([(to_bytes(textured(s)), f"pack-{s}.png")], name=f"Pack {s}", category="Packs")
            for s in (11, 12, 13)]


def card_names(at) -> list[str]:
    return [m.group(1) for m in (re.fullmatch(r"\*\*(Pack \d+)\*\*", x.value) for x in at.markdown) if m]


def upload(at, name: str, data: bytes, mime: str = "image/png"):
    at.file_uploader(key="search_upload").set_value((name, data, mime))
    return at.run()


def image_captions(at) -> list[str]:
    return [img.caption for element in at.image for img in element.proto.imgs]


def shelf_photo() -> bytes:
    shelf = Image.new("RGB", (660, 330), "white")
    shelf.paste(textured(11), (0, 0))
    shelf.paste(textured(12), (340, 5))
    return to_bytes(shelf)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_region_sliders_search_only_that_part_and_preview_it(app_settings, packs, open_page):
    at = open_page(SEARCH)
    at = upload(at, "shelf.png", shelf_photo())
    at.slider(key="search_threshold_image").set_value(0).run()

    at.toggle(key="search_region").set_value(True).run()
    at.slider(key="search_region_x").set_value((52, 100)).run()

    assert not at.exception
    assert card_names(at)[0] == "Pack 12"  # the right-hand product, framed
    assert "The region searched: 317×330 px" in image_captions(at)

    at.slider(key="search_region_x").set_value((0, 48)).run()
    assert card_names(at)[0] == "Pack 11"


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_region_too_small_is_explained_and_not_searched(app_settings, packs, open_page):
    at = open_page(SEARCH)
    at = upload(at, "shelf.png", shelf_photo())
    at.toggle(key="search_region").set_value(True).run()

    at.slider(key="search_region_x").set_value((50, 51)).run()

    assert not at.exception
    assert any("widen the region" in w.value for w in at.warning)
    assert not card_names(at)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_verification_can_be_switched_off_and_on(app_settings, packs, open_page):
    at = open_page(SEARCH)
    at = upload(at, "q.jpg", to_bytes(shopper_view(textured(13), 1), "JPEG"), "image/jpeg")
    at.slider(key="search_threshold_image").set_value(0).run()

    assert at.toggle(key="search_rerank").value is True  # VPM_RERANK's default
    assert any("verified by keypoints" in c.value for c in at.caption)
    assert any("keypoints match" in c.value for c in at.caption)  # the card says what its score is made of
    assert card_names(at)[0] == "Pack 13"

    at.toggle(key="search_rerank").set_value(False).run()

    assert not at.exception
    assert not any("verified by keypoints" in c.value for c in at.caption)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_why_this_match_draws_the_matching_keypoints(app_settings, packs, open_page):
    at = open_page(SEARCH)
    at = upload(at, "q.jpg", to_bytes(shopper_view(textured(12), 2), "JPEG"), "image/jpeg")
    at.slider(key="search_threshold_image").set_value(0).run()

    at.selectbox(key="search_why_pick").set_value(0).run()
    at.button(key="search_why").click().run()

    assert not at.exception
    assert any(re.search(r"\d+ keypoints match under one consistent change of view", c) for c in image_captions(at))
