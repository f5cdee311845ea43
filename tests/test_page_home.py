"""Home page: first-run panel, status of storage / catalog / model / index, links; never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import make_product_photo
from pagetools import button, shown

HOME = "pages/home.py"


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def all_text(at) -> str:
    return "\n".join(e.value for kind in ("markdown", "caption", "info", "warning", "error") for e in getattr(at, kind))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_empty_catalog_offers_the_sample_products_and_a_way_to_add_more(app_settings, open_page):
    at = open_page(HOME)

    assert not at.exception
    text = all_text(at)
    assert "Start with the sample products" in text and "4 to 6 minutes on a 2-core CPU" in text
    assert "The catalog is empty" not in text  # it would contradict the progress bar while the sample loads
    assert "Load sample products" in [b.label for b in at.button]
    assert "Add or import your own products" in [link.value for link in at.page_link]
    assert metrics(at)["Products"] == "0"
    assert metrics(at)["Search index"] == "empty"


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_loading_the_sample_imports_it_with_its_photos_and_says_so(app_settings, small_sample, open_page):
    at = open_page(HOME)

    at = button(at, "Load sample products").click().run()

    assert not at.exception
    assert any("Loaded the sample catalog: imported 2 products (3 photos)" in shown(s.value) for s in at.success)
    assert metrics(at)["Products"] == "2"
    assert metrics(at)["Search index"] == "ready"
    assert "Load sample products" not in [b.label for b in at.button]  # the catalog is not empty any more
    from vpm.core.matcher import Matcher

    products = {p.name: p for p in Matcher(app_settings).iter_products()}
    assert len(products["Red mug"].photos) == 2  # rows sharing an id made one product
    assert products["Red mug"].attributes["licence"] == "MIT"  # the attribution travels with the photos


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_model_line_names_the_model_never_its_path(app_settings, open_page):
    at = open_page(HOME)

    text = shown(all_text(at))
    assert "tiny-clip is on this machine and loads in a few seconds on the first search" in text
    assert "by photo or by words" in text
    model_part = text[text.index("tiny-clip"):]
    assert str(app_settings.vpm_model) not in model_part


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_offline_without_the_model_home_says_the_built_in_model_runs_and_promises_no_words(
    app_settings, open_page, monkeypatch, tmp_path
):
    monkeypatch.setenv("VPM_MODEL", "clip-ViT-B-32")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # nothing cached; HF_HUB_OFFLINE is set

    at = open_page(HOME)

    text = shown(all_text(at))
    assert "clip-ViT-B-32 cannot be downloaded here, so the built-in image model (EfficientNet-Lite0) runs" in text
    assert "in words" not in text  # the welcome does not promise search by words
    assert "empty-hf-home" not in text and "Traceback" not in text


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_index_is_counted_for_the_model_that_will_run_not_the_one_that_cannot_load(
    app_settings, open_page, monkeypatch, tmp_path
):
    """An import embedded by the offline fallback: Home must not say every photo is still to embed."""
    from vpm.core.matcher import Matcher
    from vpm.models.embeddings import EfficientNetEmbedder

    from fakes import ColourMeanEmbedder

    class Fallback(ColourMeanEmbedder):
        model_id = EfficientNetEmbedder(None, "cpu").model_id  # the id the built-in model's vectors carry

    seeder = Matcher(app_settings.model_copy(update={"vpm_model": "clip-ViT-B-32"}), embedder=Fallback())
    seeder.add_product(make_product_photo(1), "mug.png", name="Red mug", category="Kitchen")
    monkeypatch.setenv("VPM_MODEL", "clip-ViT-B-32")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))

    at = open_page(HOME)

    assert metrics(at)["Search index"] == "ready"


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_read_only_app_offers_no_changes_and_says_why(app_settings, open_page, monkeypatch):
    monkeypatch.setenv("VPM_READ_ONLY", "true")

    at = open_page(HOME)

    assert "Load sample products" not in [b.label for b in at.button]
    assert any("read-only copy of the catalog" in shown(c.value) for c in at.caption)


def test_populated_catalog_shows_counts_backend_and_index_state(backend, app_settings, seed_catalog, open_page):
    seed_catalog([("Red mug", "Kitchen", 1), ("Blue mug", "Kitchen", 2), ("Trail shoe", "Shoes", 3)])

    at = open_page(HOME)

    assert not at.exception
    assert metrics(at)["Products"] == "3"
    assert metrics(at)["Categories"] == "2"
    assert metrics(at)["Search index"] == "ready"  # the products were embedded when they were added
    text = all_text(at)
    assert "Your catalog is empty" not in text
    if backend == "s3":
        assert f"S3 bucket `{app_settings.s3_bucket_name}` (us-east-1) · CDN off" in text
    else:
        assert "Local folder" in text
    assert "tiny-clip" in shown(text)  # the model is reported, not loaded on purpose


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_every_page_is_linked_from_home(app_settings, open_page):
    at = open_page(HOME)

    labels = [link.value for link in at.page_link]
    for label in ("Search by photo or text", "Catalog", "Catalog map", "Storage browser", "Migration & costs", "Health"):
        assert label in labels


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_home_draws_without_importing_torch(app_settings, seed_catalog, app_file, tmp_path):
    # Seeding embeds (torch in this process); the app itself runs in a fresh interpreter that must not need it.
    seed_catalog([("Red mug", "Kitchen", 1), ("Trail shoe", "Shoes", 3)])
    script = textwrap.dedent(
        f"""
        import json, sys
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file({app_file!r}, default_timeout=60).run()
        print(json.dumps({{
            "exception": [e.value for e in at.exception],
            "products": [m.value for m in at.metric if m.label == "Products"],
            "torch": "torch" in sys.modules,
            "sentence_transformers": "sentence_transformers" in sys.modules,
        }}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["exception"] == []
    assert result["products"] == ["2"]
    assert result["torch"] is False
    assert result["sentence_transformers"] is False


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_corrupt_catalog_is_reported_and_the_links_still_work(app_settings, open_page):
    products_json = app_settings.vpm_data_dir / "metadata" / "products.json"
    products_json.parent.mkdir(parents=True)
    products_json.write_text("{not json")

    at = open_page(HOME)

    assert not at.exception
    assert any("not valid JSON" in e.value for e in at.error)
    assert "Health" in [link.value for link in at.page_link]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_bad_setting_stops_with_one_line_naming_it(app_settings, open_page, monkeypatch):
    monkeypatch.setenv("S3_REGION", "moon-base")

    at = open_page(HOME)

    assert not at.exception
    assert any("S3_REGION" in shown(e.value) for e in at.error)


def test_the_private_streamlit_switch_the_app_relies_on_is_still_there():
    """vpm/faces/webapp.py turns off Streamlit's old pages-folder mode through a private attribute, so a first visit
    straight to /search still goes through streamlit_app.py (the browser test checks the behaviour). If a
    Streamlit upgrade renames it, this fails by name instead of the app silently losing its navigation."""
    from streamlit.runtime.pages_manager import PagesManager

    assert hasattr(PagesManager, "uses_pages_directory"), (
        "Streamlit no longer has PagesManager.uses_pages_directory: revisit webapp._leave_old_multipage_mode"
    )


def test_an_empty_bucket_with_a_local_catalog_waiting_points_to_migration(local_catalog, open_page, monkeypatch):
    local_catalog.add(3)  # a local catalog of three products; the bucket is empty
    monkeypatch.setenv("S3_ENABLED", "true")

    at = open_page(HOME)

    assert not at.exception
    assert metrics(at)["Products"] == "0"  # the bucket's
    assert any("the local catalog has 3 products" in shown(i.value) for i in at.info)
    assert "Move the local catalog to the bucket" in [link.value for link in at.page_link]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_no_pointer_to_migration_without_s3(app_settings, open_page):
    at = open_page(HOME)
    assert "Move the local catalog to the bucket" not in [link.value for link in at.page_link]
