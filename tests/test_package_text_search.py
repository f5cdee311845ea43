"""Package text as a search signal, end to end (Matcher level, both backends): read when a photo is added, filled
in by `vpm index`, read on the query when it can change the first answer, and shown ("reads: OATLY")."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw, ImageFont

from synthetic import shopper_view, textured, to_bytes

BRANDS = ("OATLY", "ALPRO", "ARLA")


def carton(word: str) -> Image.Image:
    """One look-alike carton (the same pattern for every brand) with its brand printed large across it."""
    image = textured(7).copy()
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 120, 300, 200), fill="white")
    draw.text((34, 130), word, fill="black", font=ImageFont.load_default(size=56))
    return image


@pytest.fixture
def reading(search_settings, monkeypatch):
    """A Matcher that reads package text (the suite switches it off elsewhere: it costs ~0.4 s a photo)."""
    from vpm.core.config import load_settings
    from vpm.core.matcher import Matcher

    monkeypatch.setenv("VPM_PACKAGE_TEXT", "true")
    return Matcher(load_settings())


def stock(matcher):
    return {word: matcher.create_product([(to_bytes(carton(word)), f"{word}.png")], name=f"{word} oat drink",
                                         category="Drinks") for word in BRANDS}


def test_the_brand_read_on_the_photo_decides_between_look_alike_cartons(reading):
    products = stock(reading)
    keys = [p.photos[0].key for p in products.values()]
    stored = reading.texts.texts_for(keys)
    assert sorted(stored) == sorted(keys) and "ALPRO" in stored[products["ALPRO"].photos[0].key]

    query = to_bytes(shopper_view(carton("ALPRO"), 3), "JPEG")
    response = reading.search_image(query, "shelf.jpg", threshold=-1)

    first = response.results[0]
    assert first.product.id == products["ALPRO"].id
    assert response.text_read and first.text is not None and first.text > max(m.text or 0 for m in response.results[1:])
    assert "ALPRO" in first.reads  # what the card says it read
    assert response.as_dict()["results"][0]["signals"]["reads"] == list(first.reads)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_older_photos_get_their_text_from_vpm_index_and_lose_it_with_their_product(reading):
    products = stock(reading)
    keys = [p.photos[0].key for p in products.values()]
    reading.texts.delete_photos(keys)  # as a catalog made before package text was read

    reading.reindex()

    assert sorted(reading.texts.texts_for(keys)) == sorted(keys)
    reading.delete_product(products["OATLY"].id)
    assert products["OATLY"].photos[0].key not in reading.texts.texts_for(keys)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_switched_off_nothing_is_read(matcher):
    products = stock(matcher)

    assert not matcher.has_text_table() and matcher.stored_texts([p.photos[0].key for p in products.values()]) == {}
    response = matcher.search_image(to_bytes(carton("ARLA")), "q.png", threshold=-1)
    assert not response.text_read and all(m.text is None for m in response.results)
