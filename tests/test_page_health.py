"""Health page: the CLI's checks with icons and fixes, masked settings, package versions."""

from __future__ import annotations

import pytest

from pagetools import shown

HEALTH = "pages/health.py"


def test_checks_pass_on_a_working_catalog(backend, app_settings, seed_catalog, open_page):
    seed_catalog([("Red mug", "Kitchen", 1)])

    at = open_page(HEALTH)

    assert not at.exception
    markdown = [m.value for m in at.markdown]
    assert any("**storage reachable** (pass)" in m for m in markdown)
    assert any("**catalog readable** (pass)" in m for m in markdown)
    assert any("1 products in 1 categories" in m or "1 product in 1 category" in m for m in markdown)
    # The model is not loaded just to open this page; the index coverage is read from the cache instead.
    assert any("**model and index** (pass)" in m for m in markdown)
    assert any("1 photos of 1 products have a vector" in m and "loads on the first search" in m for m in markdown)
    assert [s.value for s in at.success] == ["All checks passed."]
    assert not at.error


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_loading_the_model_on_request_adds_the_model_and_index_checks(app_settings, seed_catalog, open_page):
    seed_catalog([("Red mug", "Kitchen", 1)])
    at = open_page(HEALTH)

    next(b for b in at.button if b.label == "Load and check the model").click().run()

    assert not at.exception
    markdown = [m.value for m in at.markdown]
    assert any("**model** (pass)" in m for m in markdown)
    assert any("**index** (pass)" in m for m in markdown)
    assert any("vectors for 1/1 photos of 1 products" in m for m in markdown)
    assert "Load and check the model" not in [b.label for b in at.button]


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_a_missing_bucket_is_a_failed_check_with_what_to_do(app_settings, open_page, monkeypatch):
    monkeypatch.setenv("S3_BUCKET_NAME", "no-such-bucket")

    at = open_page(HEALTH)

    assert not at.exception
    assert any("**storage reachable** (fail)" in m.value for m in at.markdown)
    assert any("What to do:" in c.value and "S3_BUCKET_NAME" in shown(c.value) for c in at.caption)
    assert any("Something needs fixing" in e.value for e in at.error)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_settings_are_shown_with_secrets_masked_and_versions_listed(app_settings, open_page, monkeypatch):
    monkeypatch.setenv("VPM_API_KEY", "super-secret-value")

    at = open_page(HEALTH)

    assert not at.exception
    settings_lines, versions_lines = (lines(m.value) for m in at.markdown if m.value.startswith("**") and " · `" in m.value)
    assert settings_lines["VPM_API_KEY"] == "•••••• (set)"
    assert "super-secret-value" not in str(settings_lines)
    assert settings_lines["VPM_MODEL"] == str(app_settings.vpm_model)
    assert versions_lines["streamlit"][0].isdigit()
    assert versions_lines["python"].startswith("3.")


def lines(markdown: str) -> dict[str, str]:
    """'**NAME** · `value`' lines, one a setting or package, as {name: value}."""
    out = {}
    for line in markdown.split("  \n"):
        name, _, value = line.partition(" · ")
        out[name.strip("*")] = value.strip("`")
    return out


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_long_settings_are_lines_that_wrap_not_table_cells_that_cut_them(app_settings, open_page, monkeypatch):
    """On a phone a table cell cut "metadata/products.json" and the data folder's path: lines wrap, whole."""
    monkeypatch.setenv("VPM_DATA_DIR", str(app_settings.vpm_data_dir / "a" / "rather" / "long" / "folder" / "path"))

    at = open_page(HEALTH)

    assert not at.exception
    assert not at.table
    settings_lines = next(lines(m.value) for m in at.markdown if m.value.startswith("**") and " · `" in m.value)
    assert settings_lines["S3_METADATA_KEY"] == "metadata/products.json"
    assert settings_lines["VPM_DATA_DIR"].endswith("/a/rather/long/folder/path")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_catalog_indexed_by_the_built_in_model_reads_as_indexed_before_the_model_loads(
    app_settings, open_page, monkeypatch
):
    """`vpm index --check` says 1/1: the page, which counts without loading the model, must say so too."""
    from vpm.core.matcher import Matcher
    from vpm.models.embeddings import EfficientNetEmbedder

    from conftest import make_product_photo
    from fakes import ColourMeanEmbedder

    class BuiltIn(ColourMeanEmbedder):  # writes its vectors under the id the built-in model gives them
        model_id = EfficientNetEmbedder(None, "cpu").model_id

    monkeypatch.setenv("VPM_MODEL", "efficientnet-lite0")
    built_in = app_settings.model_copy(update={"vpm_model": "efficientnet-lite0"})
    Matcher(built_in, embedder=BuiltIn()).add_product(make_product_photo(1), "mug.png", name="Red mug",
                                                      category="Kitchen")

    at = open_page(HEALTH)

    assert not at.exception
    markdown = [shown(m.value) for m in at.markdown]
    assert any("**model and index** (pass)" in m for m in markdown), markdown
    assert any(f"1 photos of 1 products have a vector for {BuiltIn.model_id}" in m for m in markdown)
    assert not any("no vector" in m for m in markdown)
