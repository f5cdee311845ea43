"""matcher.files (vpm/core/catalog_files.py): what the faces see of the stored files, on a local folder and on S3."""

from __future__ import annotations

import pytest

from conftest import make_product_photo


@pytest.fixture
def matcher(search_settings):
    from vpm.core.matcher import Matcher

    return Matcher(search_settings)


@pytest.fixture
def mug(matcher):
    return matcher.add_product(make_product_photo(1), "mug.png", name="Red mug", category="Kitchen", product_id="mug")


def test_a_folder_is_listed_a_page_at_a_time_with_its_sub_folders(matcher, mug, search_settings):
    files = matcher.files

    root = files.list_folder("")
    assert {search_settings.s3_image_prefix, search_settings.s3_thumbnail_prefix} <= set(root.prefixes)
    assert not any("/" in o.key for o in root.objects)  # one level: what is inside a folder stays in it

    second = matcher.add_product(make_product_photo(2), "cup.png", name="Cup", category="Kitchen", product_id="cup")
    first_page = files.list_folder(search_settings.s3_image_prefix, page_size=1)
    assert len(first_page.objects) == 1 and first_page.next_token
    last_page = files.list_folder(search_settings.s3_image_prefix, page_size=1, token=first_page.next_token)
    listed = {first_page.objects[0].key, *(o.key for o in last_page.objects)}
    assert listed == {mug.photos[0].key, second.photos[0].key}
    assert last_page.next_token is None


def test_an_object_is_read_and_a_missing_one_says_so(matcher, mug):
    from vpm.core.storage import InvalidKey, ObjectNotFound

    assert matcher.files.read(mug.photos[0].key) == make_product_photo(1)
    assert matcher.files.read(mug.photos[0].thumbnail_key).startswith(b"RIFF")  # the WebP thumbnail
    with pytest.raises(ObjectNotFound):
        matcher.files.read("images/nothing-here.jpg")
    with pytest.raises(InvalidKey):
        matcher.files.read("../outside.jpg")


def test_files_are_named_by_the_products_they_belong_to(matcher, mug):
    photo = mug.photos[0]

    owners = matcher.files.owners([photo.key, photo.thumbnail_key, "images/nobody.jpg"])

    assert owners == {photo.key: ("mug", "Red mug"), photo.thumbnail_key: ("mug", "Red mug")}


def test_products_are_read_together_and_missing_ids_left_out(matcher, mug):
    found = matcher.files.products(["mug", "gone"])

    assert list(found) == ["mug"] and found["mug"].name == "Red mug"


def test_the_catalog_version_changes_with_the_products(matcher, mug):
    before = matcher.files.catalog_version()
    assert matcher.files.catalog_version() == before  # reading changes nothing

    matcher.update_product("mug", name="Blue mug")

    assert matcher.files.catalog_version() != before


def test_where_the_files_live_is_said_without_secrets(matcher, backend, search_settings):
    files = matcher.files
    summary = files.backend_summary()

    assert files.set_aside_folder == f"{search_settings.metadata_prefix}set-aside/"
    if backend == "s3":
        bucket = search_settings.s3_bucket_name
        assert summary == {"backend": "s3", "bucket": bucket, "region": search_settings.s3_region}
        assert files.web_urls is True  # presigned URLs: a browser fetches the photos itself
        assert bucket in files.storage_description and bucket in files.description
    else:
        assert summary == {"backend": "local", "bucket": None, "region": None}
        assert files.web_urls is False  # file:// paths mean nothing to a browser
        assert "local folder" in files.storage_description and "local folder" in files.description
    secret = search_settings.aws_secret_access_key
    secret = secret.get_secret_value() if secret is not None else "testing"
    assert secret not in f"{files.storage_description} {files.description} {summary}"


def test_listing_and_reading_never_open_the_products_table(matcher, mug):
    """Drawing a folder must not wait on the catalog: the table is opened only for owners, products, version."""
    from vpm.core.catalog_files import CatalogFiles

    def no_catalog():
        raise AssertionError("the products table was opened")

    files = CatalogFiles(matcher.storage, no_catalog, matcher.where)

    assert files.list_folder("").prefixes
    assert files.read(mug.photos[0].key)
    assert files.web_urls in (True, False) and files.description and files.set_aside_folder
    with pytest.raises(AssertionError, match="products table was opened"):
        files.owners([mug.photos[0].key])
