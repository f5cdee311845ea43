"""The product model (validation, photos, edits) and the first release's products.json format (vpm.core.legacy).

The store itself has its own contract suite: tests/test_catalog_store.py.
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from vpm.core.catalog import (
    CatalogCorrupt,
    InvalidProduct,
    Photo,
    Product,
    ProductNotFound,
    apply_edit,
    validate_product,
    with_photos,
    without_photo,
)
from vpm.core.legacy import parse_products_json, write_products_json


def photo(name: str) -> Photo:
    return Photo(key=f"images/{name}.jpg", thumbnail_key=f"thumbnails/{name}.webp",
                 sha256=hashlib.sha256(name.encode()).hexdigest())


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"name": "", "category": "C"}, "name"),
        ({"name": "   ", "category": "C"}, "name"),
        ({"name": "x" * 201, "category": "C"}, "name"),
        ({"name": "A"}, "category"),
        ({"name": "A", "category": "C", "id": "../etc"}, "id"),
        ({"name": "A", "category": "C", "id": "has space"}, "id"),
        ({"name": "A", "category": "C", "price": -1}, "price"),
    ],
)
def test_invalid_products_get_a_message_naming_the_field(fields, message):
    with pytest.raises(InvalidProduct, match=message):
        validate_product(**fields)


def test_product_ids_are_unique_and_safe():
    ids = {Product(name="A", category="C").id for _ in range(500)}
    assert len(ids) == 500
    assert all(i.startswith("product_") and i.replace("_", "").isalnum() for i in ids)


def test_the_first_photo_is_the_products_picture():
    product = Product(name="A", category="C", photos=[photo("front"), photo("back")])
    assert product.image_key == "images/front.jpg" and product.thumbnail_key == "thumbnails/front.webp"
    assert product.file_keys() == ["images/front.jpg", "thumbnails/front.webp", "images/back.jpg",
                                   "thumbnails/back.webp"]
    document = product.as_json()
    assert document["image_key"] == "images/front.jpg" and len(document["photos"]) == 2
    assert "revision" not in document


def test_two_photos_may_not_share_a_key():
    with pytest.raises(ValueError, match="share"):
        Product(name="A", category="C", photos=[photo("front"), photo("front")])


def test_edits_touch_only_editable_fields_and_bump_the_revision():
    product = Product(id="p1", name="A", category="C", photos=[photo("front")])
    edited = apply_edit(product, {"name": "B", "price": 2.5})
    assert (edited.name, edited.price, edited.revision) == ("B", 2.5, 1)
    assert edited.photos == product.photos and edited.updated_at
    with pytest.raises(InvalidProduct, match="photos"):
        apply_edit(product, {"photos": []})
    with pytest.raises(InvalidProduct, match="name"):
        apply_edit(product, {"name": ""})


def test_photos_are_added_and_removed_but_the_last_one_stays():
    product = Product(id="p1", name="A", category="C", photos=[photo("front")])
    more = with_photos(product, [photo("side")])
    assert [p.key for p in more.photos] == ["images/front.jpg", "images/side.jpg"]
    with pytest.raises(InvalidProduct, match="already has"):
        with_photos(more, [photo("side")])
    fewer = without_photo(more, "images/front.jpg")
    assert [p.key for p in fewer.photos] == ["images/side.jpg"]
    with pytest.raises(InvalidProduct, match="only photo"):
        without_photo(fewer, "images/side.jpg")
    with pytest.raises(ProductNotFound):
        without_photo(more, "images/nope.jpg")


# ------------------------------------------------------------------------------------- products.json


def test_the_one_photo_layout_of_products_json_reads_as_a_photo():
    sha = hashlib.sha256(b"x").hexdigest()
    document = {"schema": 1, "version": 3, "products": [
        {"id": "p1", "name": "Old", "category": "C", "image_key": "images/p1.jpg",
         "thumbnail_key": "thumbnails/p1.webp", "image_sha256": sha, "created_at": "2026-01-01T00:00:00+00:00"},
    ]}
    (product,) = parse_products_json(json.dumps(document).encode(), "products.json")
    assert [(p.key, p.thumbnail_key, p.sha256) for p in product.photos] == [
        ("images/p1.jpg", "thumbnails/p1.webp", sha)
    ]


def test_the_earliest_bare_list_is_read():
    (product,) = parse_products_json(json.dumps([{"id": "p1", "name": "Old", "category": "C"}]).encode(), "x")
    assert product.name == "Old" and product.photos == []


def test_a_missing_image_hash_is_asked_for():
    raw = json.dumps([{"id": "p1", "name": "Old", "category": "C", "image_key": "images/p1.jpg"}]).encode()
    sha = hashlib.sha256(b"bytes").hexdigest()
    (product,) = parse_products_json(raw, "x", sha_of=lambda key: sha)
    assert product.photos[0].sha256 == sha


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "not valid JSON"),
        (b'{"products": "oops"}', "not a catalog"),
        (b'"just a string"', "not a catalog"),
        (b'{"version": 1, "products": [{"id": "p1"}]}', "product #1 is invalid"),
        (b'{"schema": 99, "products": []}', "schema 99"),
        (b"\xff\xfe\x00", "not valid JSON"),
    ],
)
def test_a_corrupt_products_json_is_reported_naming_the_file(content, message):
    with pytest.raises(CatalogCorrupt, match=message) as err:
        parse_products_json(content, "metadata/products.json in the bucket")
    assert "metadata/products.json in the bucket" in str(err.value)


def test_an_export_is_strict_json_and_reads_back():
    products = [Product(id=f"p{i}", name=f"N{i}", category="C", price=1.5, photos=[photo(f"p{i}")]) for i in range(3)]
    out = io.StringIO()
    assert write_products_json(products, out) == 3
    document = json.loads(out.getvalue(), parse_constant=lambda c: pytest.fail(f"{c} in the export"))
    assert [p["id"] for p in document["products"]] == ["p0", "p1", "p2"]
    assert [p.id for p in parse_products_json(out.getvalue().encode(), "export")] == ["p0", "p1", "p2"]
    empty = io.StringIO()
    assert write_products_json([], empty) == 0
    assert json.loads(empty.getvalue())["products"] == []
