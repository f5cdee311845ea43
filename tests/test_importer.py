"""Bulk import: folders, zips (zip-slip, bombs), CSVs (good and malformed), batches, interruption and resume."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest

from vpm.core.importer import ImportLimits, ImportSourceError, ItemUnreadable, open_source, parse_price, pretty_name
from vpm.core.matcher import Matcher


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def importer(search_settings, counting_embedder):
    """A Matcher (tiny CLIP, counting its embeddings) to import into."""
    return Matcher(search_settings, embedder=counting_embedder())


def by_name(products) -> dict:
    return {p.name: p for p in products}


def vectors_cached(m: Matcher, products) -> bool:
    keys = [photo.key for p in products for photo in p.photos]
    return m.vectors.photo_keys_with_vectors(keys) == set(keys)


# --- naming rules ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stem, name",
    [("red_running-shoe_01", "Red Running Shoe 01"), ("iPhone 13", "iPhone 13"), ("___", "___")],
)
def test_file_names_become_readable_product_names(stem, name):
    assert pretty_name(stem) == name


@pytest.mark.parametrize("text, value", [("12.50", 12.5), ("$1,299.00", 1299.0), ("€ 3", 3.0), ("", None)])
def test_prices_are_read_the_way_people_write_them(text, value):
    assert parse_price(text) == value


@pytest.mark.parametrize("text", ["abc", "-5", "12,50.3.1", "1e3"])
def test_other_prices_are_refused(text):
    with pytest.raises(ValueError):
        parse_price(text)


# --- folders ---------------------------------------------------------------------------------------------------


@pytest.fixture
def photo_folder(tmp_path, product_photo) -> Path:
    root = tmp_path / "photos"
    write(root / "mugs" / "red_mug.png", product_photo(1))
    write(root / "mugs" / "blue-mug.jpg", product_photo(2, fmt="JPEG"))
    write(root / "bags" / "canvas bag.png", product_photo(3))
    write(root / "loose_item.png", product_photo(4))
    write(root / "notes.txt", b"not a photo")
    write(root / ".DS_Store", b"\x00\x00")
    write(root / "mugs" / "._red_mug.png", b"mac resource fork")
    write(root / ".hidden" / "secret.png", product_photo(5))
    write(root / "__MACOSX" / "mugs" / "x.png", product_photo(6))
    write(root / "mugs" / "broken.png", product_photo(7)[:60])
    return root


def test_a_folder_imports_every_image_with_names_and_categories(importer, photo_folder, product_photo):
    report = importer.import_path(photo_folder)
    products = by_name(report.imported)
    assert set(products) == {"Red Mug", "Blue Mug", "Canvas Bag", "Loose Item"}
    assert products["Red Mug"].category == "mugs" and products["Canvas Bag"].category == "bags"
    assert products["Loose Item"].category == "Uncategorized"
    assert [(i.source, "not an image" in i.reason) for i in report.skipped] == [("notes.txt", True)]
    assert [i.source for i in report.failed] == ["mugs/broken.png"]
    assert "truncated or damaged" in report.failed[0].reason
    assert report.summary() == (
        "imported 4 products (4 photos), skipped 0 duplicates, ignored 1 other file, failed 1"
    )

    # Files, thumbnails, vectors and metadata are all there, and each product is found by its own photo.
    assert by_name(list(importer.iter_products())).keys() == products.keys()
    for p in report.imported:
        assert importer.storage.exists(p.image_key) and importer.storage.exists(p.thumbnail_key)
    assert vectors_cached(importer, report.imported)
    top = importer.search_image(product_photo(3), "q.png", threshold=-1).results[0]
    assert top.product.name == "Canvas Bag"


def test_running_the_same_import_again_adds_nothing(importer, photo_folder):
    first = importer.import_path(photo_folder)
    again = importer.import_path(photo_folder)
    assert again.imported == []
    duplicates = [i for i in again.skipped if i.reason.startswith("duplicate")]
    assert len(duplicates) == len(first.imported)
    assert len(list(importer.iter_products())) == len(first.imported)


def test_the_same_image_twice_in_one_import_is_added_once(importer, tmp_path, product_photo):
    write(tmp_path / "in" / "a.png", product_photo(1))
    write(tmp_path / "in" / "copy of a.png", product_photo(1))
    report = importer.import_path(tmp_path / "in")
    assert len(report.imported) == 1
    (skip,) = report.skipped
    assert "duplicate" in skip.reason and report.imported[0].id in skip.reason


def test_progress_is_reported_per_batch_up_to_the_total(importer, tmp_path, product_photo):
    for i in range(7):
        write(tmp_path / "in" / f"{i}.png", product_photo(i, size=32))
    calls = []
    importer.import_path(tmp_path / "in", progress=lambda done, total, message="": calls.append((done, total)),
                         batch_size=3)
    assert calls == [(0, 7), (3, 7), (6, 7), (7, 7)]


def test_missing_or_unknown_sources_are_refused_clearly(importer, tmp_path):
    with pytest.raises(ImportSourceError, match="does not exist"):
        importer.import_path(tmp_path / "nowhere")
    write(tmp_path / "list.json", b"[]")
    with pytest.raises(ImportSourceError, match=r"neither a folder, a \.zip nor a \.csv"):
        importer.import_path(tmp_path / "list.json")
    write(tmp_path / "fake.zip", b"this is not a zip")
    with pytest.raises(ImportSourceError, match="not a readable zip"):
        importer.import_path(tmp_path / "fake.zip")


# --- batches, interruption, resume ----------------------------------------------------------------------------


def test_a_big_import_writes_the_catalog_once_per_batch(importer, tmp_path, product_photo):
    for i in range(70):
        write(tmp_path / "many" / f"item_{i:02d}.png", product_photo(1000 + i, size=32))
    catalog_writes = []
    real_add = importer.catalog.add

    def counting_add(products):
        catalog_writes.append(len(products))
        return real_add(products)

    importer.catalog.add = counting_add
    report = importer.import_path(tmp_path / "many")
    assert len(report.imported) == 70
    assert catalog_writes == [32, 32, 6]  # one commit of rows per batch, not one per product
    assert importer.embedder.image_calls[:3] == [32, 32, 6]  # decoded and embedded in batches too ...
    # ... then the score is fitted on two views of each photo (one photo a product: vpm/core/augmented.py)
    assert all(n == 2 for n in importer.embedder.image_calls[3:])
    assert len(list(importer.iter_products())) == 70


def test_an_interrupted_import_keeps_what_it_committed_and_a_rerun_finishes_it(importer, tmp_path, product_photo):
    for i in range(10):
        write(tmp_path / "in" / f"item_{i}.png", product_photo(200 + i, size=32))

    def stop_after_second_batch(done, total, message=""):
        if done == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        importer.import_path(tmp_path / "in", progress=stop_after_second_batch, batch_size=4)
    kept = list(importer.iter_products())
    assert sorted(p.name for p in kept) == [f"Item {i}" for i in range(8)]
    for p in kept:
        assert importer.storage.exists(p.image_key) and importer.storage.exists(p.thumbnail_key)
    assert vectors_cached(Matcher(importer.settings, embedder=importer.embedder), kept)

    resumed = importer.import_path(tmp_path / "in", batch_size=4)
    assert sorted(p.name for p in resumed.imported) == ["Item 8", "Item 9"]
    assert len(resumed.skipped) == 8
    assert sorted(p.name for p in list(importer.iter_products())) == [f"Item {i}" for i in range(10)]


def test_an_interruption_inside_a_batch_leaves_no_stray_files(importer, tmp_path, product_photo, monkeypatch):
    for i in range(6):
        write(tmp_path / "in" / f"item_{i}.png", product_photo(300 + i, size=32))
    real_add = importer.catalog.add
    calls = []

    def add_then_stop(products):
        calls.append(len(products))
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. Ctrl-C while the second batch's metadata was being written
        return real_add(products)

    monkeypatch.setattr(importer.catalog, "add", add_then_stop)
    with pytest.raises(KeyboardInterrupt):
        importer.import_path(tmp_path / "in", batch_size=3)
    kept = list(importer.iter_products())
    assert len(kept) == 3
    stored_images = [o.key for o in importer.storage.iter_objects(importer.settings.s3_image_prefix)]
    assert sorted(stored_images) == sorted(p.image_key for p in kept)


# --- zips ------------------------------------------------------------------------------------------------------


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_a_zip_imports_like_a_folder(importer, tmp_path, product_photo):
    archive = make_zip(tmp_path / "catalog.zip", {
        "catalog/mugs/red_mug.png": product_photo(1),
        "catalog/lamp.png": product_photo(2),
        "catalog/readme.md": b"# hello",
        "__MACOSX/catalog/mugs/._red_mug.png": b"fork",
        "catalog/.DS_Store": b"\x00",
    })
    report = importer.import_path(archive)
    products = by_name(report.imported)
    assert products.keys() == {"Red Mug", "Lamp"}
    assert products["Red Mug"].category == "mugs"
    assert products["Lamp"].category == "Uncategorized"  # the zipped folder itself is the root
    assert [i.source for i in report.skipped] == ["catalog/readme.md"]
    assert report.failed == []
    assert importer.import_path(archive).imported == []  # and again adds nothing


def test_zip_slip_entries_are_refused_and_nothing_is_written_outside(importer, tmp_path, product_photo):
    archive = make_zip(tmp_path / "work" / "evil.zip", {
        "../escaped.png": product_photo(1),
        "/etc/absolute.png": product_photo(2),
        "shoes/../../climb.png": product_photo(3),
        "C:/windows.png": product_photo(5),
        "shoes/ok.png": product_photo(4),
    })
    report = importer.import_path(archive)
    assert [p.name for p in report.imported] == ["Ok"]
    refused = {i.source: i.reason for i in report.failed}
    assert set(refused) == {"../escaped.png", "/etc/absolute.png", "shoes/../../climb.png", "C:/windows.png"}
    assert all(reason.startswith("refused:") for reason in refused.values())
    for name in ("escaped.png", "climb.png", "absolute.png"):
        assert not list(tmp_path.rglob(name))
    assert all(not p.image_key.count("..") for p in list(importer.iter_products()))


def test_an_oversized_entry_is_not_unpacked(importer, tmp_path, product_photo):
    bomb = b"\x00" * (3 * 1024 * 1024)  # compresses to a few KB
    archive = make_zip(tmp_path / "bomb.zip", {"bomb.png": bomb, "fine.png": product_photo(1)})
    report = importer.import_path(archive, limits=ImportLimits(max_file_bytes=1024 * 1024))
    assert [p.name for p in report.imported] == ["Fine"]
    (failed,) = report.failed
    assert failed.source == "bomb.png" and "3.0 MB" in failed.reason and "limit is 1 MB" in failed.reason


def test_a_zip_that_would_unpack_too_much_or_has_too_many_entries_is_refused(importer, tmp_path, product_photo):
    archive = make_zip(tmp_path / "big.zip", {f"{i}.png": b"\x00" * 400_000 for i in range(5)})
    with pytest.raises(ImportSourceError, match="would unpack to 2 MB; the limit is 1 MB"):
        importer.import_path(archive, limits=ImportLimits(max_total_bytes=1024 * 1024))
    with pytest.raises(ImportSourceError, match="has 5 entries; at most 3"):
        importer.import_path(archive, limits=ImportLimits(max_members=3))
    assert list(importer.iter_products()) == []


def forge_sizes(data: bytes, name: str, size: int, *, crc: int | None = None, local: bool = True,
                central: bool = True) -> bytes:
    """`data` (a zip) with the member `name` declaring `size` bytes (and `crc`) in its local header and/or the
    archive's directory, its compressed bytes unchanged: an archive made to lie about what it unpacks to."""
    forged = bytearray(data)
    encoded = name.encode()
    for signature, size_at, crc_at, name_at, wanted in ((b"PK\x03\x04", 22, 14, 30, local),
                                                         (b"PK\x01\x02", 24, 16, 46, central)):
        at = forged.find(signature)
        while forged[at + name_at : at + name_at + len(encoded)] != encoded:
            at = forged.find(signature, at + 1)
        if wanted:
            forged[at + size_at : at + size_at + 4] = size.to_bytes(4, "little")
            if crc is not None:
                forged[at + crc_at : at + crc_at + 4] = crc.to_bytes(4, "little")
    return bytes(forged)


def zip_with(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def stored_keys(m: Matcher) -> set[str]:
    return {o.key for o in m.storage.iter_objects("")}


def test_an_entry_that_unpacks_to_more_than_its_headers_declare_is_refused_reading_one_byte_past(tmp_path):
    """Both headers say 1,000 bytes, and even the CRC is that of the first 1,000 bytes (zipfile alone would hand
    those back as the whole file); the data inflates to 64 MB. Refused, naming the entry and the lie, after
    reading one byte past the claim."""
    import tracemalloc
    import zlib

    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf, zf.open("liar.png", "w") as out:
        for _ in range(64):
            out.write(b"\x00" * (1024 * 1024))  # 64 MB of zeros: about 64 KB compressed
    path.write_bytes(forge_sizes(path.read_bytes(), "liar.png", 1000, crc=zlib.crc32(b"\x00" * 1000)))

    with open_source(path) as source:
        (item,) = source.items
        tracemalloc.start()
        try:
            with pytest.raises(ItemUnreadable) as refused:
                item.read()
            _now, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert str(refused.value) == (
        "liar.png unpacks to more than the 1,000 bytes its header declares: the archive is damaged or was tampered "
        "with, so this entry was not imported (re-create the archive)"
    )
    assert peak < 2 * 1024 * 1024  # memory stays bounded: nothing near the 64 MB was ever unpacked


def test_an_entry_that_unpacks_to_less_than_its_headers_declare_is_refused(tmp_path, product_photo):
    photo = product_photo(7)
    path = write(tmp_path / "short.zip", forge_sizes(zip_with({"short.png": photo}), "short.png", 2_000_000))
    with open_source(path) as source:
        (item,) = source.items
        with pytest.raises(ItemUnreadable, match=rf"^short\.png unpacks to {len(photo):,} bytes, not the 2,000,000 "
                                                 "its header declares: the archive is damaged or was tampered with"):
            item.read()


def test_an_entry_whose_two_headers_disagree_about_its_size_is_refused_unread(tmp_path, product_photo):
    data = zip_with({"a.png": product_photo(1), "b.png": product_photo(2)})
    path = write(tmp_path / "two-faced.zip", forge_sizes(data, "b.png", 10, local=False))  # the directory lies
    with open_source(path) as source:
        assert [item.source for item in source.items] == ["a.png"]
        (refused,) = source.failed
    assert refused.source == "b.png"
    compressed = zipfile.ZipFile(io.BytesIO(data)).getinfo("b.png").compress_size
    assert refused.reason == (
        f"refused: its headers disagree about its size (its own header says {len(product_photo(2)):,} bytes, "
        f"{compressed:,} compressed; the archive's directory 10 bytes, {compressed:,} compressed): the archive is "
        "damaged or was tampered with; re-create it"
    )


def test_an_encrypted_entry_is_refused_with_what_to_do(tmp_path, product_photo):
    data = bytearray(zip_with({"a.png": product_photo(1), "locked.png": product_photo(2)}))
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set "encrypted" in both headers
        at = data.rfind(signature)
        data[at + flags_at] |= 0x01
    with open_source(write(tmp_path / "locked.zip", bytes(data))) as source:
        assert [item.source for item in source.items] == ["a.png"]
        assert [(f.source, f.reason) for f in source.failed] == [
            ("locked.png", "refused: it is encrypted (password-protected): zip the images again without a password")
        ]


@pytest.mark.parametrize("lie", ["inflates-more", "inflates-less", "headers-disagree"])
def test_an_uploaded_zip_with_a_misstated_entry_imports_the_rest_and_changes_nothing_for_it(importer, product_photo,
                                                                                            lie):
    """Through the app's upload path: the honest entries are imported, the lying one is named with its reason, and
    nothing of it (file, thumbnail, product, vector) is stored; an archive of liars alone changes nothing."""
    import zlib

    liar = product_photo(9)
    honest = zip_with({"shop/mug.png": product_photo(8), "shop/liar.png": liar})
    forged = {
        "inflates-more": lambda: forge_sizes(honest, "shop/liar.png", 100, crc=zlib.crc32(liar[:100])),
        "inflates-less": lambda: forge_sizes(honest, "shop/liar.png", len(liar) + 5000),
        "headers-disagree": lambda: forge_sizes(honest, "shop/liar.png", 100, central=False),
    }[lie]()
    report = importer.import_upload(forged, "bundle.zip")
    assert [p.name for p in report.imported] == ["Mug"]
    (failed,) = report.failed
    assert failed.source == "shop/liar.png" and "tampered with" in failed.reason
    assert {p.name for p in importer.iter_products()} == {"Mug"}

    before = stored_keys(importer)
    alone = forge_sizes(zip_with({"liar.png": liar}), "liar.png", 100, crc=zlib.crc32(liar[:100]))
    report = importer.import_upload(alone, "liars.zip")
    assert report.imported == [] and [f.source for f in report.failed] == ["liar.png"]
    assert stored_keys(importer) == before and importer.vectors.count() == 1


# --- CSV -------------------------------------------------------------------------------------------------------


def test_a_csv_imports_its_rows_with_all_their_fields(importer, tmp_path, product_photo, monkeypatch):
    write(tmp_path / "shop" / "img" / "mug.png", product_photo(1))
    write(tmp_path / "shop" / "img" / "bag.png", product_photo(2))
    fetched = []

    def fake_fetch(url):
        fetched.append(url)
        return product_photo(3), "lamp.png"

    monkeypatch.setattr(importer, "fetch_url_image", fake_fetch)
    csv_path = write(tmp_path / "shop" / "products.csv", (
        b"image,name,category,price,id,description,brand\n"
        b"img/mug.png,Red mug,Mugs,$9.50,mug-1,A red mug,Acme\n"
        b'img/bag.png,"Bag, canvas",Bags,"1,299.00",,,\n'
        b"https://cdn.example/lamp.png?v=2,Desk lamp,Lighting,,lamp-1,,\n"
    ))
    report = importer.import_path(csv_path)
    assert report.failed == [] and report.skipped == []
    products = by_name(report.imported)
    mug = products["Red mug"]
    assert (mug.id, mug.category, mug.price, mug.description, mug.attributes) == (
        "mug-1", "Mugs", 9.5, "A red mug", {"brand": "Acme"}
    )
    assert products["Bag, canvas"].price == 1299.0 and products["Bag, canvas"].attributes == {}
    assert products["Desk lamp"].id == "lamp-1" and products["Desk lamp"].image_key.endswith(".png")
    assert fetched == ["https://cdn.example/lamp.png?v=2"]


def test_bad_csv_rows_fail_alone_naming_row_and_column(importer, tmp_path, product_photo):
    write(tmp_path / "shop" / "ok.png", product_photo(1))
    write(tmp_path / "shop" / "ok2.png", product_photo(2))
    write(tmp_path / "outside.png", product_photo(3))
    write(tmp_path / "shop" / "not-really.png", b"hello")
    csv_path = write(tmp_path / "shop" / "items.csv", (
        b"Image,Name,Category,Price\n"  # header names are matched case-insensitively
        b"ok.png,Good,Mugs,4\n"
        b"ok2.png,Bad price,Mugs,cheap\n"
        b"missing.png,Ghost,Mugs,\n"
        b"../outside.png,Escape,Mugs,\n"
        b"ok2.png,,Mugs,\n"
        b"not-really.png,Text,Mugs,\n"
        b"ftp://host/x.png,Ftp,Mugs,\n"
    ))
    report = importer.import_path(csv_path)
    assert [p.name for p in report.imported] == ["Good"]
    failed = {i.source: i.reason for i in report.failed}
    assert failed == {
        "row 3 (ok2.png)": "column price: 'cheap' is not a price (write it like 12.50)",
        "row 4 (missing.png)": "column image: missing.png does not exist next to the CSV",
        "row 5 (../outside.png)":
            "column image: '../outside.png' points outside the CSV's folder; use a path relative to it",
        "row 6 (ok2.png)": "column name is empty",
        "row 7 (not-really.png)": failed["row 7 (not-really.png)"],
        "row 8 (ftp://host/x.png)": "column image: 'ftp://host/x.png' is neither a relative path nor an http(s) URL",
    }
    assert "not-really.png is not an image" in failed["row 7 (not-really.png)"]


def test_a_csv_image_url_to_an_internal_address_fails_with_the_reason(importer, tmp_path, product_photo):
    write(tmp_path / "ok.png", product_photo(1))
    csv_path = write(tmp_path / "items.csv", (
        b"image,name,category\n"
        b"ok.png,Good,Mugs\n"
        b"http://169.254.169.254/latest/meta-data/x.png,Metadata,Mugs\n"
    ))
    report = importer.import_path(csv_path)
    assert [p.name for p in report.imported] == ["Good"]
    (failed,) = report.failed
    assert failed.source.startswith("row 3") and "169.254.169.254" in failed.reason


def test_a_csv_without_the_required_columns_is_refused_naming_them(importer, tmp_path):
    csv_path = write(tmp_path / "items.csv", b"picture,title,category\nx.png,X,Mugs\n")
    expected = r"missing the required columns image, name \(found: picture, title, category\)"
    with pytest.raises(ImportSourceError, match=expected):
        importer.import_path(csv_path)


def test_a_csv_that_is_not_utf8_is_refused_naming_the_row(importer, tmp_path):
    csv_path = write(tmp_path / "items.csv", "image,name,category\nx.png,Café crème,Mugs\n".encode("cp1252"))
    with pytest.raises(ImportSourceError, match=r"not UTF-8 text \(byte 0xe9 on row 2\).*CSV UTF-8"):
        importer.import_path(csv_path)


def test_an_empty_csv_is_refused(importer, tmp_path):
    with pytest.raises(ImportSourceError, match="empty"):
        importer.import_path(write(tmp_path / "items.csv", b"\n"))


def test_semicolon_csvs_and_existing_ids_are_handled(importer, tmp_path, product_photo):
    """A row whose id exists adds its photo to that product; a new id makes a new product."""
    write(tmp_path / "a.png", product_photo(1))
    write(tmp_path / "b.png", product_photo(2))
    importer.add_product(product_photo(9), "x.png", name="Taken", category="Mugs", product_id="taken")
    csv_path = write(tmp_path / "items.csv", b"image;name;category;id\na.png;A;Mugs;taken\nb.png;B;Mugs;free\n")
    report = importer.import_path(csv_path)
    assert [p.id for p in report.imported] == ["free"]
    assert report.photos_added == 1 and not report.skipped
    taken = importer.get_product("taken")
    assert taken.name == "Taken" and len(taken.photos) == 2  # the row's name does not overwrite the product's


def test_rows_that_share_an_id_become_one_product_with_several_photos(importer, tmp_path, product_photo):
    for i in range(5):
        write(tmp_path / f"{i}.png", product_photo(60 + i))
    rows = b"file,product_id,name,category\n0.png,shop:1,Lamp,Lighting\n1.png,shop:1,Lamp,Lighting\n" \
           b"2.png,shop:2,Mug,Kitchen\n3.png,shop:1,Lamp,Lighting\n4.png,shop:2,Mug,Kitchen\n"
    report = importer.import_path(write(tmp_path / "metadata.csv", rows), batch_size=2)
    assert sorted((p.id, len(p.photos)) for p in report.imported) == [("shop-1", 3), ("shop-2", 2)]
    lamp = importer.get_product("shop-1")
    assert lamp.attributes["source_id"] == "shop:1"
    response = importer.search_image(product_photo(63), "q.png", threshold=-1)
    assert response.results[0].product.id == "shop-1"
    assert [m.product.id for m in response.results].count("shop-1") == 1
    again = importer.import_path(tmp_path / "metadata.csv")
    assert again.imported == [] and len(again.skipped) == 5 and again.photos_added == 0


def test_a_file_column_works_as_the_image_column(importer, tmp_path, product_photo):
    """Exported catalogs (like the sample photos' metadata.csv) often name the image column 'file'."""
    write(tmp_path / "a.png", product_photo(1))
    csv_path = write(tmp_path / "metadata.csv", b"file,product_id,name,category\na.png,abo:1,Lamp,lighting\n")
    report = importer.import_path(csv_path)
    (product,) = report.imported
    assert (product.id, product.name, product.category) == ("abo-1", "Lamp", "lighting")
    assert product.attributes == {"source_id": "abo:1"}


def test_an_uploaded_zip_imports_from_bytes_and_reports_the_chosen_name(importer, tmp_path, product_photo):
    archive = make_zip(tmp_path / "shop.zip", {"Mugs/red_mug.png": product_photo(1), "notes.txt": b"hi"})
    report = importer.import_upload(archive.read_bytes(), "My Shop.zip")
    assert [(p.name, p.category) for p in report.imported] == [("Red Mug", "Mugs")]
    assert report.source == "My Shop.zip"
    assert [i.source for i in report.skipped] == ["notes.txt"]


# --- reading in another process (the cluster import's workers) --------------------------------------------------


def test_every_item_can_be_read_again_from_its_origin_with_the_same_limits(tmp_path, product_photo):
    from vpm.core.importer import read_origin

    folder = tmp_path / "folder"
    write(folder / "Mugs" / "red.png", product_photo(1))
    write(folder / "big.png", product_photo(2, size=400))
    archive = make_zip(tmp_path / "photos.zip", {"shop/Mugs/red.png": product_photo(3), "shop/blue.png": product_photo(4)})
    write(tmp_path / "sheet" / "a.png", product_photo(5))
    (tmp_path / "sheet" / "items.csv").write_text("image,name,category\na.png,A,Mugs\n", encoding="utf-8")
    limits = ImportLimits(max_file_bytes=len(product_photo(2, size=400)) - 1)
    for path in (folder, archive, tmp_path / "sheet" / "items.csv"):
        with open_source(path, limits=limits) as source:
            for item in source.items:
                try:
                    expected = item.read()
                except ItemUnreadable as err:  # the same refusal, with the same words
                    with pytest.raises(ItemUnreadable, match=re.escape(str(err))):
                        read_origin(item.origin, limits)
                    continue
                assert read_origin(item.origin, limits) == expected
    with open_source(folder, limits=limits) as source:
        assert any(item.origin[0] == "file" for item in source.items)
    with pytest.raises(ItemUnreadable, match="cannot be fetched here"):
        read_origin(("url", "https://example.com/a.jpg"), limits)
