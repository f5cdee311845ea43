"""Catalog page: add one product, bulk import a zip, browse with filters, edit, delete with confirmation."""

from __future__ import annotations

import io
import zipfile

import pytest

from pagetools import button, shown

CATALOG_PAGE = "pages/catalog.py"
SEARCH = "pages/search.py"


def matcher_for(settings):
    from vpm.core.matcher import Matcher

    return Matcher(settings)


def all_products(settings):
    return list(matcher_for(settings).iter_products())


def add_form(at):
    """The add form's widgets, found by label (the form's widgets have no keys)."""
    return {
        "photo": next(u for u in at.file_uploader if u.label == "Product photos"),
        "name": next(t for t in at.text_input if t.label == "Name"),
        "new_category": next(t for t in at.text_input if t.label == "…or a new category"),
        "category": next(s for s in at.selectbox if s.label == "Category"),
        "price": next(n for n in at.number_input if n.label == "Price (optional)"),
    }


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_empty_catalog_offers_adding_and_importing(app_settings, open_page):
    at = open_page(CATALOG_PAGE)

    assert not at.exception
    assert any("No products yet" in i.value for i in at.info)
    assert add_form(at)["category"].disabled  # nothing to choose from yet: type a new one
    assert [u.label for u in at.file_uploader] == ["Product photos", "Zip or CSV file"]


def test_adding_a_product_shows_it_and_it_is_searchable_at_once(backend, app_settings, open_page, product_photo):
    at = open_page(CATALOG_PAGE)
    form = add_form(at)
    photo = product_photo(7, fmt="JPEG")
    form["photo"].set_value([("shoe.jpg", photo, "image/jpeg")])
    form["name"].input("Trail shoe")
    form["new_category"].input("Shoes")
    form["price"].set_value(89.5)

    at = button(at, "Add product").click().run()

    assert not at.exception
    assert at.success[0].value == "Added **Trail shoe**. It is searchable now."
    (product,) = all_products(app_settings)
    assert (product.name, product.category, product.price) == ("Trail shoe", "Shoes", 89.5)
    shown = " ".join(m.value for m in at.markdown)
    assert f"`{product.id}`" in shown
    if backend == "s3":  # a presigned https URL a browser can open
        assert "**Image URL:**" in shown and "X-Amz-Signature" in shown
    else:  # a local folder's file:// path means nothing to a visitor: not shown
        assert "Image URL" not in shown and "file://" not in shown

    at.switch_page(SEARCH).run()
    at.file_uploader(key="search_upload").set_value(("same-shoe.jpg", photo, "image/jpeg"))
    at.run()
    assert not at.exception
    assert any(m.value == "**Trail shoe**" for m in at.markdown)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_adding_picks_an_existing_category(app_settings, seed_catalog, open_page, product_photo):
    seed_catalog([("Red mug", "Kitchen", 1)])
    at = open_page(CATALOG_PAGE)
    form = add_form(at)
    form["photo"].set_value([("mug.png", product_photo(2), "image/png")])
    form["name"].input("Blue mug")
    form["category"].set_value("Kitchen")

    at = button(at, "Add product").click().run()

    assert not at.exception
    assert sorted((p.name, p.category) for p in all_products(app_settings)) == [
        ("Blue mug", "Kitchen"), ("Red mug", "Kitchen"),
    ]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_adding_without_a_photo_or_category_says_what_is_missing(app_settings, open_page):
    at = open_page(CATALOG_PAGE)
    add_form(at)["name"].input("Nameless")

    at = button(at, "Add product").click().run()

    assert not at.exception
    assert at.error[0].value == "To add a product, choose a photo of the product, choose a category or type a new one."
    assert add_form(at)["name"].value == "Nameless"  # what was typed is kept
    assert all_products(app_settings) == []


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_adding_a_bad_image_names_the_file_and_adds_nothing(app_settings, open_page):
    at = open_page(CATALOG_PAGE)
    form = add_form(at)
    form["photo"].set_value([("scan.png", b"\x89PNG\r\n\x1a\n truncated", "image/png")])
    form["name"].input("Scanner")
    form["new_category"].input("Office")

    at = button(at, "Add product").click().run()

    assert not at.exception
    assert "scan.png" in shown(at.error[0].value)
    assert add_form(at)["name"].value == "Scanner"  # kept to try again
    assert all_products(app_settings) == []
    assert button(at, "Add product")  # the form is still there to try again


def test_bulk_import_of_a_zip_reports_imported_skipped_and_failed(backend, app_settings, open_page, product_photo):
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("Kitchen/red_mug.png", product_photo(1))
        archive.writestr("Kitchen/blue_mug.png", product_photo(2))
        archive.writestr("Shoes/trail_shoe.png", product_photo(3))
        archive.writestr("Shoes/trail_shoe_copy.png", product_photo(3))  # the same picture again
        archive.writestr("Shoes/broken.jpg", b"not really a jpeg")
    at = open_page(CATALOG_PAGE)
    next(u for u in at.file_uploader if u.label == "Zip or CSV file").set_value(
        ("products.zip", bundle.getvalue(), "application/zip")
    )
    at.run()  # the Import button is enabled once a file is chosen

    at = button(at, "Import").click().run()

    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Imported": "3", "Skipped (duplicates)": "1", "Failed": "1"}  # no README: no "Not images"
    reasons = " ".join(m.value for m in at.markdown)
    assert "broken.jpg" in reasons and "duplicate" in reasons
    products = all_products(app_settings)
    assert sorted((p.name, p.category) for p in products) == [
        ("Blue Mug", "Kitchen"), ("Red Mug", "Kitchen"), ("Trail Shoe", "Shoes"),
    ]
    assert any("3 products in 2 categories" in c.value for c in at.caption)  # the page shows the new catalog


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_zip_that_is_not_a_zip_is_reported(app_settings, open_page):
    at = open_page(CATALOG_PAGE)
    next(u for u in at.file_uploader if u.label == "Zip or CSV file").set_value(
        ("products.zip", b"plain text", "application/zip")
    )
    at.run()

    at = button(at, "Import").click().run()

    assert not at.exception
    assert len(at.error) == 1 and "products.zip" in shown(at.error[0].value)
    assert all_products(app_settings) == []


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_csv_import_reports_each_bad_row_with_its_reason(app_settings, open_page):
    rows = (
        "image,name,category,price\n"
        "http://127.0.0.1:9/kettle.png,Kettle,Kitchen,20\n"  # a private address: refused, never fetched
        ",No picture,Kitchen,\n"
    )
    at = open_page(CATALOG_PAGE)
    next(u for u in at.file_uploader if u.label == "Zip or CSV file").set_value(
        ("products.csv", rows.encode(), "text/csv")
    )
    at.run()

    at = button(at, "Import").click().run()

    assert not at.exception
    assert {m.label: m.value for m in at.metric} == {"Imported": "0", "Skipped (duplicates)": "0", "Failed": "2"}
    reasons = [m.value for m in at.markdown if m.value.startswith("- `")]
    assert len(reasons) == 2 and any("127.0.0.1" in r for r in reasons)
    assert all_products(app_settings) == []


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_table_shows_thumbnails_and_filters_by_category_and_name(app_settings, seed_catalog, open_page):
    seed_catalog([("Red mug", "Kitchen", 1, 4.5), ("Blue mug", "Kitchen", 2), ("Trail shoe", "Shoes", 3)])
    at = open_page(CATALOG_PAGE)

    table = at.dataframe[0].value
    assert list(table["name"]) == ["Trail shoe", "Blue mug", "Red mug"]  # latest changes first
    assert all(str(src).startswith("data:image/webp;base64,") for src in table["picture"])
    assert list(table["price"]) == ["", "", "$4.50"]
    assert list(table["photos"]) == [1, 1, 1]

    at.multiselect[0].set_value(["Kitchen"]).run()
    assert list(at.dataframe[0].value["name"]) == ["Blue mug", "Red mug"]
    next(t for t in at.text_input if t.label == "Name contains").input("red").run()
    assert list(at.dataframe[0].value["name"]) == ["Red mug"]
    assert any(c.value == "Showing 1-1 of 1 matching (3 in all), latest changes first." for c in at.caption)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_editing_a_product_saves_only_what_changed(app_settings, seed_catalog, open_page):
    (mug,) = seed_catalog([("Red mug", "Kitchen", 1, 4.5)])
    at = open_page(CATALOG_PAGE)
    at.selectbox(key="catalog_selected").set_value(mug.id).run()

    edit_name = next(t for t in at.text_input if t.label == "Name" and t.value == "Red mug")
    edit_name.input("Crimson mug")
    next(n for n in at.number_input if n.label == "Price").set_value(5.0)
    at = button(at, "Save changes").click().run()

    assert not at.exception
    saved = matcher_for(app_settings).get_product(mug.id)
    assert (saved.name, saved.category, saved.price) == ("Crimson mug", "Kitchen", 5.0)
    assert list(at.dataframe[0].value["name"]) == ["Crimson mug"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_delete_asks_for_confirmation_first(app_settings, seed_catalog, open_page):
    _mug, shoe = seed_catalog([("Red mug", "Kitchen", 1), ("Trail shoe", "Shoes", 3)])
    at = open_page(CATALOG_PAGE)
    at.selectbox(key="catalog_selected").set_value(shoe.id).run()

    at = button(at, "Delete Trail shoe…").click().run()
    assert any("Delete **Trail shoe**" in w.value for w in at.warning)
    assert len(all_products(app_settings)) == 2  # nothing deleted yet

    at = button(at, "Cancel").click().run()
    assert not at.warning
    assert len(all_products(app_settings)) == 2

    at = button(at, "Delete Trail shoe…").click().run()
    at = button(at, "Yes, delete").click().run()

    assert not at.exception
    assert [p.name for p in all_products(app_settings)] == ["Red mug"]
    assert not (app_settings.vpm_data_dir / shoe.image_key).exists()  # its files went too
    assert list(at.dataframe[0].value["name"]) == ["Red mug"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize("page", [CATALOG_PAGE, SEARCH])
def test_a_damaged_catalog_is_explained_and_left_alone(app_settings, storage, seed_catalog, open_page, page):
    from vpm.backends import engine

    seed_catalog([("Red mug", "Kitchen", 1)])
    manifests = list(storage.iter_objects(app_settings.metadata_prefix + "products.lance/_versions/"))
    for info in manifests:
        storage.put(info.key, b"not a manifest")
    engine.forget()  # as a restarted app would find it
    at = open_page(page)
    assert not at.exception
    errors = shown(" ".join(e.value for e in at.error))
    assert "The catalog cannot be read" in errors and "left untouched" in errors
    assert all(storage.get(info.key) == b"not a manifest" for info in manifests)




@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_product_is_added_with_several_photos(app_settings, open_page, product_photo):
    at = open_page(CATALOG_PAGE)
    form = add_form(at)
    form["photo"].set_value([(f"side{i}.png", product_photo(50 + i), "image/png") for i in range(3)])
    form["name"].input("Kettle")
    form["new_category"].input("Kitchen")
    at = button(at, "Add product").click().run()
    assert not at.exception
    (product,) = all_products(app_settings)
    assert len(product.photos) == 3
    assert "**Photos:** 3" in [m.value for m in at.markdown]
    assert add_form(at)["name"].value == ""  # a fresh form after a product was added


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_photos_are_added_to_and_removed_from_the_chosen_product(app_settings, seed_catalog, open_page,
                                                                  product_photo):
    (mug,) = seed_catalog([("Red mug", "Kitchen", 1)])
    at = open_page(CATALOG_PAGE)
    uploader = next(u for u in at.file_uploader if u.label == "Add photos")
    uploader.set_value([("handle.png", product_photo(61), "image/png"), ("base.png", product_photo(62), "image/png")])
    at = button(at, "Add these photos").click().run()
    assert not at.exception
    photos = matcher_for(app_settings).get_product(mug.id).photos
    assert len(photos) == 3
    assert sum(1 for b in at.button if b.label == "Remove") == 3

    at = [b for b in at.button if b.label == "Remove"][1].click().run()
    assert not at.exception
    left = matcher_for(app_settings).get_product(mug.id).photos
    assert [p.key for p in left] == [photos[0].key, photos[2].key]
    assert not (app_settings.vpm_data_dir / photos[1].key).exists()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_table_pages_through_a_large_catalog(app_settings, open_page, monkeypatch):
    """Draws one page (50) at a time, with a pager; never the whole catalog."""
    import hashlib

    from vpm.core.catalog import Photo, Product

    store = matcher_for(app_settings).catalog
    store.add([
        Product(id=f"p{i:03d}", name=f"Item {i:03d}", category="Bulk",
                photos=[Photo(key=f"images/p{i:03d}.png", sha256=hashlib.sha256(str(i).encode()).hexdigest())])
        for i in range(120)
    ])
    at = open_page(CATALOG_PAGE)
    assert len(at.dataframe[0].value) == 50
    assert any(c.value == "Showing 1-50 of 120 products, latest changes first." for c in at.caption)
    at = button(at, "Next page").click().run()
    at = button(at, "Next page").click().run()
    assert any(c.value == "Showing 101-120 of 120 products, latest changes first." for c in at.caption)
    assert list(at.dataframe[0].value["name"])[-1] == "Item 000"
    assert button(at, "Next page").disabled
    next(t for t in at.text_input if t.label == "Name contains").input("item 07").run()
    assert any(c.value == "Showing 1-10 of 10 matching (120 in all), latest changes first." for c in at.caption)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_readme_in_a_zip_is_not_an_image_and_not_a_duplicate(app_settings, open_page, product_photo):
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("Kitchen/red_mug.png", product_photo(1))
        archive.writestr("README.txt", b"photos of our mugs")
    at = open_page(CATALOG_PAGE)
    next(u for u in at.file_uploader if u.label == "Zip or CSV file").set_value(
        ("mugs.zip", bundle.getvalue(), "application/zip")
    )
    at.run()

    at = button(at, "Import").click().run()

    assert {m.label: m.value for m in at.metric} == {
        "Imported": "1", "Skipped (duplicates)": "0", "Not images": "1", "Failed": "0",
    }
    assert any(e.label == "Left out 1 file that is not a photo" for e in at.expander)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_an_empty_catalog_offers_the_sample_above_the_tabs(app_settings, small_sample, open_page):
    at = open_page(CATALOG_PAGE)

    at = button(at, "Load sample products").click().run()

    assert not at.exception
    assert any("Loaded the sample catalog: imported 2 products (3 photos)" in shown(s.value) for s in at.success)
    assert list(at.dataframe[0].value["name"]) == ["Desk lamp", "Red mug"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_signed_out_the_catalog_shows_products_but_no_way_to_change_them(
    app_settings, seed_catalog, open_page, monkeypatch
):
    seed_catalog([("Red mug", "Kitchen", 1), ("Trail shoe", "Shoes", 3)])
    monkeypatch.setenv("VPM_ADMIN_PASSWORD", "correct horse")

    at = open_page(CATALOG_PAGE)

    assert not at.exception
    assert list(at.dataframe[0].value["name"]) == ["Trail shoe", "Red mug"]  # browsing stays open
    labels = [b.label for b in at.button]
    assert not [label for label in labels if label.startswith(("Delete", "Add", "Import", "Remove", "Save"))]
    assert [u.label for u in at.file_uploader] == []  # no add form, no import, no "add photos"
    assert any("Sign in" in shown(c.value) for c in at.caption)


# ------------------------------------------------------------------------------------------- no stale messages


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_refused_duplicate_is_not_shown_above_the_card_of_the_product_added_before(app_settings, open_page,
                                                                                     product_photo):
    at = open_page(CATALOG_PAGE)
    photo = product_photo(7, fmt="JPEG")
    form = add_form(at)
    form["photo"].set_value([("shoe.jpg", photo, "image/jpeg")])
    form["name"].input("Trail shoe")
    form["new_category"].input("Shoes")
    at = button(at, "Add product").click().run()
    assert at.success[0].value == "Added **Trail shoe**. It is searchable now."

    form = add_form(at)  # the same photo again, as another product: refused
    form["photo"].set_value([("shoe-again.jpg", photo, "image/jpeg")])
    form["name"].input("Road shoe")
    form["category"].set_value("Shoes")
    at = button(at, "Add product").click().run()

    assert not at.exception
    assert "Could not add Road shoe" in shown(at.error[0].value)
    assert not [s for s in at.success if "Added" in s.value]  # the earlier green card is gone
    assert "**Id:**" not in " ".join(m.value for m in at.markdown)
    assert [p.name for p in all_products(app_settings)] == ["Trail shoe"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_after_a_rename_the_edit_dropdown_shows_the_new_name(app_settings, seed_catalog, open_page):
    (mug,) = seed_catalog([("Red mug", "Kitchen", 1)])
    at = open_page(CATALOG_PAGE)

    next(t for t in at.text_input if t.label == "Name" and t.value == "Red mug").input("Crimson mug")
    at = button(at, "Save changes").click().run()

    assert not at.exception
    chooser = at.selectbox(key="catalog_selected")
    assert chooser.options == [f"Crimson mug · Kitchen ({mug.id})"]
    # The browser keeps the label it was sent for a keyed widget unless the value is sent again: it is, renamed.
    assert chooser.proto.set_value and chooser.proto.raw_value == f"Crimson mug · Kitchen ({mug.id})"
    assert chooser.value == mug.id


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_refused_photo_does_not_stay_in_the_add_photos_uploader(app_settings, seed_catalog, open_page,
                                                                  product_photo):
    (mug,) = seed_catalog([("Red mug", "Kitchen", 1)])
    at = open_page(CATALOG_PAGE)
    uploader = next(u for u in at.file_uploader if u.label == "Add photos")
    uploader.set_value([("again.png", product_photo(1), "image/png")])  # the photo the mug has already

    at = button(at, "Add these photos").click().run()

    assert not at.exception
    assert "Could not add photos to Red mug" in shown(at.error[0].value)
    assert any("None of them was added" in c.value for c in at.caption)
    assert not next(u for u in at.file_uploader if u.label == "Add photos").value  # a fresh, empty uploader
    assert len(matcher_for(app_settings).get_product(mug.id).photos) == 1

    next(t for t in at.text_input if t.label == "Name" and t.value == "Red mug").input("Crimson mug")
    at = button(at, "Save changes").click().run()  # and after saving an edit: no old error, no old photo

    assert not at.exception
    assert not at.error
    assert not next(u for u in at.file_uploader if u.label == "Add photos").value


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_every_page_lets_the_uploaders_list_of_formats_wrap_instead_of_ending_in_dots(app_settings, open_page):
    """Streamlit cuts the hint under an uploader ("20MB per file • JPG, JPEG, PNG, TIF,...") on a phone; the app
    sends a style that wraps it (checked by its selector: AppTest draws no pixels)."""
    at = open_page()  # streamlit_app.py sends it before any page (AppTest keeps it from the first run)
    styles = " ".join(h.proto.body for h in at.get("html"))
    assert '[data-testid="stFileUploaderDropzoneInstructions"] span' in styles and "white-space: normal" in styles


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_more_like_this_on_a_catalog_product_opens_search_with_its_look_alikes(app_settings, seed_catalog, open_page):
    _mug, shoe, _lamp = seed_catalog([("Red mug", "Kitchen", 1), ("Trail shoe", "Shoes", 3),
                                      ("Desk lamp", "Lighting", 5)])
    at = open_page(CATALOG_PAGE)
    at.selectbox(key="catalog_selected").set_value(shoe.id).run()

    at.button(key="catalog_more_like_this").click().run()

    assert not at.exception
    assert [h.value for h in at.subheader] == ["More like Trail shoe"]  # the Search page, showing its look-alikes
    names = [m.value for m in at.markdown if m.value in ("**Red mug**", "**Desk lamp**", "**Trail shoe**")]
    assert sorted(names) == ["**Desk lamp**", "**Red mug**"]
    at.button(key="search_similar_back").click().run()
    assert not at.exception and not at.subheader  # back to an empty search
