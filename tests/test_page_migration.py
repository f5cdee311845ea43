"""The Migration & costs page (AppTest): local catalog -> moto S3 bucket, in-process."""

from __future__ import annotations

import io

import boto3
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import pagetools
from pagetools import button, click

from tests.conftest import BUCKET, REGION

PAGE = pagetools.PAGES / "migration.py"


@pytest.fixture(autouse=True)
def app_env(aws, tiny_clip_dir, tmp_path, monkeypatch):
    """A local catalog (S3 off) and an empty bucket named in the settings: the migration's starting point."""
    from vpm import webapp

    monkeypatch.setenv("VPM_MODEL", str(tiny_clip_dir))
    monkeypatch.setenv("VPM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("S3_BUCKET_NAME", BUCKET)
    monkeypatch.setenv("S3_REGION", REGION)
    webapp.clear_caches()
    yield
    webapp.clear_caches()


@pytest.fixture
def seeded():
    from vpm.config import load_settings
    from vpm.matcher import Matcher

    matcher = Matcher(load_settings())
    products = []
    for pid, colour in (("p1", (220, 40, 40)), ("p2", (40, 200, 60))):
        buf = io.BytesIO()
        Image.new("RGB", (48, 32), colour).save(buf, "JPEG")
        products.append(matcher.add_product(buf.getvalue(), f"{pid}.jpg", name=pid, category="Test", product_id=pid))
    return products


def bucket_keys() -> list[str]:
    resp = boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BUCKET)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def run_page() -> AppTest:
    return pagetools.run_page(PAGE)


def text_input(at: AppTest, label: str):
    return next(t for t in at.text_input if t.label == label)


def texts(at: AppTest) -> str:
    elements = [*at.markdown, *at.caption, *at.success, *at.warning, *at.error, *at.info]
    return pagetools.shown("\n".join(m.value for m in elements))


def test_check_against_a_reachable_bucket_passes(seeded):
    at = click(run_page(), "Check")
    assert not at.error
    assert any("Ready to migrate" in s.value for s in [*at.success, *at.warning])
    shown = texts(at)
    assert "**bucket exists** · pass" in shown and "**write probe** · pass" in shown
    assert "2 products in local folder" in shown
    assert bucket_keys() == []  # the probe was removed


def test_check_against_a_missing_bucket_shows_the_failure_and_the_fix(seeded):
    at = run_page()
    text_input(at, "Bucket").input("no-such-bucket-here")
    click(at, "Check")
    assert any("Not ready" in e.value for e in at.error)
    shown = texts(at)
    assert "**bucket exists** · fail" in shown
    assert "bucket not found: s3://no-such-bucket-here" in shown
    assert "aws s3 mb s3://no-such-bucket-here" in shown


def test_secrets_are_never_displayed(seeded, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value-123")
    at = run_page()
    password = next(t for t in at.text_input if t.label == "AWS secret access key")
    password.input("typed-secret-456")
    click(at, "Check")
    everything = rendered(at)
    assert "Credentials: AWS keys set in your configuration" in everything  # said, not shown
    assert "super-secret-value-123" not in everything
    assert "typed-secret-456" not in everything


def rendered(at: AppTest) -> str:
    """Every element the page sent to the browser, as protobuf text (labels, values, defaults, bodies)."""
    out = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(out)


def test_preview_lists_every_file_and_writes_nothing(seeded):
    p1, p2 = seeded
    at = run_page()
    assert button(at, "Migrate").disabled  # nothing previewed yet
    click(at, "Preview")

    plan = at.dataframe[0].value
    assert {p1.image_key, p1.thumbnail_key, p2.image_key, p2.thumbnail_key} <= set(plan["key"])
    assert set(plan["action"]) == {"upload"}
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Upload"] == str(len(plan)) and metrics["Conflicts"] == "0"
    assert "products.json**: create" in texts(at)
    assert bucket_keys() == []
    assert not button(at, "Migrate").disabled


def test_migrate_after_preview_uploads_and_reports(seeded):
    p1, p2 = seeded
    at = click(run_page(), "Preview")
    planned = len(at.dataframe[0].value)
    click(at, "Migrate")

    assert any("done and verified" in s.value for s in at.success)
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Uploaded"], metrics["Failed"], metrics["Conflicts"]) == (str(planned), "0", "0")
    keys = bucket_keys()
    for key in (p1.image_key, p1.thumbnail_key, p2.image_key, "metadata/products.json"):
        assert key in keys
    assert "**bucket catalog complete**" in texts(at)
    assert button(at, "Migrate").disabled  # the plan was used; a new preview is needed

    click(at, "Preview")  # a second run has nothing left to upload
    assert set(at.dataframe[0].value["action"]) == {"skip"}


def test_changing_settings_after_the_preview_disables_migrate(seeded):
    at = click(run_page(), "Preview")
    assert not button(at, "Migrate").disabled
    text_input(at, "Image prefix").input("photos/").run()
    assert button(at, "Migrate").disabled
    assert any("settings changed since the preview" in w.value for w in at.warning)
    text_input(at, "Image prefix").input("images/").run()
    assert not button(at, "Migrate").disabled


def test_cost_panel_shows_numbers_and_follows_the_assumptions(seeded):
    at = run_page()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Migration, once"].startswith("$") and metrics["Every month"].startswith("$")
    assert "2 images" in texts(at)
    costs = at.dataframe[0].value  # no preview yet, so the only table is the cost breakdown
    assert "S3 GET requests: image views" in set(costs["item"])

    next(t for t in at.toggle if "CDN" in t.label).set_value(True).run()
    assert not at.exception
    items = set(at.dataframe[0].value["item"])
    assert "CloudFront HTTPS requests" in items and "S3 GET requests: image views" not in items
    searches = next(n for n in at.number_input if n.label == "Searches a month")
    searches.set_value(50_000_000).run()
    assert {m.label: m.value for m in at.metric}["Every month"] != metrics["Every month"]
