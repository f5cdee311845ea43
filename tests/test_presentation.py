"""What people read: percentages, prices, sizes, the results CSV and the add form's checks."""

from __future__ import annotations

import csv
import io
from types import SimpleNamespace

from vpm.core.presentation import (
    add_form_problems,
    changed_fields,
    format_bytes,
    format_percent,
    format_price,
    nothing_found_text,
    page_caption,
    pick_category,
    results_csv,
)


class FakeMatch:
    def __init__(self, **row):
        self.row = row

    def as_dict(self):
        return self.row


def test_scores_read_as_clamped_whole_percentages_rounded_down():
    assert [format_percent(s) for s in (0.8749, 1.0, -0.3, float("nan"))] == ["87%", "100%", "0%", "0%"]
    # Rounded down: a card that reads 76% is never one a threshold of 76% hides.
    assert [format_percent(s) for s in (0.7599, 0.76, 0.999)] == ["75%", "76%", "99%"]


def test_prices_and_sizes():
    assert (format_price(1299.5), format_price(None)) == ("$1,299.50", "")
    assert (format_price(1e9), format_price(1e308)) == ("$1,000,000,000.00", "$1.00e+308")  # not 309 digits
    assert [format_bytes(n) for n in (512, 2048, 5 * 1024**2)] == ["512 B", "2.0 KB", "5.0 MB"]


def test_nothing_found_names_the_closest_product_and_the_score_to_lower_to():
    text = nothing_found_text(0.613, 0.75, "Oat drink")
    assert text.startswith("No product reaches 75%.") and "The closest is Oat drink at 61%" in text
    assert "lower the threshold to 61%" in text
    assert "The best match scored 61%" in nothing_found_text(0.613, 0.75)
    assert "No products to compare" in nothing_found_text(None, 0.75)


def test_a_results_signals_read_in_a_few_words():
    from types import SimpleNamespace

    from vpm.core.presentation import signals_text

    both = SimpleNamespace(similarity=0.8149, inliers=24, reads=("OATLY", "HAVRE"))
    assert signals_text(both) == "looks 81% alike · 24 keypoints match · reads OATLY, HAVRE"
    assert signals_text(SimpleNamespace(similarity=0.5, inliers=None, reads=())) == "looks 50% alike"


def test_results_csv_is_ranked_spreadsheet_safe_and_keeps_accents():
    data = results_csv([
        FakeMatch(id="p1", name="Crème brûlée dish", category="Kitchen", price=12.5, score=0.91234,
                  image_url="https://cdn/p1.jpg"),
        FakeMatch(id="p2", name="=HYPERLINK(\"http://evil\")", category="@SUM(A1)", price=None, score=0.5,
                  image_url=None),
    ])
    assert data.startswith("\ufeff".encode())  # spreadsheet apps then read UTF-8
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert [r["rank"] for r in rows] == ["1", "2"]
    assert rows[0]["name"] == "Crème brûlée dish" and rows[0]["price"] == "12.50"
    assert (rows[0]["score_percent"], rows[0]["score"]) == ("91", "0.9123")
    assert rows[1]["name"].startswith("'=") and rows[1]["category"].startswith("'@")  # text, not formulas
    assert rows[1]["price"] == "" and rows[1]["image_url"] == ""


def test_results_csv_leaves_out_server_paths():
    data = results_csv([FakeMatch(id="p1", name="Mug", category="Kitchen", price=None, score=0.9,
                                  image_url="file:///srv/app/data/images/p1.jpg")])
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows[0]["image_url"] == "" and b"/srv/app" not in data


def test_quantities_read_as_numbers_with_their_unit():
    from vpm.core.presentation import format_quantity, sentence

    assert format_quantity(10_000, "requests") == "10,000 requests"
    assert format_quantity(1, "requests") == "1 request"
    assert format_quantity(0, "requests") == "0 requests"
    assert format_quantity(0.0012345, "GB") == "0.0012 GB"
    assert format_quantity(2.5, "GB-month") == "2.5 GB-month"
    assert format_quantity(1234.56, "GB") == "1,235 GB"
    assert "e+" not in format_quantity(12_345_678, "requests")
    assert sentence("bucket 'x' does not exist") == "Bucket 'x' does not exist" and sentence("") == ""


def test_the_add_form_says_everything_it_still_needs_in_one_sentence():
    assert add_form_problems(False, " ", "") == (
        "To add a product, choose a photo of the product, give it a name, choose a category or type a new one."
    )
    assert add_form_problems(True, "Mug", "") == "To add a product, choose a category or type a new one."
    assert add_form_problems(True, "Mug", "Kitchen") is None
    assert pick_category("Kitchen", "  Shoes ") == "Shoes" and pick_category("Kitchen", "") == "Kitchen"


def test_page_captions_say_which_products_are_shown():
    def page(offset, items, total):
        return SimpleNamespace(offset=offset, items=[object()] * items, total=total)

    assert page_caption(page(0, 50, 1234), 1234) == "Showing 1-50 of 1,234 products, latest changes first."
    assert page_caption(page(50, 30, 80), 1234) == "Showing 51-80 of 80 matching (1,234 in all), latest changes first."
    assert page_caption(page(0, 0, 0), 12) == "No product matches (of 12 products)."
    assert page_caption(page(0, 0, 0), 0) == "No products yet."


def test_edits_keep_only_what_changed():
    product = SimpleNamespace(name="Mug", category="Kitchen", price=None, description=None)
    assert changed_fields(product, name=" Mug ", category="Kitchen", price=None, description="") == {}
    assert changed_fields(product, name="Big mug", category="Kitchen", price=3.0, description="") == {
        "name": "Big mug", "price": 3.0}


def test_the_search_hint_offers_words_only_when_the_model_reads_them():
    from vpm.core.presentation import query_hint

    assert "describe the product" in query_hint(True)
    assert query_hint(False) == ("Upload a photo, take one, paste an image link or type the product's name to see "
                                 "matches.")
