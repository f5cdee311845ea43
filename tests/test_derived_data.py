"""A photo's derived data: duplicates refused before anything is written, and a discard that never creates a table
or fails the change it tidies up after (vpm/core/derived_data.py)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from vpm.core.derived_data import DuplicatePhoto, discard_derived, refuse_duplicates
from vpm.core.storage import StorageError


class Catalog:
    """Owners by photo bytes, and the products they name."""

    def __init__(self, owners: dict[str, str], names: dict[str, str]):
        self.owners, self.names = owners, names

    def owners_of(self, shas):
        return {sha: self.owners[sha] for sha in shas if sha in self.owners}

    def get_many(self, ids):
        return {i: SimpleNamespace(name=self.names[i]) for i in ids if i in self.names}


def photo(sha: str) -> SimpleNamespace:
    return SimpleNamespace(sha256=sha)


def test_the_same_photo_twice_in_one_request_is_refused_naming_both():
    with pytest.raises(DuplicatePhoto, match="b.png and a.png are the same photo"):
        refuse_duplicates(Catalog({}, {}), [photo("1"), photo("1")], ["a.png", "b.png"])


def test_a_photo_already_in_the_catalog_is_refused_naming_its_product():
    catalog = Catalog({"2": "red-mug"}, {"red-mug": "Red mug"})
    with pytest.raises(DuplicatePhoto, match=r"b.png is already in the catalog: it is a photo of Red mug \(red-mug\)"):
        refuse_duplicates(catalog, [photo("1"), photo("2")], ["a.png", "b.png"])
    refuse_duplicates(catalog, [photo("1")], ["a.png"])  # new bytes pass


class Store:
    def __init__(self, fails: bool = False):
        self.deleted: list[list[str]] = []
        self.fails = fails

    def delete_photos(self, keys):
        if self.fails:
            raise StorageError("the bucket is away")
        self.deleted.append(list(keys))


class Stores:
    def __init__(self, *, features_table: bool, vectors_fail: bool = False):
        self.vectors, self.features, self.texts = Store(vectors_fail), Store(), Store()
        self.features_table = features_table

    def has_features_table(self) -> bool:
        return self.features_table

    def has_text_table(self) -> bool:
        return False


def test_a_discard_removes_only_from_tables_that_exist():
    stores = Stores(features_table=True)
    discard_derived(stores, ["p/1.jpg"], "red-mug")
    assert stores.vectors.deleted == [["p/1.jpg"]] and stores.features.deleted == [["p/1.jpg"]]
    assert stores.texts.deleted == []  # never made: a discard does not make it

    discard_derived(stores, [], "red-mug")  # nothing written, nothing asked
    assert len(stores.vectors.deleted) == 1


def test_a_discard_that_fails_is_logged_and_goes_on(caplog):
    stores = Stores(features_table=True, vectors_fail=True)
    with caplog.at_level(logging.WARNING, logger="vpm.core.derived_data"):
        discard_derived(stores, ["p/1.jpg"], "red-mug")
    assert "could not remove the vectors of red-mug: the bucket is away" in caplog.text
    assert stores.features.deleted == [["p/1.jpg"]]
