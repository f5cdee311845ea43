"""The sample catalog shipped in sample/ and the tool that makes it: what a card shows is right, and stays right
when the sample is made again (tools/make_sample_catalog.py is the source of truth)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample"


@pytest.fixture(scope="module")
def maker():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import make_sample_catalog
    finally:
        sys.path.remove(str(REPO / "tools"))
    return make_sample_catalog


def shipped() -> list[dict[str, str]]:
    with (SAMPLE / "products.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_god_morgon_juices_are_by_god_morgon_not_by_god(maker):
    juices = [row for row in shipped() if row["name"].startswith("God Morgon")]
    assert len(juices) == 12  # 4 juices, 3 photos each
    assert {(row["brand"], row["description"]) for row in juices} == {("God Morgon", "Juice by God Morgon")}
    assert maker.describe({"subcategory": "Juice", "brand": "God"}) == "Juice by God Morgon"  # made again: the same


def test_the_vitamin_e_product_shows_its_bottle_first_not_a_label_panel(maker):
    photos = [row["image"] for row in shipped() if row["id"] == "abo:B07GTFSCHB"]
    assert photos == ["photos/abo_B07GTFSCHB_04.jpg", "photos/abo_B07GTFSCHB_03.jpg", "photos/abo_B07GTFSCHB_01.jpg"]
    assert all((SAMPLE / photo).is_file() for photo in photos)
    assert not (SAMPLE / "photos" / "abo_B07GTFSCHB_02.jpg").exists()  # no file the catalog does not list
    rows = [{"product_id": "abo:B07GTFSCHB", "file": f"abo_B07GTFSCHB_0{n}.jpg", "view_index": str(n),
             "suggested_role": "gallery" if n == 1 else "view"} for n in (1, 2, 3, 4)]
    assert [row["file"] for row in maker.chosen(rows)] == [p.rsplit("/", 1)[1] for p in photos]


def test_every_listed_photo_is_shipped_and_every_shipped_photo_listed():
    listed = {row["image"] for row in shipped()}
    files = {f"photos/{path.name}" for path in (SAMPLE / "photos").iterdir()}
    assert listed == files and len(listed) == 252


def test_the_load_button_says_what_loading_takes():
    from vpm.core.sample import LOAD_TIME, offer_help

    text = offer_help()
    assert text.startswith("84 products with 252 photos") and LOAD_TIME in text
    assert "few minutes" not in text
