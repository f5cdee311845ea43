"""Match quality page: evaluate the catalog with a progress bar, stop it, show the report; never write."""

from __future__ import annotations

import pytest

from synthetic import shopper_view, textured, to_bytes

QUALITY = "pages/quality.py"


@pytest.fixture
def two_photo_catalog(app_settings):
    from vpm.core.matcher import Matcher

    matcher = Matcher(app_settings)
    for s in range(1, 4):
        photos = [(to_bytes(textured(s)), f"p{s}-a.png"), (to_bytes(shopper_view(textured(s), s), "JPEG"), f"p{s}-b.jpg")]
        matcher.create_product(photos, name=f"Pack {s}", category="Packs")
    return matcher


def files_of(root) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_an_empty_catalog_says_what_to_do(app_settings, open_page):
    at = open_page(QUALITY)

    assert not at.exception
    assert any("catalog is empty" in i.value for i in at.info)


def test_evaluate_runs_to_a_report_and_changes_nothing(backend, app_settings, two_photo_catalog, open_page):
    before = files_of(app_settings.vpm_data_dir) if backend == "local" else None
    at = open_page(QUALITY)
    assert not at.exception

    at.button(key="quality_start").click().run()

    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Right product first"] == "100%"
    assert metrics["Right product in the top 5"] == "100%"
    assert "Suggested minimum match" in metrics
    assert any("6 held-out photos of 3 products" in c.value for c in at.caption)
    assert any("is how often such a match was right" in m.value for m in at.markdown)  # what a percentage means
    by_category = at.dataframe[-1].value  # the last table: whole percents, like the headline
    assert list(by_category["Right first"]) == ["100%"] and list(by_category["In top 5"]) == ["100%"]
    assert at.button(key="quality_calibrate")  # offered, not run: the evaluation itself writes nothing
    signals = at.dataframe[0].value  # each signal's recall, and the time its ranking took a query
    assert list(signals["Signals"])[:2] == ["image only", "+ keypoints"]
    assert all(" / " in cell for cell in signals["Ranking p50 / p95 ms"])
    (chart,) = at.get("vega_lite_chart")  # the calibration: how often the first result was right, by its score
    assert "Score shown on the first result" in chart.proto.spec and "Share that was right" in chart.proto.spec
    assert any("Every held-out photo found its own product first" in s.value for s in at.success)
    if backend == "local":
        assert files_of(app_settings.vpm_data_dir) == before


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_stopped_evaluation_reports_what_it_did(app_settings, two_photo_catalog, open_page):
    from vpm.core.evaluate import Evaluation

    at = open_page(QUALITY)
    evaluation = Evaluation(two_photo_catalog, batch=2)
    evaluation.step()
    at.session_state["quality_evaluation"] = evaluation
    at.session_state["quality_stop_requested"] = True  # what the Stop button's callback sets

    at.run()

    assert not at.exception
    assert any("Stopped after 2 of 6 held-out photos" in w.value for w in at.warning)
    assert "quality_evaluation" not in at.session_state


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_catalog_of_single_photos_says_to_add_more(app_settings, seed_catalog, open_page):
    seed_catalog([("Red mug", "Kitchen", 1), ("Blue mug", "Kitchen", 2)])
    at = open_page(QUALITY)

    at.button(key="quality_start").click().run()

    assert not at.exception
    assert any("add more photos" in i.value for i in at.info)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_home_links_to_the_quality_page(app_settings, open_page):
    at = open_page("pages/home.py")

    assert "Match quality" in [link.value for link in at.page_link]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_use_this_fit_keeps_it_for_every_search_and_read_only_never_offers_it(
    app_settings, two_photo_catalog, open_page, monkeypatch
):
    at = open_page(QUALITY)
    at.button(key="quality_start").click().run()

    at.button(key="quality_calibrate").click().run()

    assert not at.exception
    assert any("Searches now score with a curve fitted on 6 held-out photos" in s.value for s in at.success)
    from vpm.core.matcher import Matcher

    assert Matcher(app_settings).calibration().score.source == "catalog"

    monkeypatch.setenv("VPM_READ_ONLY", "true")
    at = open_page(QUALITY)
    at.button(key="quality_start").click().run()
    assert not at.exception and "quality_calibrate" not in [b.key for b in at.button]


# ------------------------------------------------------------------------------------------- comparing models


@pytest.fixture(scope="module")
def tiny_dinov2_dir(tmp_path_factory):
    from tiny_clip import build_tiny_dinov2

    return build_tiny_dinov2(tmp_path_factory.mktemp("models") / "tiny-dinov2")


def cached_on_this_machine(model_dir, hub, repo_id: str) -> None:
    """`model_dir` laid out as huggingface_hub caches a download of `repo_id`."""
    import shutil

    commit = "2" * 40
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_models_picked_are_compared_side_by_side_without_touching_the_catalog(
    app_settings, two_photo_catalog, open_page, tiny_dinov2_dir, tmp_path, monkeypatch
):
    import tempfile

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cached_on_this_machine(tiny_dinov2_dir, tmp_path / "hub", "acme/tiny-dinov2")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    before = files_of(app_settings.vpm_data_dir)
    at = open_page(QUALITY)
    models = at.multiselect(key="quality_models")
    assert models.options == ["tiny-clip", "EfficientNet-Lite0 (built-in)", "tiny-dinov2"]  # never a path
    assert at.button(key="quality_compare").disabled  # one model is nothing to compare

    models.set_value([str(app_settings.vpm_model), "acme/tiny-dinov2"]).run()
    at.button(key="quality_compare").click().run()

    assert not at.exception
    summary = at.dataframe[0].value
    assert list(summary.columns) == ["Measure", "tiny-clip", "tiny-dinov2"]
    rows = dict(zip(summary["Measure"], summary.itertuples(index=False), strict=True))
    assert rows["Vectors"][1:] == ("the catalog's own", "embedded for this comparison")
    assert rows["Search by words"][1:] == ("yes", "no")
    assert all(cell.endswith("%") for cell in rows["Right product first"][1:])
    by_category = at.dataframe[1].value
    assert list(by_category["Category"]) == ["Packs"] and list(by_category["Photos"]) == [6]
    assert any("same 6 held-out photos of 3 products for every model" in c.value for c in at.caption)
    assert files_of(app_settings.vpm_data_dir) == before
    assert list(scratch.iterdir()) == []  # the other model's vectors went into a temporary folder, now gone


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_read_only_offers_no_comparison(app_settings, two_photo_catalog, open_page, monkeypatch):
    monkeypatch.setenv("VPM_READ_ONLY", "true")
    at = open_page(QUALITY)

    assert not at.exception
    assert "quality_compare" not in [b.key for b in at.button] and not at.multiselect
