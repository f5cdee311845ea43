"""products.json: validation, guarded read-modify-write, and refusing to overwrite a broken catalog."""

from __future__ import annotations

import json
import threading

import pytest

from vpm.catalog import (
    Catalog,
    CatalogCorrupt,
    DuplicateProduct,
    InvalidProduct,
    Product,
    ProductNotFound,
    validate_product,
)

KEY = "metadata/products.json"


@pytest.fixture
def catalog(storage):
    return Catalog(storage, KEY)


def test_empty_catalog_reads_as_empty_without_writing(catalog, storage):
    assert catalog.list() == []
    assert not storage.exists(KEY)


def test_add_get_list_update_remove(catalog):
    shoe = catalog.add(validate_product(name="  Trail shoe ", category="Shoes", price=89.5))
    assert shoe.name == "Trail shoe"  # trimmed
    assert shoe.id.startswith("product_")
    mug = catalog.add(validate_product(id="mug-1", name="Mug", category="Kitchen"))
    assert [p.id for p in catalog.list()] == [shoe.id, "mug-1"]
    assert catalog.get("mug-1").name == "Mug"
    assert catalog.categories() == ["Kitchen", "Shoes"]
    updated = catalog.update("mug-1", name="Big mug", price=12)
    assert (updated.name, updated.price, updated.created_at) == ("Big mug", 12, mug.created_at)
    assert catalog.get("mug-1").name == "Big mug"
    catalog.remove(["mug-1"])
    with pytest.raises(ProductNotFound, match="mug-1"):
        catalog.get("mug-1")
    assert [p.id for p in catalog.list()] == [shoe.id]


def test_document_has_schema_and_revision(catalog, storage):
    catalog.add(validate_product(name="A", category="C"))
    catalog.add(validate_product(name="B", category="C"))
    doc = json.loads(storage.get(KEY))
    assert doc["schema"] == 1
    assert doc["version"] == 2
    assert [p["name"] for p in doc["products"]] == ["A", "B"]


def test_duplicate_id_is_refused_and_changes_nothing(catalog, storage):
    catalog.add(validate_product(id="p1", name="A", category="C"))
    before = storage.get(KEY)
    with pytest.raises(DuplicateProduct, match="p1"):
        catalog.add(validate_product(id="p1", name="B", category="C"))
    with pytest.raises(DuplicateProduct, match="twice"):
        catalog.add_products([validate_product(id="x", name="B", category="C")] * 2)
    assert storage.get(KEY) == before


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


def test_update_rejects_unknown_and_invalid_fields(catalog):
    catalog.add(validate_product(id="p1", name="A", category="C"))
    with pytest.raises(InvalidProduct, match="image_key"):
        catalog.update("p1", image_key="images/other.jpg")
    with pytest.raises(InvalidProduct, match="name"):
        catalog.update("p1", name="")
    with pytest.raises(ProductNotFound):
        catalog.update("nope", name="B")
    assert catalog.get("p1").name == "A"


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
def test_corrupt_catalog_is_reported_and_never_overwritten(catalog, storage, content, message):
    storage.put(KEY, content, "application/json")
    with pytest.raises(CatalogCorrupt, match=message) as err:
        catalog.list()
    assert KEY in str(err.value)
    with pytest.raises(CatalogCorrupt):
        catalog.add(validate_product(name="A", category="C"))
    assert storage.get(KEY) == content


def test_legacy_bare_list_is_read(catalog, storage):
    storage.put(KEY, json.dumps([{"id": "p1", "name": "Old", "category": "C"}]).encode())
    assert catalog.get("p1").name == "Old"


@pytest.fixture(params=["local", "s3-http"])
def shared_catalog(request, tmp_path):
    """A catalog many threads share. S3 goes through moto's HTTP server: the in-process mock is not
    thread-safe, and a real server with real connections is closer to what 20 app workers see anyway."""
    from vpm.storage import LocalStorage, S3Storage

    if request.param == "local":
        return Catalog(LocalStorage(tmp_path / "data"), KEY)
    endpoint, bucket = request.getfixturevalue("server_bucket")
    return Catalog(S3Storage(bucket, endpoint_url=endpoint), KEY)


def test_twenty_concurrent_writers_all_land(shared_catalog):
    """Each thread adds one product at the same moment; optimistic concurrency must keep every one."""
    catalog = shared_catalog
    barrier = threading.Barrier(20)
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            barrier.wait()
            catalog.add(validate_product(id=f"p{i:02d}", name=f"Product {i}", category="C"))
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.id for p in catalog.list()) == [f"p{i:02d}" for i in range(20)]


def test_product_ids_are_unique_and_safe():
    ids = {Product(name="A", category="C").id for _ in range(500)}
    assert len(ids) == 500
    assert all(i.startswith("product_") and i.replace("_", "").isalnum() for i in ids)
