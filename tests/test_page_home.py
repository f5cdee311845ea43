"""Home page: first-run panel, status of storage / catalog / model / index, links; never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from pagetools import shown

HOME = "pages/home.py"


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def all_text(at) -> str:
    return "\n".join(e.value for kind in ("markdown", "caption", "info", "warning", "error") for e in getattr(at, kind))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_empty_catalog_shows_a_first_run_panel_with_a_way_to_add_products(app_settings, open_page):
    at = open_page(HOME)

    assert not at.exception
    text = all_text(at)
    assert "Your catalog is empty" in text
    assert "Add or import products" in [link.value for link in at.page_link]
    assert metrics(at)["Products"] == "0"
    assert metrics(at)["Search index"] == "empty"


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
    assert "not loaded yet" in text or "tiny" in text  # the model is reported, not loaded on purpose


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_every_page_is_linked_from_home(app_settings, open_page):
    at = open_page(HOME)

    labels = [link.value for link in at.page_link]
    for label in ("Search by photo or text", "Catalog", "Storage browser", "Migration & costs", "Health"):
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
    """vpm/webapp.py turns off Streamlit's old pages-folder mode through a private attribute, so a first visit
    straight to /search still goes through streamlit_app.py (the browser test checks the behaviour). If a
    Streamlit upgrade renames it, this fails by name instead of the app silently losing its navigation."""
    from streamlit.runtime.pages_manager import PagesManager

    assert hasattr(PagesManager, "uses_pages_directory"), (
        "Streamlit no longer has PagesManager.uses_pages_directory: revisit webapp._leave_old_multipage_mode"
    )
