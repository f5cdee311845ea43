"""The storage browser page (AppTest), on the local folder and on S3 (moto in-process)."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import pagetools
from pagetools import button, click, shown

PAGE = pagetools.PAGES / "storage_browser.py"


@pytest.fixture(autouse=True)
def app_env(settings, tiny_clip_dir, monkeypatch):
    """`settings` put the backend's variables in the environment; the page reads them the same way."""
    from vpm.faces import webapp

    monkeypatch.setenv("VPM_MODEL", str(tiny_clip_dir))
    webapp.clear_caches()
    yield
    webapp.clear_caches()


@pytest.fixture
def matcher(settings):
    from vpm.core.matcher import Matcher

    return Matcher(settings)


def jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), colour).save(buf, "JPEG")
    return buf.getvalue()


def seed(matcher, *ids):
    colours = [(220, 40, 40), (40, 200, 60), (30, 60, 220)]
    return [
        matcher.add_product(jpeg(colours[i % 3]), f"{pid}.jpg", name=f"Product {pid}", category="Test", product_id=pid)
        for i, pid in enumerate(ids)
    ]


def run_page() -> AppTest:
    return pagetools.run_page(PAGE)


def listing(at: AppTest) -> list[str]:
    """Names in the file table of the Files tab (the table with a name column)."""
    tables = [d.value for d in at.dataframe if "name" in d.value.columns]
    return list(tables[0]["name"]) if tables else []


def test_folders_navigate_with_buttons_and_breadcrumbs(matcher):
    seed(matcher, "p1", "p2")
    at = run_page()
    labels = [b.label for b in at.button]
    assert {"images/", "metadata/", "thumbnails/"} <= set(labels)
    assert listing(at) == []  # nothing at the root but folders

    click(at, "images/")
    # Each upload's keys are the id plus a token of its own (no two writers can produce the same key).
    assert [name.split("-")[0] for name in listing(at)] == ["p1", "p2"]
    assert button(at, "images").disabled  # the current crumb
    captions = [c.value for c in at.caption]
    assert "2 files in `images/`" in captions  # one page: no page number, and no pager
    assert not [b for b in at.button if b.label in ("Previous page", "Next page")]

    click(at, "All files")
    assert "images/" in [b.label for b in at.button]
    click(at, "metadata/")
    assert listing(at) == []  # only the catalog tables' folders
    assert "products.lance/" in [b.label for b in at.button]
    click(at, "Up one level")
    assert button(at, "All files").disabled


def test_pagination_walks_250_objects_in_pages_of_100(storage):
    for i in range(250):
        storage.put(f"images/bulk/item-{i:03d}.txt", b"x" * i, "text/plain")
    at = run_page()
    click(at, "images/")
    click(at, "bulk/")
    first = listing(at)
    assert len(first) == 100 and first[0] == "item-000.txt"
    assert button(at, "Previous page").disabled

    click(at, "Next page")
    second = listing(at)
    assert len(second) == 100 and second[0] == "item-100.txt"
    click(at, "Next page")
    third = listing(at)
    assert len(third) == 50 and third[-1] == "item-249.txt"
    assert button(at, "Next page").disabled
    assert any(c.value.startswith("Page 3 · 50 files") for c in at.caption)

    click(at, "Previous page")
    assert listing(at) == second
    rows = at.dataframe[0].value
    assert rows.iloc[1]["size"] == "101 B" and rows.iloc[1]["content type"] == "text/plain"


def test_selecting_an_image_previews_it(matcher):
    (product,) = seed(matcher, "p1")
    at = run_page()
    click(at, "images/")
    assert not at.image
    at.selectbox(key="browse_preview").select(product.image_key).run()
    assert not at.exception
    assert len(at.image) == 1
    assert at.image[0].captions == [product.image_key]


def test_the_catalog_tables_tab_shows_each_table(matcher):
    seed(matcher, "p1", "p2")
    at = run_page()
    table = next(d.value for d in at.dataframe if "table" in d.value.columns)
    rows = {row["table"]: row for row in table.to_dict("records")}
    assert rows["products"]["rows"] == "2" and rows["products"]["holds"] == "products and their photos"
    vectors = next(name for name in rows if name.startswith("vectors-"))
    assert rows[vectors]["rows"] == "2" and "photo vectors" in rows[vectors]["holds"]


def test_a_damaged_table_gets_a_clear_error_and_is_left_alone(matcher, storage, settings):
    from vpm.backends import engine

    seed(matcher, "p1")
    manifests = list(storage.iter_objects(settings.metadata_prefix + "products.lance/_versions/"))
    for info in manifests:
        storage.put(info.key, b"not a manifest")
    engine.forget()
    at = run_page()
    errors = shown(" ".join(e.value for e in at.error))
    assert "The catalog tables cannot be read" in errors and "left untouched" in errors
    assert all(storage.get(info.key) == b"not a manifest" for info in manifests)


def test_consistency_report_shows_a_planted_orphan_and_a_missing_image(matcher, storage):
    p1, _ = seed(matcher, "p1", "p2")
    storage.delete(p1.image_key)
    storage.put("images/stray.jpg", jpeg((1, 2, 3)), "image/jpeg")
    at = run_page()
    click(at, "Run the consistency check")

    subheaders = [s.value for s in at.subheader]
    assert "Missing files (1)" in subheaders and "Orphan files (1)" in subheaders
    tables = [t.value for t in at.dataframe]
    missing = next(t for t in tables if "product" in t.columns)
    assert list(missing["key"]) == [p1.image_key] and list(missing["product"]) == ["p1"]
    orphans = next(t for t in tables if "recent" in t.columns)
    assert list(orphans["key"]) == ["images/stray.jpg"]
    assert "Search vectors" in subheaders


def test_deleting_orphans_needs_confirmation_and_deletes_only_the_orphan(matcher, storage):
    p1, p2 = seed(matcher, "p1", "p2")
    storage.put("images/stray.jpg", jpeg((1, 2, 3)), "image/jpeg")
    at = run_page()
    click(at, "Run the consistency check")
    # The stray file was written a moment ago, so it is kept unless the person includes recent files.
    assert not [b for b in at.button if b.label.startswith("Delete")]
    assert any("Nothing to delete yet: the orphan was written in the last 10 minutes" in c.value for c in at.caption)

    next(c for c in at.checkbox if c.label.startswith("Also delete the 1 file written")).check().run()
    assert button(at, "Delete 1 orphan file").disabled
    confirm = at.checkbox(key="confirm_orphan_delete")
    assert confirm.label == (
        "I understand that 1 orphan file will be deleted permanently. Each is re-checked against the catalog first."
    )
    confirm.check().run()
    click(at, "Delete 1 orphan file")

    assert not storage.exists("images/stray.jpg")
    for product in (p1, p2):
        assert storage.exists(product.image_key) and storage.exists(product.thumbnail_key)
    assert any("Deleted 1 orphan file(s)" in s.value for s in at.success)
    assert any("`images/stray.jpg`" in m.value for m in at.markdown)
    assert "Orphan files (0)" in [s.value for s in at.subheader]


@pytest.mark.parametrize("backend", ["local"], indirect=True)  # file times are set on the local folder
def test_the_confirmation_says_how_many_go_and_how_many_recent_ones_stay(matcher, storage, settings):
    import os
    import time

    seed(matcher, "p1")
    storage.put("images/old-stray.jpg", jpeg((1, 2, 3)), "image/jpeg")
    storage.put("images/new-stray.jpg", jpeg((3, 2, 1)), "image/jpeg")
    old = time.time() - 3600
    os.utime(settings.vpm_data_dir / "images" / "old-stray.jpg", (old, old))
    at = click(run_page(), "Run the consistency check")

    assert at.checkbox(key="confirm_orphan_delete").label == (
        "I understand that 1 orphan file will be deleted permanently, and 1 file written in the last 10 minutes "
        "will be kept (it may belong to a product being added right now). Each is re-checked against the catalog "
        "first."
    )
    at.checkbox(key="confirm_orphan_delete").check().run()
    click(at, "Delete 1 orphan file")
    assert not storage.exists("images/old-stray.jpg") and storage.exists("images/new-stray.jpg")


def test_listed_files_show_their_product_and_the_preview_names_it(matcher):
    (product,) = seed(matcher, "p1")
    at = click(run_page(), "images/")
    table = next(d.value for d in at.dataframe if "name" in d.value.columns)
    assert list(table["product"]) == ["Product p1"]
    at.selectbox(key="browse_preview").select(product.image_key).run()
    assert any("Product p1" in c.value for c in at.caption)


# --------------------------------------------------------------------------------------------------- repairs


def versions(storage, settings) -> list[str]:
    """The products table's version files, oldest first."""
    from vpm.backends import engine

    found = [(v, o.key) for o in storage.iter_objects(settings.metadata_prefix + "products.lance/_versions/")
             if (v := engine.version_of(o.key.rpartition("/")[2])) is not None]
    return [key for _v, key in sorted(found)]


def signed_in(monkeypatch) -> AppTest:
    """The page with VPM_ADMIN_PASSWORD set, in a session that signed in with it."""
    from vpm.core.access import session_token

    monkeypatch.setenv("VPM_ADMIN_PASSWORD", "correct horse")
    at = AppTest.from_file(str(PAGE), default_timeout=pagetools.TIMEOUT)
    at.session_state["_vpm_admin_token"] = session_token("correct horse")
    return at.run()


def test_a_damaged_table_is_set_aside_from_the_consistency_tab(matcher, storage, settings, monkeypatch):
    from vpm.backends import engine

    seed(matcher, "p1", "p2", "p3")
    newest = versions(storage, settings)[-1]
    storage.put(newest, b"\x07" * 4096)
    engine.forget()
    version = engine.version_of(newest.rpartition("/")[2])

    at = click(signed_in(monkeypatch), "Run the consistency check")

    errors = shown(" ".join(e.value for e in at.error))
    assert "Catalog tables: the table products in " in errors and f"its newest version {version} cannot be read" in errors
    plan = shown(" ".join(m.value for m in at.markdown))
    assert f"products: set aside version {version} (the last change made to the table" in plan
    assert f"the table then opens at version {version - 1} (2 rows)" in plan
    assert button(at, "Set aside 1 damaged version").disabled  # not before the person confirms
    at.checkbox(key="confirm_set_aside").check().run()
    click(at, "Set aside 1 damaged version")

    done = shown(" ".join(s.value for s in at.success))
    assert f"Products: set aside version {version} (1 change) in {settings.metadata_prefix}set-aside/" in done
    assert "the table opens at version" in done and "with 2 rows" in done and "never deleted" in done
    assert not storage.exists(newest)
    kept = [o.key for o in storage.iter_objects(settings.metadata_prefix + "set-aside/") if "_versions/" in o.key]
    assert len(kept) == 1 and storage.get(kept[0]) == b"\x07" * 4096
    assert not [e for e in at.error if "Catalog tables" in e.value]  # the fresh check: every table opens
    engine.forget()
    assert {p.id for p in matcher.iter_products()} == {"p1", "p2"}


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_signed_out_the_check_shows_what_is_wrong_but_offers_no_repair(matcher, storage, settings, monkeypatch):
    from vpm.backends import engine

    seed(matcher, "p1", "p2")
    storage.put("images/stray.jpg", jpeg((1, 2, 3)), "image/jpeg")
    storage.put(versions(storage, settings)[-1], b"garbage")
    engine.forget()
    monkeypatch.setenv("VPM_ADMIN_PASSWORD", "correct horse")

    at = click(run_page(), "Run the consistency check")

    assert "Catalog tables: the table products" in shown(" ".join(e.value for e in at.error))
    assert not [b for b in at.button if b.label.startswith(("Set aside", "Delete", "Embed"))]
    assert not [c for c in at.checkbox if c.key in ("confirm_set_aside", "confirm_orphan_delete")]
    assert any("Sign in" in shown(c.value) for c in at.caption)


def test_missing_vectors_are_embedded_from_the_consistency_tab(matcher, storage, monkeypatch):
    seed(matcher, "p1", "p2")  # embedded with another model than the page's: the page's model has no vector yet

    at = click(signed_in(monkeypatch), "Run the consistency check")
    warning = shown(" ".join(w.value for w in at.warning))
    assert "Search vectors: none of the 2 products has a vector for tiny-clip" in warning
    assert any("Embed 2 photos without a search vector" in shown(c.value) for c in at.caption)
    click(at, "Embed what is missing")

    done = shown(" ".join(s.value for s in at.success))
    assert "Vectors for 2/2 photos of 2 products (tiny-clip" in done
    assert not [w for w in at.warning if "Search vectors" in w.value]  # the fresh check: nothing missing
    assert not [b for b in at.button if b.label == "Embed what is missing"]
