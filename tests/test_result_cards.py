"""A result card shows the thumbnail URL the result carries where a browser can open it (a bucket), and reads the
thumbnail itself only where it cannot (a local folder's file:// path)."""

from __future__ import annotations

import pytest

SEARCH = "pages/search.py"
CATALOG = [("Red mug", "Kitchen", 1), ("Trail shoe", "Shoes", 3), ("Desk lamp", "Lighting", 5)]


@pytest.fixture
def reads(monkeypatch):
    """The keys read through matcher.files while the page runs (AppTest runs it in this process)."""
    from vpm.core.catalog_files import CatalogFiles

    keys: list[str] = []
    read = CatalogFiles.read

    def counted(self, key):
        keys.append(key)
        return read(self, key)

    monkeypatch.setattr(CatalogFiles, "read", counted)
    return keys


def card_pictures(at) -> list[str]:
    """The URLs of the pictures drawn on result cards (the query photo beside the results has a caption)."""
    return [img.url for element in at.image for img in element.proto.imgs if not img.caption]


def test_result_cards_show_the_results_own_thumbnail_urls_on_a_bucket_and_read_them_locally(
    backend, app_settings, seed_catalog, open_page, product_photo, reads
):
    products = seed_catalog(CATALOG)
    thumbnails = {p.photos[0].thumbnail_key for p in products}
    at = open_page(SEARCH)

    at.file_uploader(key="search_upload").set_value(("shoe.png", product_photo(3), "image/png"))
    at = at.run()

    assert not at.exception
    pictures = card_pictures(at)
    assert pictures
    read_thumbnails = [k for k in reads if k in thumbnails]
    if backend == "s3":  # presigned URLs of the bucket's own thumbnails: the browser fetches them
        assert all("X-Amz-Signature=" in url and "/thumbnails/" in url for url in pictures)
        assert not read_thumbnails
    else:  # a file:// path means nothing to a browser: the app serves the thumbnail's bytes itself
        assert all("/media/" in url and "://" not in url for url in pictures)  # Streamlit's own media files
        assert read_thumbnails


def test_a_card_without_a_thumbnail_url_falls_back_to_the_stored_picture(monkeypatch):
    from types import SimpleNamespace

    from vpm.faces import webapp

    product = SimpleNamespace(id="p1", photos=[])
    monkeypatch.setattr(webapp, "product_picture", lambda product, photo_key: b"stored bytes")
    result = SimpleNamespace(product=product, score=0.9, photo_key="images/p1.jpg", thumbnail_url=None)

    assert webapp.card_picture(result, web_urls=True) == b"stored bytes"  # never the full-size original's URL
    with_url = SimpleNamespace(**{**vars(result), "thumbnail_url": "https://cdn.example/thumbnails/p1.webp"})
    assert webapp.card_picture(with_url, web_urls=True) == "https://cdn.example/thumbnails/p1.webp"
    assert webapp.card_picture(with_url, web_urls=False) == b"stored bytes"
