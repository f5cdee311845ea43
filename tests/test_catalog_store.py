"""The catalog store contract, run against every implementation and backend (local folder, S3 over HTTP)."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from vpm.backends import engine
from vpm.backends.lance_catalog import LanceCatalogStore
from vpm.core.catalog import DuplicateProduct, InvalidProduct, Photo, Product, ProductNotFound


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def photo(name: str) -> Photo:
    return Photo(key=f"images/{name}.jpg", thumbnail_key=f"thumbnails/{name}.webp", sha256=sha(name))


def product(pid: str, name: str = "Mug", category: str = "Kitchen", photos: int = 1, **fields) -> Product:
    return Product(id=pid, name=name, category=category, photos=[photo(f"{pid}-{i}") for i in range(photos)],
                   **fields)


@pytest.fixture
def store(engine_location) -> LanceCatalogStore:
    return LanceCatalogStore(engine_location)


def test_an_added_product_reads_back_the_same(store):
    added = product("p1", price=9.5, description="Line one\nLine two", attributes={"colour": "red"}, photos=3)
    assert store.add([added]) == []
    got = store.get("p1")
    assert got == added
    assert [p.key for p in got.photos] == ["images/p1-0.jpg", "images/p1-1.jpg", "images/p1-2.jpg"]
    assert got.image_key == "images/p1-0.jpg"


def test_a_missing_product_is_not_found(store):
    with pytest.raises(ProductNotFound, match="nope"):
        store.get("nope")
    assert store.get_many(["nope"]) == {}


def test_an_id_that_exists_is_reported_taken_and_the_original_is_untouched(store):
    store.add([product("p1", name="Original")])
    taken = store.add([product("p1", name="Impostor"), product("p2")])
    assert taken == ["p1"]
    assert store.get("p1").name == "Original"
    assert store.get("p2").name == "Mug"
    with pytest.raises(DuplicateProduct):
        store.add_one(product("p1"))


def test_an_id_twice_in_one_batch_is_refused(store):
    with pytest.raises(DuplicateProduct, match="twice"):
        store.add([product("p1"), product("p1")])
    assert store.count() == 0


def test_ten_writers_racing_for_one_id_insert_it_once(store):
    start = threading.Barrier(10)

    def racer(i: int) -> list[str]:
        start.wait()
        return store.add([product("same", name=f"Racer {i}")])

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(racer, range(10)))
    assert sum(1 for taken in results if not taken) == 1
    assert store.count() == 1


def test_fifty_concurrent_adds_lose_nothing(store):
    with ThreadPoolExecutor(10) as pool:
        assert all(taken == [] for taken in pool.map(lambda i: store.add([product(f"p{i:02d}")]), range(50)))
    assert store.count() == 50
    assert sorted(store.get_many([f"p{i:02d}" for i in range(50)])) == [f"p{i:02d}" for i in range(50)]


def test_pages_walk_the_catalog_newest_first_without_gaps(store):
    for i in range(23):
        store.add([product(f"p{i:02d}", name=f"Item {i}")])
    seen = []
    offset = 0
    while True:
        page = store.page(offset=offset, limit=10)
        assert page.total == 23
        seen += [p.id for p in page.items]
        if not page.has_more:
            break
        offset += 10
    assert seen == [f"p{i:02d}" for i in reversed(range(23))]
    assert [p.id for p in store.page(offset=0, limit=3, newest_first=False).items] == ["p00", "p01", "p02"]
    assert store.page(offset=100).items == []


def test_pages_filter_by_category_and_name_before_paging(store):
    store.add([product(f"s{i}", name=f"Trail shoe {i}", category="Shoes") for i in range(12)])
    store.add([product(f"m{i}", name=f"Mug {i}", category="Kitchen") for i in range(5)])
    page = store.page(limit=10, categories=["shoes"])  # case-insensitive
    assert page.total == 12 and len(page.items) == 10 and all(p.category == "Shoes" for p in page.items)
    assert store.page(categories=["Kitchen", "Shoes"]).total == 17
    named = store.page(name_contains="MUG 3")
    assert [p.id for p in named.items] == ["m3"]
    assert store.page(name_contains="it's 100% _odd'").total == 0  # quotes and wildcards are literal
    assert store.count(["Shoes"]) == 12


def test_category_counts(store):
    store.add([product("a", category="Shoes"), product("b", category="Shoes"), product("c", category="kitchen")])
    assert store.category_counts() == {"Shoes": 2, "kitchen": 1}
    assert store.categories() == ["kitchen", "Shoes"]


def test_an_edit_changes_only_the_editable_fields_and_bumps_the_revision(store):
    store.add([product("p1", price=3.0)])
    edited = store.update("p1", name="Big mug", price=None)
    assert edited.name == "Big mug" and edited.price is None and edited.revision == 1
    assert store.get("p1") == edited
    with pytest.raises(InvalidProduct, match="cannot edit"):
        store.update("p1", photos=[])
    with pytest.raises(InvalidProduct, match="price"):
        store.update("p1", price=float("inf"))
    with pytest.raises(ProductNotFound):
        store.update("nope", name="x")


def test_a_price_over_the_maximum_is_refused_but_one_stored_before_stays_usable(store):
    from vpm.core.catalog import MAX_PRICE, validate_product

    with pytest.raises(InvalidProduct, match=r"invalid price: 1e\+308 is more than the largest price accepted"):
        validate_product(id="p0", name="Mug", category="Kitchen", price=1e308)
    store.add([product("p1", price=MAX_PRICE)])
    with pytest.raises(InvalidProduct, match="largest price accepted"):
        store.update("p1", price=MAX_PRICE * 10)
    store.table.update(where="id = 'p1'", values={"price": 1e308})  # as a catalog of an older release holds it
    assert store.get("p1").price == 1e308  # still readable
    assert store.add_photos("p1", [photo("p1-new")]).price == 1e308  # and still changeable, price kept
    assert store.update("p1", name="Big mug").name == "Big mug"


def test_concurrent_photo_additions_to_one_product_all_land(store):
    store.add([product("p1")])

    def add(i: int) -> None:
        store.add_photos("p1", [photo(f"extra-{i}")])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(add, range(8)))
    keys = {p.key for p in store.get("p1").photos}
    assert keys == {"images/p1-0.jpg"} | {f"images/extra-{i}.jpg" for i in range(8)}


def test_removing_a_photo_keeps_the_others_and_never_the_last(store):
    store.add([product("p1", photos=2)])
    left = store.remove_photo("p1", "images/p1-0.jpg")
    assert [p.key for p in left.photos] == ["images/p1-1.jpg"]
    with pytest.raises(InvalidProduct, match="only photo"):
        store.remove_photo("p1", "images/p1-1.jpg")
    with pytest.raises(ProductNotFound):
        store.remove_photo("p1", "images/nope.jpg")


def test_delete_removes_rows_and_returns_them(store):
    store.add([product("p1"), product("p2"), product("p3")])
    removed = store.delete(["p1", "p3"])
    assert [p.id for p in removed] == ["p1", "p3"]
    assert store.count() == 1
    with pytest.raises(ProductNotFound):
        store.delete(["p2", "gone"])
    assert store.count() == 1  # nothing deleted when one id is unknown


def test_owners_of_finds_which_product_has_a_photo(store):
    store.add([product("p1", photos=2), product("p2")])
    assert store.owners_of([sha("p1-1"), sha("p2-0"), sha("unknown")]) == {sha("p1-1"): "p1", sha("p2-0"): "p2"}


def test_iter_batches_visits_every_product_once(store):
    store.add([product(f"p{i:03d}") for i in range(25)])
    batches = list(store.iter_batches(batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 5]
    assert sorted(p.id for b in batches for p in b) == [f"p{i:03d}" for i in range(25)]


def test_hostile_ids_and_names_cannot_escape_the_filter(store):
    store.add([product("p1", name="x' OR '1'='1")])
    assert store.page(name_contains="' OR '1'='1").total == 1
    assert store.get_many(["p1') OR ('1'='1"]) == {}
    assert store.page(categories=["') OR 1=1 --"]).total == 0


def test_a_second_store_on_the_same_location_sees_writes_at_once(engine_location):
    first, second = LanceCatalogStore(engine_location), LanceCatalogStore(engine_location)
    first.add([product("p1")])
    assert second.get("p1").id == "p1"


def test_version_changes_with_every_write(store):
    before = store.version()
    store.add([product("p1")])
    assert store.version() > before


def test_a_table_whose_files_are_damaged_is_reported_not_recreated(engine_location, storage_for_location):
    store = LanceCatalogStore(engine_location)
    store.add([product("p1")])
    engine.forget()
    storage, prefix = storage_for_location
    keys = [o.key for o in storage.iter_objects(f"{prefix}products.lance/")]
    for key in keys:
        if "/_versions/" in key or key.endswith(".manifest"):
            storage.put(key, b"this is not a manifest")
    with pytest.raises(engine.TableUnreadable, match="left untouched"):
        LanceCatalogStore(engine_location, exists=True).get("p1")
    assert [o.key for o in storage.iter_objects(f"{prefix}products.lance/")] == keys


def _version(key: str) -> int:
    """A Lance version file's version: "3.manifest", or u64::MAX - version in 20 digits (the newer naming)."""
    stem = key.rpartition("/")[2].removesuffix(".manifest")
    return 2**64 - 1 - int(stem) if len(stem) == 20 else int(stem)


def test_a_garbage_newest_version_file_is_named_with_the_way_back(engine_location, storage_for_location, tmp_path):
    """One 4 KB garbage file as the newest version: refused, nothing changed, and the message names that file
    (relative to the catalog folder), says the older versions are intact and what to do; doing it brings the
    catalog back."""
    store = LanceCatalogStore(engine_location)
    for pid in ("p1", "p2", "p3"):
        store.add([product(pid)])
    engine.forget()
    storage, prefix = storage_for_location
    versions = sorted((o.key for o in storage.iter_objects(f"{prefix}products.lance/_versions/")
                       if o.key.endswith(".manifest")), key=_version)
    newest = versions[-1]
    storage.put(newest, b"\x07" * 4096)
    before = {o.key: o.etag for o in storage.iter_objects(f"{prefix}products.lance/")}

    with pytest.raises(engine.TableUnreadable) as refused:
        LanceCatalogStore(engine_location, exists=True).get("p1")

    message = str(refused.value)
    assert f"its newest version file {newest} " in message and newest.startswith(f"{prefix}products.lance/")
    assert "left untouched" in message and "the older versions are intact" in message
    assert "move that one file aside, out of the catalog" in message
    assert str(tmp_path) not in message.split("exists but")[1] and ".rs:" not in message
    assert {o.key: o.etag for o in storage.iter_objects(f"{prefix}products.lance/")} == before  # nothing changed

    storage.delete(newest)  # what the message says to do (moved aside: kept elsewhere)
    engine.forget()
    back = LanceCatalogStore(engine_location, exists=True)
    assert {p.id for p in back.page(limit=10).items} == {"p1", "p2"}  # as it was before the last add


def test_one_by_one_adds_are_compacted_and_indexed_and_still_read_right(store, monkeypatch):
    from vpm.backends import lance_catalog

    monkeypatch.setattr(engine, "SMALL_FRAGMENTS_BEFORE_COMPACTION", 8)
    monkeypatch.setattr(lance_catalog, "INDEX_FROM_ROWS", 10)
    monkeypatch.setattr(engine, "compact_when_due", _compact_now(engine.compact_when_due))
    for i in range(30):
        store.add([product(f"p{i:02d}", category="Odd" if i % 2 else "Even")])
    assert store.table.stats()["fragment_stats"]["num_fragments"] < 10
    indexed = {next(iter(index.columns)) for index in store.table.list_indices()}
    assert {"id", "category_key", "photo_shas"} <= indexed
    assert store.get("p17").category == "Odd"
    assert store.count(["even"]) == 15
    assert store.owners_of([sha("p05-0")]) == {sha("p05-0"): "p05"}
    assert [p.id for p in store.page(limit=2).items] == ["p29", "p28"]


def _compact_now(compact):
    def run_in_the_foreground(table, *, after=None, wait=False):
        compact(table, after=after, wait=True)

    return run_in_the_foreground


def test_referenced_says_which_files_a_product_points_at(store):
    store.add([product("p1", photos=2)])
    asked = ["images/p1-0.jpg", "thumbnails/p1-1.webp", "images/orphan.jpg"]
    assert store.referenced(asked) == {"images/p1-0.jpg", "thumbnails/p1-1.webp"}
    store.remove_photo("p1", "images/p1-0.jpg")
    assert store.referenced(asked) == {"thumbnails/p1-1.webp"}


def test_photo_count_sums_every_products_photos(store):
    assert store.photo_count() == 0
    store.add([product("p1", photos=3), product("p2")])
    assert store.photo_count() == 4
    store.remove_photo("p1", "images/p1-0.jpg")
    assert store.photo_count() == 3


def test_owners_of_keys_names_the_product_behind_each_file(store):
    store.add([product("p1", photos=2), product("p2")])
    asked = ["images/p1-0.jpg", "thumbnails/p1-1.webp", "images/p2-0.jpg", "images/orphan.jpg"]
    owners = store.owners_of_keys(asked)
    assert {k: pid for k, (pid, _name) in owners.items()} == {
        "images/p1-0.jpg": "p1", "thumbnails/p1-1.webp": "p1", "images/p2-0.jpg": "p2",
    }
    assert owners["images/p2-0.jpg"][1] == store.get("p2").name
