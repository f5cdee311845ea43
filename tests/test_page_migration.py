"""The Migration & costs page (AppTest): local catalog -> a bucket on moto's HTTP server (LanceDB's own client
writes the bucket's tables), in-process."""

from __future__ import annotations

import io

import boto3
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import pagetools
from conftest import REGION
from fakes import ColourMeanEmbedder
from pagetools import button, click

PAGE = pagetools.PAGES / "migration.py"


@pytest.fixture(autouse=True)
def app_env(server_bucket, tmp_path, monkeypatch):
    """A local catalog (S3 off) and an empty bucket named in the settings: the migration's starting point."""
    from vpm.backends import engine
    from vpm.faces import webapp

    endpoint, bucket = server_bucket
    monkeypatch.setenv("VPM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("S3_BUCKET_NAME", bucket)
    monkeypatch.setenv("S3_REGION", REGION)
    monkeypatch.setenv("S3_ENDPOINT_URL", endpoint)
    webapp.clear_caches()
    yield endpoint, bucket
    webapp.clear_caches()
    engine.forget()


@pytest.fixture
def seeded():
    """Two products with real photos, embedded by the instant ColourMeanEmbedder (the page loads no model)."""
    from vpm.core.config import load_settings
    from vpm.core.matcher import Matcher

    matcher = Matcher(load_settings(), embedder=ColourMeanEmbedder())
    products = []
    for pid, colour in (("p1", (220, 40, 40)), ("p2", (40, 200, 60))):
        buf = io.BytesIO()
        Image.new("RGB", (48, 32), colour).save(buf, "JPEG")
        products.append(matcher.add_product(buf.getvalue(), f"{pid}.jpg", name=pid, category="Test", product_id=pid))
    return products


@pytest.fixture
def bucket_keys(app_env):
    """`bucket_keys() -> [key, ...]`: what the bucket holds now."""
    endpoint, bucket = app_env

    def keys() -> list[str]:
        resp = boto3.client("s3", region_name=REGION, endpoint_url=endpoint).list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in resp.get("Contents", []))

    return keys


def run_page() -> AppTest:
    return pagetools.run_page(PAGE)


def text_input(at: AppTest, label: str):
    return next(t for t in at.text_input if t.label == label)


def texts(at: AppTest) -> str:
    elements = [*at.markdown, *at.caption, *at.success, *at.warning, *at.error, *at.info]
    return pagetools.shown("\n".join(m.value for m in elements))


def test_check_against_a_reachable_bucket_passes(seeded, bucket_keys):
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
    assert "bucket 'no-such-bucket-here' does not exist in us-east-1" in shown
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


def test_preview_lists_every_file_and_writes_nothing(seeded, bucket_keys):
    p1, p2 = seeded
    at = run_page()
    assert button(at, "Migrate").disabled  # nothing previewed yet
    click(at, "Preview")

    plan = at.dataframe[0].value
    assert {p1.image_key, p1.thumbnail_key, p2.image_key, p2.thumbnail_key} <= set(plan["key"])
    assert set(plan["action"]) == {"upload"}
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Upload"] == str(len(plan)) and metrics["Conflicts"] == "0"
    shown = texts(at)
    assert "**Products**: write: 2 to add" in shown
    assert "**Vectors**: fake-colour: 2 to copy" in shown
    assert bucket_keys() == []  # no file, and no table either
    assert not button(at, "Migrate").disabled


def test_preview_without_credentials_shows_the_local_plan_and_migrate_stays_off(seeded, bucket_keys, monkeypatch):
    """Deciding whether to move to S3 needs no AWS account: the plan file by file, its bytes and its cost."""
    p1, p2 = seeded
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    at = click(run_page(), "Preview")

    assert not at.error
    plan = at.dataframe[0].value
    assert {p1.image_key, p1.thumbnail_key, p2.image_key, p2.thumbnail_key} == set(plan["key"])
    assert set(plan["action"]) == {"upload"}
    assert {m.label: m.value for m in at.metric}["Upload"] == "4"
    shown = texts(at)
    assert "**Products**: write: 2 to add" in shown and "**Cost**: migration $" in shown
    assert any("No AWS credentials found, so this plan is made from the local catalog alone" in pagetools.shown(w.value)
               and "not checked until credentials are set" in pagetools.shown(w.value) for w in at.warning)
    assert button(at, "Migrate").disabled
    assert "Set AWS credentials" in shown
    assert bucket_keys() == []


def test_migrate_after_preview_uploads_and_reports(seeded, bucket_keys):
    p1, p2 = seeded
    at = click(run_page(), "Preview")
    planned = len(at.dataframe[0].value)
    click(at, "Migrate")

    assert any("done and verified" in s.value for s in at.success)
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Uploaded"], metrics["Failed"], metrics["Conflicts"]) == (str(planned), "0", "0")
    keys = bucket_keys()
    for key in (p1.image_key, p1.thumbnail_key, p2.image_key):
        assert key in keys
    assert any(k.startswith("metadata/products.lance/") for k in keys)
    assert any(k.startswith("metadata/vectors-fake-colour.lance/") for k in keys)
    shown = texts(at)
    assert "**bucket catalog complete**" in shown and "**fake-colour vectors**" in shown
    assert "**Products**: written: 2 added" in shown
    assert button(at, "Migrate").disabled  # the plan was used; a new preview is needed

    click(at, "Preview")  # a second run has nothing left to upload or write
    assert set(at.dataframe[0].value["action"]) == {"skip"}
    assert "Nothing to upload" in texts(at)


def test_changing_settings_after_the_preview_disables_migrate(seeded):
    at = click(run_page(), "Preview")
    assert not button(at, "Migrate").disabled
    text_input(at, "Image prefix").input("photos/").run()
    assert button(at, "Migrate").disabled
    assert any("settings changed since the preview" in w.value for w in at.warning)
    text_input(at, "Image prefix").input("images/").run()
    assert not button(at, "Migrate").disabled


def cost_lines(at: AppTest) -> list[str]:
    """The cost breakdown's lines, "**item** · $amount when", as the page writes them (escaped)."""
    return [pagetools.shown(m.value) for m in at.markdown if pagetools.shown(m.value).startswith("**") and " · $" in m.value]


def test_cost_panel_shows_numbers_and_follows_the_assumptions(seeded):
    at = run_page()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Migration, once"].startswith("$") and metrics["Every month"].startswith("$")
    assert "2 images" in texts(at)
    lines = cost_lines(at)
    assert any(line.startswith("**S3 GET requests: image views** · $") for line in lines)
    quantities = [c.value.split(" · ")[0] for c in at.caption if " · " in c.value]
    assert "1 request" in quantities and "10,000 requests" in quantities
    assert not [q for q in quantities if "e+" in q]

    next(t for t in at.toggle if "CDN" in t.label).set_value(True).run()
    assert not at.exception
    lines = " ".join(cost_lines(at))
    assert "CloudFront HTTPS requests" in lines and "S3 GET requests: image views" not in lines
    searches = next(n for n in at.number_input if n.label == "Searches a month")
    searches.set_value(50_000_000).run()
    assert {m.label: m.value for m in at.metric}["Every month"] != metrics["Every month"]


def test_ticking_overwrite_after_the_preview_disables_migrate(seeded):
    at = click(run_page(), "Preview")
    overwrite = next(c for c in at.checkbox if c.label.startswith("Replace bucket files"))
    overwrite.check().run()
    assert button(at, "Migrate").disabled  # --overwrite is part of what was previewed
    overwrite.uncheck().run()
    assert not button(at, "Migrate").disabled


def test_the_cost_panel_measures_the_same_catalog_before_and_after_the_preview(seeded):
    at = run_page()
    before = next(m.value for m in at.markdown if m.value.startswith("Catalog ("))
    click(at, "Preview")
    after = next(m.value for m in at.markdown if m.value.startswith("Catalog ("))
    assert "the local folder" in before and "the previewed migration" in after
    assert before.partition("):")[2] == after.partition("):")[2]  # the same counts and sizes


def test_without_a_bucket_name_the_page_draws_and_preview_asks_for_the_field(seeded, monkeypatch):
    monkeypatch.delenv("S3_BUCKET_NAME")
    at = run_page()
    assert button(at, "Migrate").disabled
    click(at, "Preview")
    assert [pagetools.shown(e.value) for e in at.error] == [
        "Type the name of the target bucket in the Bucket field above, then try again."
    ]


def test_with_no_s3_settings_check_and_preview_use_the_fields_on_the_page(seeded, app_env, monkeypatch, bucket_keys):
    endpoint, bucket = app_env
    for name in ("S3_BUCKET_NAME", "S3_ENDPOINT_URL", "S3_REGION"):
        monkeypatch.delenv(name)
    at = run_page()
    text_input(at, "Bucket").input(bucket)
    text_input(at, "Endpoint URL (only for S3-compatible services)").input(endpoint)

    click(at, "Check")
    assert any("Ready to migrate" in s.value for s in [*at.success, *at.warning]), texts(at)
    assert ".env" not in texts(at)
    click(at, "Preview")
    assert set(at.dataframe[0].value["action"]) == {"upload"}
    click(at, "Migrate")
    assert any("done and verified" in s.value for s in at.success)
    assert "set `S3_ENABLED=true`" in texts(at)  # S3 is off: switching it on is the next step


def test_migrating_into_the_bucket_the_app_already_serves_does_not_ask_to_switch_s3_on(seeded, monkeypatch):
    at = run_page()  # the local catalog is read before S3 is switched on in this process...
    monkeypatch.setenv("S3_ENABLED", "true")  # ...and the app serves from the bucket it migrates into
    from vpm.faces import webapp

    webapp.clear_caches()
    at.run()
    click(at, "Preview")
    click(at, "Migrate")
    assert any("done and verified" in s.value for s in at.success)
    shown = texts(at)
    assert "S3_ENABLED" not in shown and "restart" not in shown
    assert "The app already serves the catalog from this bucket" in shown


def test_the_cost_panel_says_what_the_files_beside_the_photos_are(seeded):
    """Not "N other objects": the catalog's tables by name, and no products.json (the catalog is tables now)."""
    at = run_page()
    shown = texts(at)
    assert "files of the catalog's tables and calibration (" in shown and "products " in shown
    assert "vectors " in shown and "other object" not in shown
    notes = pagetools.shown(" ".join(c.value for c in at.caption))
    assert "products.json" not in notes, notes
    assert "LanceDB tables (products, vectors, keypoints, package text)" in notes


def system_metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric if m.label.startswith("Whole system")}


def test_the_whole_system_at_a_typed_size_matches_the_command(seeded):
    """The page shows what `vpm costs --products 10M ...` prints, for the size and assumptions on the page."""
    from vpm.core.capacity import SystemSize, system_estimate
    from vpm.core.costs import format_usd

    at = run_page()
    assert system_metrics(at) == {}  # nothing typed: nothing estimated
    text_input(at, "Products").input("10M").run()
    next(n for n in at.number_input if n.label == "Photos per product").set_value(3).run()
    next(n for n in at.number_input if n.label == "Searches a month").set_value(2_000_000).run()
    assert not at.exception and not at.error
    expected = system_estimate(SystemSize(products=10_000_000, photos_per_product=3, searches_per_month=2_000_000))
    assert system_metrics(at) == {"Whole system, every month": format_usd(expected.bill.monthly_total),
                                  "Whole system, once": format_usd(expected.bill.one_time_total)}
    shown = texts(at)
    assert "**10,000,000 products**, 30,000,000 photos" in shown
    assert "**Full re-embed: compute** · $" in shown and "**Search replicas: c7i.large" in shown
    assert "not measured" in shown and "extrapolated" in shown  # each figure says how it was reached
    assert any("Breaks at this size" in w.value for w in at.warning)


@pytest.mark.parametrize("typed, message", [
    ("lots", "Products: 'lots' is not a number"),
    ("-5", "Products must be at least 1, got -5"),
    ("1e30", "Products: 1e30 is more than this model covers"),
])
def test_a_size_the_model_cannot_use_gets_a_clear_message(seeded, typed, message):
    at = run_page()
    text_input(at, "Products").input(typed).run()
    assert not at.exception
    errors = [pagetools.shown(e.value) for e in at.error]
    assert len(errors) == 1 and message in errors[0], errors
    assert system_metrics(at) == {}
    assert {m.label for m in at.metric} >= {"Migration, once", "Every month"}  # the catalog's own estimate stays
