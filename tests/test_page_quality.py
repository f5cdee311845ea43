"""Match quality page: evaluate the catalog with a progress bar, stop it, show the report; never write."""

from __future__ import annotations

import pytest

from synthetic import shopper_view, textured, to_bytes

QUALITY = "pages/quality.py"


@pytest.fixture
def two_photo_catalog(app_settings):
    from vpm.matcher import Matcher

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
    assert any("Every held-out photo found its own product first" in s.value for s in at.success)
    if backend == "local":
        assert files_of(app_settings.vpm_data_dir) == before


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_stopped_evaluation_reports_what_it_did(app_settings, two_photo_catalog, open_page):
    from vpm.evaluate import Evaluation

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
    from vpm.matcher import Matcher

    assert Matcher(app_settings).calibration().score.source == "catalog"

    monkeypatch.setenv("VPM_READ_ONLY", "true")
    at = open_page(QUALITY)
    at.button(key="quality_start").click().run()
    assert not at.exception and "quality_calibrate" not in [b.key for b in at.button]
