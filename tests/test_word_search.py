"""Words search without a text model (vpm/core/word_search.py, vpm/core/word_index.py), on a catalog on local disk and on S3.

The catalog is a real products table (and text table) in the parametrised backend; products carry the sample's
kind of names, so what is asserted is what a person typing them would see.
"""

from __future__ import annotations

import hashlib
import logging

import pytest

from vpm.backends.lance_catalog import LanceCatalogStore
from vpm.backends.lance_text import LanceTextStore, PhotoText
from vpm.core import word_index
from vpm.core.catalog import Photo, Product
from vpm.core.errors import InvalidRequest
from vpm.core.word_search import CLIP_AND_WORDS, WORDS_ONLY, CatalogTooBigForWords, WordSearch, answered_by, fuse

NAMES = {
    "oat-milk": ("Oatly Oat Milk", "dairy-alternatives", "Oat drink", "Oatly"),
    "oatghurt": ("Oatly Natural Oatghurt", "dairy-alternatives", "Oat yoghurt", "Oatly"),
    "tropicana-apple": ("Tropicana Apple Juice", "juice", "Juice", "Tropicana"),
    "tropicana-smooth": ("Tropicana Juice Smooth", "juice", "Orange juice", "Tropicana"),
    "bravo-apple": ("Bravo Apple Juice", "juice", "Juice", "Bravo"),
    "kiwi": ("Kiwi", "grocery-fruit", "Kiwi", None),
    "lime": ("Lime", "grocery-fruit", "Citrus", None),
    "golden": ("Golden Delicious", "grocery-fruit", "Apple", None),
    "red": ("Red Delicious", "grocery-fruit", "Apple", None),
    "arla-medium": ("Arla Medium Fat Milk", "dairy", "Milk", "Arla"),
    "arla-lactose": ("Arla Lactose Medium Fat Milk", "dairy", "Milk", "Arla"),
    "creme": ("Crème Fraîche", "dairy", "Sour cream", "Arla"),
}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def product(pid: str, name: str, category: str = "dairy", description: str | None = None,
            brand: str | None = None, **attributes) -> Product:
    if brand:
        attributes["brand"] = brand
    return Product(id=pid, name=name, category=category, description=description, attributes=attributes,
                   photos=[Photo(key=f"images/{pid}.jpg", sha256=sha(pid))])


def sample_products() -> list[Product]:
    return [product(pid, *fields) for pid, fields in NAMES.items()]


@pytest.fixture
def catalog(engine_location) -> LanceCatalogStore:
    store = LanceCatalogStore(engine_location)
    store.add(sample_products())
    return store


@pytest.fixture
def texts(engine_location) -> LanceTextStore:
    return LanceTextStore(engine_location)


def first(search: WordSearch, query: str) -> str | None:
    hits = search.search(query, 5)
    return hits[0].product_id if hits else None


# ------------------------------------------------------------------------------------------------ finding


def test_each_product_is_found_first_by_its_own_name(catalog):
    search = WordSearch(catalog)
    for pid, (name, *_rest) in NAMES.items():
        hits = search.search(name, 3)
        assert hits[0].product_id == pid, name
        assert hits[0].names_it and "name" in hits[0].fields


@pytest.mark.parametrize(("query", "wanted"), [
    ("tropicana apple", "tropicana-apple"),  # shortened
    ("oatly oatmilk", "oat-milk"),  # two words run together
    ("tropicna aple juice", "tropicana-apple"),  # a letter dropped in two words
    ("kiwu", "kiwi"),  # a keyboard neighbour
    ("lmie", "lime"),  # two letters swapped
    ("golden delicous", "golden"),
    ("arla lactose", "arla-lactose"),
    ("creme fraiche", "creme"),  # accents need not be typed
    ("CRÈME", "creme"),
])
def test_a_shortened_or_misspelled_name_still_finds_the_product_first(catalog, query, wanted):
    assert first(WordSearch(catalog), query) == wanted


def test_plurals_find_the_singular_and_the_fields_matched_are_named(catalog):
    hits = WordSearch(catalog).search("apples", 10)
    found = {h.product_id: h for h in hits}
    assert {"tropicana-apple", "bravo-apple", "golden", "red"} <= set(found)
    assert found["golden"].fields == ("description",)  # "Apple" is only its description
    assert found["tropicana-apple"].fields == ("name",)
    # A product whose name holds every query word comes before one that has it only in its description.
    assert hits[0].product_id in {"tropicana-apple", "bravo-apple"} and hits[0].every_word


def test_a_word_nothing_has_finds_nothing(catalog):
    assert WordSearch(catalog).search("bicycle", 10) == []


def test_brand_is_searched_but_a_licence_or_source_attribute_is_not(engine_location):
    store = LanceCatalogStore(engine_location)
    store.add([
        product("bulb", "LED light bulb 400 lumens", "lighting", brand="AmazonBasics",
                licence="CC-BY-4.0 (Amazon Berkeley Objects)", source="aws-samples: samples/B074M5HPBD/9e.jpg"),
        product("bag", "Yoga bag", "bags", colour="Iron Grey"),
    ])
    search = WordSearch(store)
    hits = search.search("amazonbasics", 5)
    assert [h.product_id for h in hits] == ["bulb"] and hits[0].fields == ("brand",)
    assert search.search("berkeley objects samples", 5) == []
    assert [h.product_id for h in search.search("grey", 5)] == ["bag"]
    assert search.search("grey", 5)[0].fields == ("attributes",)


def test_the_product_a_query_names_comes_before_one_that_repeats_its_words(engine_location):
    store = LanceCatalogStore(engine_location)
    store.add([
        product("other", "Arla Milk Drink", description="milk milk milk, a milk for milk lovers"),
        product("milk", "Milk"),
    ])
    hits = WordSearch(store).search("milk", 5)
    assert [h.product_id for h in hits] == ["milk", "other"]
    assert hits[0].names_it and not hits[1].names_it


def test_categories_keep_only_their_products(catalog):
    hits = WordSearch(catalog).search("apple", 10, categories=["Grocery-Fruit"])
    assert {h.product_id for h in hits} == {"golden", "red"}


def test_package_text_read_on_the_photos_is_searched(catalog, texts):
    texts.upsert([PhotoText("images/oat-milk.jpg", "oat-milk", sha("oat-milk"), "OATLY\nHAVREDRYCK\n1 L"),
                  PhotoText("images/kiwi.jpg", "kiwi", sha("kiwi"), "")])
    search = WordSearch(catalog, texts)
    hits = search.search("havredryck", 5)
    assert [h.product_id for h in hits] == ["oat-milk"]
    assert hits[0].fields == ("package text",)
    assert first(search, "havredrick") == "oat-milk"  # misspelled too
    assert search.status().package_texts == 1  # the photo read with nothing found adds nothing


def test_words_search_goes_on_without_package_text_it_cannot_read(catalog, caplog):
    class Broken:
        description = "the text read on the photos"

        @property
        def table(self):
            raise OSError("the text table is damaged")

    with caplog.at_level(logging.WARNING, logger="vpm.core.word_search"):
        assert first(WordSearch(catalog, Broken()), "kiwi") == "kiwi"
    assert "package text" in caplog.text


def test_words_search_over_a_matchers_catalog_and_package_text(settings, engine_location):
    """As the Matcher wires it: its catalog, and its text table once one exists (never created by a search)."""
    from vpm.core.matcher import Matcher

    matcher = Matcher(settings)
    matcher.catalog.add(sample_products())
    search = WordSearch(matcher.catalog, texts_from=lambda: matcher.texts if matcher.has_text_table() else None)
    assert first(search, "oatly oatmilk") == "oat-milk"
    assert not matcher.has_text_table()  # searching did not create it
    matcher.texts.upsert([PhotoText("images/oat-milk.jpg", "oat-milk", sha("oat-milk"), "HAVREDRYCK")])
    assert first(search, "havredryck") == "oat-milk"


# ------------------------------------------------------------------------------------------------ freshness


def test_a_change_to_the_catalog_is_seen_by_the_next_search(catalog):
    search = WordSearch(catalog)
    assert first(search, "pomegranate") is None
    catalog.add([product("pom", "Pomegranate", "grocery-fruit")])
    assert first(search, "pomegranate") == "pom"
    catalog.update("pom", name="Granatäpple")
    assert first(search, "pomegranate") is None
    assert first(search, "granatapple") == "pom"
    catalog.delete(["pom"])
    assert first(search, "granatapple") is None


def test_package_text_stored_after_the_first_search_is_seen(catalog, engine_location):
    search = WordSearch(catalog, texts_from=lambda: LanceTextStore(engine_location))
    assert first(search, "havredryck") is None
    LanceTextStore(engine_location).upsert([PhotoText("images/oat-milk.jpg", "oat-milk", sha("x"), "HAVREDRYCK")])
    assert first(search, "havredryck") == "oat-milk"


def test_a_big_catalog_answers_from_the_last_index_while_a_new_one_is_built(catalog):
    search = WordSearch(catalog, sync_rebuild_max=0)  # every catalog counts as big
    assert first(search, "kiwi") == "kiwi"  # the first index is always built before answering
    catalog.add([product("pom", "Pomegranate", "grocery-fruit")])
    assert first(search, "pomegranate") is None  # answered at once, by the last index
    assert search.wait(timeout=60)
    assert search.status().fresh and search.status().products == len(NAMES) + 1
    assert first(search, "pomegranate") == "pom"  # the next search uses the new index


def test_warming_builds_the_first_index_ahead_of_the_first_search(catalog):
    pages = Pages(catalog)
    search = WordSearch(pages)
    search.warm()
    assert search.wait(timeout=60)
    assert search.status().products == len(NAMES) and pages.pages == [len(NAMES)]
    assert first(search, "kiwi") == "kiwi"
    assert pages.pages == [len(NAMES)]  # the search used the warmed index


class Pages:
    """The catalog as WordSearch sees it, recording every page it reads."""

    def __init__(self, store: LanceCatalogStore):
        self.store = store
        self.pages: list[int] = []

    def version(self) -> int:
        return self.store.version()

    def count(self) -> int:
        return self.store.count()

    def iter_batches(self, batch_size: int = 1000):
        for batch in self.store.iter_batches(batch_size):
            self.pages.append(len(batch))
            yield batch


def test_the_catalog_is_read_a_bounded_page_at_a_time_and_only_when_it_changed(catalog):
    pages = Pages(catalog)
    search = WordSearch(pages, batch_size=5)
    assert first(search, "kiwi") == "kiwi"
    assert pages.pages == [5, 5, 2]  # 12 products, never more than a page at once
    first(search, "lime")
    assert pages.pages == [5, 5, 2]  # unchanged catalog: not read again


def test_a_catalog_bigger_than_the_index_holds_is_refused_with_what_to_do(catalog):
    with pytest.raises(CatalogTooBigForWords, match=r"at most 10 products.*has 12.*photo.*CLIP"):
        WordSearch(catalog, max_products=10).search("kiwi", 5)
    # One that grows past it while a background build runs is refused from then on, not answered from the old index.
    search = WordSearch(catalog, max_products=12, sync_rebuild_max=0)
    assert first(search, "kiwi") == "kiwi"
    catalog.add([product("pom", "Pomegranate", "grocery-fruit")])
    first(search, "kiwi")
    assert search.wait(timeout=60)
    with pytest.raises(CatalogTooBigForWords, match="has 13"):
        search.search("kiwi", 5)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("query", "message"), [
    ("", "empty"), ("   ", "empty"), ("?!", "no letters or digits"), ("x" * 501, "at most 500"),
])
def test_an_unusable_query_is_refused_before_anything_is_read(catalog, query, message):
    pages = Pages(catalog)
    with pytest.raises(InvalidRequest, match=message):
        WordSearch(pages).search(query, 5)
    assert pages.pages == []


def test_k_must_be_positive(catalog):
    with pytest.raises(InvalidRequest, match="at least 1"):
        WordSearch(catalog).search("kiwi", 0)


def test_an_empty_catalog_finds_nothing(engine_location):
    assert WordSearch(LanceCatalogStore(engine_location)).search("kiwi", 5) == []


# ------------------------------------------------------------------------------------------------ fusion


def hit(pid: str, names_it: bool = False) -> word_index.WordHit:
    return word_index.WordHit(pid, 1.0, ("name",), names_it, names_it)


def test_fusion_puts_the_product_the_query_names_first_whatever_clip_thinks():
    clip = ["a", "b", "c", "d", "named"]
    fused = fuse(clip, [hit("named", names_it=True), hit("c")])
    assert fused[0].product_id == "named"
    assert fused[0].clip_rank == 5 and fused[0].word_rank == 1 and fused[0].word.names_it


def test_fusion_ranks_by_reciprocal_rank_and_keeps_both_lists():
    fused = fuse(["a", "b", "c"], [hit("c"), hit("z")])
    # c: 1/63 + 1/61 beats a: 1/61; b (CLIP's second) and z (words' second) tie at 1/62: CLIP's rank decides
    assert [f.product_id for f in fused] == ["c", "a", "b", "z"]
    assert fused[3].clip_rank is None and fused[3].word_rank == 2
    assert fused[2].word is None and fused[2].clip_rank == 2


def test_what_answered_is_said_in_words():
    assert answered_by(False) == WORDS_ONLY == "words in names and package text"
    assert answered_by(True) == CLIP_AND_WORDS == "CLIP + words"
