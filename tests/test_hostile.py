"""What a hostile or racing client sends must not corrupt the catalog or delete someone else's files.

Races run on the local folder and on S3 through moto's HTTP server (the in-process mock is not thread-safe).
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vpm.core.catalog import CatalogCorrupt, InvalidProduct, validate_product
from vpm.core.config import load_settings
from vpm.core.matcher import Matcher
from vpm.core.presentation import code, plain
from vpm.faces.api import create_app

from conftest import make_product_photo

REPO_ROOT = Path(__file__).resolve().parents[1]
HOSTILE_NAME = "[click](https://evil.example) ![](https://tracker.example/p.gif)"


@pytest.fixture(params=["local", "s3"])
def racing_settings(request, tmp_path, monkeypatch, tiny_clip_dir):
    """Settings for threads that race: a local folder, or a bucket on moto's HTTP server."""
    monkeypatch.setenv("VPM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VPM_MODEL", str(tiny_clip_dir))
    monkeypatch.setenv("VPM_DEVICE", "cpu")
    if request.param == "s3":
        endpoint, bucket = request.getfixturevalue("server_bucket")
        monkeypatch.setenv("S3_ENABLED", "true")
        monkeypatch.setenv("S3_BUCKET_NAME", bucket)
        monkeypatch.setenv("S3_ENDPOINT_URL", endpoint)
    return load_settings()


def png(seed: int) -> bytes:
    return make_product_photo(seed)


# ------------------------------------------------------------------------------- 2. races on one id


def test_ten_uploads_with_one_id_leave_the_winners_files_intact(racing_settings):
    matcher = Matcher(racing_settings)
    client = TestClient(create_app(racing_settings, matcher), raise_server_exceptions=False)
    photos = [png(100 + i) for i in range(10)]
    matcher.embedder  # load the model once, so the racers race on storage, not on the model load
    start = threading.Barrier(10)

    def upload(i: int):
        start.wait()
        files = {"image": (f"racer{i}.png", photos[i], "image/png")}
        return client.post("/api/upload", files=files, data={"name": f"Racer {i}", "category": "Race", "id": "same-id"})

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(upload, range(10)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 9, [r.text for r in responses]
    winner = next(r.json()["product"] for r in responses if r.status_code == 201)
    product = matcher.get_product("same-id")
    assert product.name == winner["name"]
    winner_bytes = photos[int(winner["name"].split()[-1])]
    assert matcher.storage.get(product.image_key) == winner_bytes
    thumbnail = Image.open(io.BytesIO(matcher.storage.get(product.thumbnail_key)))
    assert thumbnail.format == "WEBP"
    # Nothing of the nine losers is left behind.
    image_keys = {o.key for o in matcher.storage.iter_objects(racing_settings.s3_image_prefix)}
    thumbnail_keys = {o.key for o in matcher.storage.iter_objects(racing_settings.s3_thumbnail_prefix)}
    assert image_keys == {product.image_key}
    assert thumbnail_keys == {product.thumbnail_key}


def test_two_uploads_of_one_id_never_share_storage_keys(racing_settings):
    from vpm.core import photos

    matcher = Matcher(racing_settings)
    image = matcher.decode(png(1), "a.png")
    first = photos.prepare(image, "same", "images/", "thumbnails/").photo
    second = photos.prepare(image, "same", "images/", "thumbnails/").photo
    assert first.key != second.key
    assert first.thumbnail_key != second.thumbnail_key


def test_concurrent_cli_adds_with_one_id_keep_the_winners_image(tmp_path, tiny_clip_dir):
    """The CLI path: separate processes racing on a local catalog."""
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "VPM_DATA_DIR": str(tmp_path / "data"),
        "VPM_MODEL": str(tiny_clip_dir), "VPM_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT),
    }
    photos = []
    for i in range(4):
        path = tmp_path / f"racer{i}.png"
        path.write_bytes(png(200 + i))
        photos.append(path)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "vpm", "add", str(p), "--name", f"Racer {i}", "--category", "Race",
             "--id", "same-id", "--json"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i, p in enumerate(photos)
    ]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in processes]
    codes = sorted(code for code, _out, _err in results)
    assert codes == [0, 1, 1, 1], results
    assert all("already exists" in err for code, _out, err in results if code == 1)
    winner = next(json.loads(out) for code, out, _err in results if code == 0)
    data = tmp_path / "data"
    stored = (data / winner["image_key"]).read_bytes()
    assert stored == photos[int(winner["name"].split()[-1])].read_bytes()
    assert sorted(p.name for p in (data / "images").iterdir()) == [Path(winner["image_key"]).name]
    assert sorted(p.name for p in (data / "thumbnails").iterdir()) == [Path(winner["thumbnail_key"]).name]


# ---------------------------------------------------------------------------------- 3. non-finite prices


@pytest.mark.parametrize("price", [float("inf"), float("-inf"), float("nan"), 1e309])
def test_a_non_finite_price_is_refused(price):
    with pytest.raises(InvalidProduct, match="price"):
        validate_product(name="Mug", category="Kitchen", price=price)


@pytest.mark.parametrize("price", ["1e309", "inf", "NaN"])
def test_the_api_refuses_a_non_finite_price_and_stores_nothing(search_settings, price):
    matcher = Matcher(search_settings)
    client = TestClient(create_app(search_settings, matcher), raise_server_exceptions=False)
    files = {"image": ("mug.png", png(3), "image/png")}
    response = client.post("/api/upload", files=files, data={"name": "Mug", "category": "Kitchen", "price": price})
    assert response.status_code == 422, response.text
    assert "price" in response.json()["error"].lower()
    assert matcher.count_products() == 0
    assert list(matcher.storage.iter_objects(search_settings.s3_image_prefix)) == []


def test_non_finite_attributes_are_refused():
    with pytest.raises(InvalidProduct, match="attributes"):
        validate_product(name="Mug", category="Kitchen", attributes={"weight": float("inf")})


def test_a_catalog_holding_infinity_loads_that_product_without_a_price(settings, caplog):
    """products.json of the previous release may hold Infinity/NaN: it upgrades, those prices become none."""
    matcher = Matcher(settings)
    body = (
        '{"schema": 1, "version": 3, "products": ['
        '{"id": "p1", "name": "Mug", "category": "Kitchen", "price": Infinity},'
        '{"id": "p2", "name": "Cup", "category": "Kitchen", "price": NaN},'
        '{"id": "p3", "name": "Pan", "category": "Kitchen", "price": 12.5}]}'
    )
    matcher.storage.put(settings.s3_metadata_key, body.encode(), "application/json")
    with caplog.at_level(logging.WARNING):
        products = matcher.catalog.get_many(["p1", "p2", "p3"])
    assert products["p1"].price is None and products["p2"].price is None and products["p3"].price == 12.5
    assert "'p1'" in caplog.text and "'p2'" in caplog.text


def test_after_reading_infinity_exports_are_strict_json(settings, tmp_path):
    matcher = Matcher(settings)
    matcher.storage.put(
        settings.s3_metadata_key,
        b'{"schema": 1, "version": 1, "products": [{"id": "p1", "name": "Mug", "category": "K", "price": Infinity}]}',
    )
    matcher.update_product("p1", name="Mug 2")
    out = io.StringIO()
    matcher.export_json(out)
    document = json.loads(out.getvalue(), parse_constant=_refuse_constant)
    assert document["products"][0]["price"] is None and document["products"][0]["name"] == "Mug 2"


def _refuse_constant(name: str):
    raise AssertionError(f"the document holds the non-JSON constant {name}")


def test_vpm_list_json_is_strict_json_after_a_refused_infinite_price(tmp_path, tiny_clip_dir, search_settings):
    matcher = Matcher(search_settings)
    with pytest.raises(InvalidProduct):
        matcher.add_product(png(4), "mug.png", name="Mug", category="Kitchen", price=float("inf"))
    matcher.add_product(png(5), "cup.png", name="Cup", category="Kitchen", price=3.0)
    import contextlib

    from vpm.faces.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["list", "--json"]) == 0
    listed = json.loads(out.getvalue(), parse_constant=_refuse_constant)
    assert [p["name"] for p in listed["items"]] == ["Cup"]


# ------------------------------------------------------------------------------ 4. control characters


@pytest.mark.parametrize(
    "given, stored",
    [
        ("Mug\nCRITICAL vpm: server compromised", "Mug CRITICAL vpm: server compromised"),
        ("Mug\x1b[2J\x1b[31mRED", "Mug[2J[31mRED"),
        ("Be\x07ll\x00Null\x7f", "BellNull"),
        ("Tab\tbed\r\nname", "Tab bed name"),
        ("right\u202eto-left", "rightto-left"),
    ],
)
def test_control_characters_in_names_and_categories_are_stripped(given, stored):
    product = validate_product(name=given, category=given)
    assert product.name == stored and product.category == stored


def test_a_name_of_only_control_characters_is_refused():
    with pytest.raises(InvalidProduct, match="name"):
        validate_product(name="\x1b\x07\n", category="Kitchen")


def test_descriptions_keep_line_breaks_but_lose_escape_sequences():
    product = validate_product(name="Mug", category="K", description="Line one\nLine two\x1b[31m red\x07")
    assert product.description == "Line one\nLine two[31m red"


def test_a_newline_in_an_uploaded_name_cannot_forge_a_log_line(search_settings, caplog):
    matcher = Matcher(search_settings)
    with caplog.at_level(logging.INFO, logger="vpm"):
        matcher.add_product(png(6), "mug.png", name="Mug\nCRITICAL forged", category="Kitchen")
    assert not any(line.startswith("CRITICAL forged") for line in caplog.text.splitlines())
    assert all("\n" not in record.getMessage() for record in caplog.records)


def test_vpm_list_never_prints_an_escape_sequence_stored_by_an_older_version(settings, capsys):
    from vpm.faces.cli import main

    storage = Matcher(settings).storage
    storage.put(
        settings.s3_metadata_key,
        json.dumps({"schema": 1, "version": 1, "products": [
            {"id": "p1", "name": "Evil\x1b]0;pwned\x07\x1b[2J", "category": "K\x1b[31m"}]}).encode(),
    )
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "Evil" in out


# ------------------------------------------------------------------------------- 5. names are plain text


def test_plain_escapes_every_markdown_construct():
    escaped = plain(HOSTILE_NAME + " :red[x] $x$ **b** <b>")
    for construct in ("](", "![", ":red[", "**", "<b>"):
        assert construct not in escaped


def test_code_cannot_be_closed_early_by_a_backtick():
    assert code("a`b") == "`` a`b ``"
    assert code("x```y").startswith("````")


def test_the_catalog_and_search_pages_show_a_hostile_name_as_plain_text(
    open_page, seed_catalog, app_settings
):
    seed_catalog([(HOSTILE_NAME, "[cat](https://evil.example)", 1)])
    at = open_page("pages/catalog.py")
    assert not at.exception
    rendered = [m.value for m in at.markdown] + [c.value for c in at.caption]
    assert not any("](https://evil.example)" in text or "![](" in text for text in rendered), rendered
    # The card's name is the escaped text, so it reads exactly as typed.
    assert any(plain(HOSTILE_NAME) in text for text in rendered) or any(
        plain(HOSTILE_NAME) in b.label for b in at.button
    )


def test_adding_a_product_on_a_corrupt_catalog_leaves_nothing_behind(search_settings):
    matcher = Matcher(search_settings)
    matcher.storage.put(search_settings.s3_metadata_key, b"{not json")
    before = {o.key for o in matcher.storage.iter_objects("")}
    with pytest.raises(CatalogCorrupt):
        matcher.add_product(png(7), "mug.png", name="Mug", category="Kitchen")
    after = {o.key for o in matcher.storage.iter_objects("")}
    assert after == before


# ------------------------------------------------------------------------ bugs are logged, never shown


def test_a_bug_in_the_cli_is_logged_with_an_id_and_shown_without_its_text(search_settings, monkeypatch, capsys,
                                                                          caplog):
    from vpm.faces import cli

    def broken(args):
        raise RuntimeError("internal detail at /srv/secret/path")

    monkeypatch.setattr(cli, "cmd_list", broken)  # the parser looks the command up when it is built
    with caplog.at_level(logging.ERROR):
        assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    incident = err.split("(error ")[1].split(")")[0]
    assert "internal detail" not in err and "/srv/secret" not in err
    assert incident in caplog.text and "internal detail" in caplog.text  # the traceback is in the log


def test_a_bug_on_a_page_is_shown_as_an_id_not_as_its_text(open_page, seed_catalog, monkeypatch, caplog):
    from vpm.core.matcher import Matcher

    seed_catalog([("Red mug", "Kitchen", 1)])

    def broken(self, **kwargs):
        raise RuntimeError("internal detail at /srv/secret/path")

    monkeypatch.setattr(Matcher, "page_products", broken)
    with caplog.at_level(logging.ERROR):
        at = open_page("pages/catalog.py")
    assert not at.exception
    text = plain_text(" ".join(e.value for e in at.error))
    assert "something went wrong (error " in text and "internal detail" not in text and "/srv/secret" not in text
    incident = text.split("(error ")[1].split(")")[0]
    assert incident in caplog.text


def plain_text(markdown: str) -> str:
    from pagetools import shown

    return shown(markdown)
