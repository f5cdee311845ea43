"""A damaged products table, on a local folder and on a bucket (moto's HTTP server), through every face.

One 4 KB garbage file as the newest version of `products.lance`, or a data file of it gone: every command and the
API refuse with a message that says what is wrong (and, for the version file, the way back) and names no server
path; nothing in the catalog changes, however often it is tried; doing what the message says brings it back.
The interrupted first-release upgrade is killed on both backends in tests/test_upgrade.py, and table damage at the
store level is in tests/test_catalog_store.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from vpm.backends import engine
from vpm.core.matcher import Matcher
from vpm.faces.api import create_app

from conftest import make_product_photo

REPO = Path(__file__).resolve().parent.parent
TABLE = "products.lance/"


def vpm(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "vpm", *map(str, args)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def objects(matcher: Matcher) -> dict[str, str]:
    """Every object of the catalog (images, thumbnails, tables) with its ETag: what "nothing changed" compares."""
    return {o.key: o.etag for o in matcher.storage.iter_objects("")}


def version(key: str) -> int:
    """A Lance version file's version: "3.manifest", or u64::MAX - version in 20 digits (the newer naming)."""
    stem = key.rpartition("/")[2].removesuffix(".manifest")
    return 2**64 - 1 - int(stem) if len(stem) == 20 else int(stem)


@pytest.fixture
def three_adds(search_settings) -> Matcher:
    """Three products added one at a time (three versions of the products table), then a new process's view."""
    matcher = Matcher(search_settings)
    for seed, name in ((1, "Red mug"), (2, "Desk lamp"), (3, "Trail shoe")):
        matcher.add_product(make_product_photo(seed), f"{seed}.png", name=name, category="Things")
    engine.forget()
    return Matcher(search_settings)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


def assert_no_server_path(text: str, tmp_path: Path) -> None:
    """What an API client reads names nothing of the server's disk (a bucket's keys are the catalog's own)."""
    assert str(tmp_path).lstrip("/") not in text and "/root/" not in text and ".rs:" not in text, text


def test_a_garbage_newest_version_file_is_refused_everywhere_and_named_with_the_way_back(three_adds, maintenance_idle,
                                                                                        search_settings,
                                                                                        tmp_path):
    prefix = search_settings.metadata_prefix
    manifests = sorted((o.key for o in three_adds.storage.iter_objects(prefix + TABLE + "_versions/")
                        if o.key.endswith(".manifest")), key=version)
    newest = manifests[-1]
    three_adds.storage.put(newest, b"\x07" * 4096)
    before = objects(three_adds)
    photo = tmp_path / "new" / "new.png"
    photo.parent.mkdir()
    photo.write_bytes(make_product_photo(9))

    listed = one_line_error(vpm(tmp_path, "list"))
    added = one_line_error(vpm(tmp_path, "add", photo, "--name", "New", "--category", "Things"))
    imported = one_line_error(vpm(tmp_path, "import", photo.parent))

    for message in (listed, added, imported):
        assert f"its newest version file {newest} (version {version(newest)}) cannot be read" in message
        assert "the older versions are intact" in message
        assert "move that one file aside" in message or "vpm check --repair" in message  # the way back
    engine.forget()
    client = TestClient(create_app(search_settings, Matcher(search_settings)), raise_server_exceptions=False)
    response = client.get("/api/products")
    assert response.status_code == 503, response.text
    assert f"its newest version file {newest} " in response.json()["error"]
    assert_no_server_path(response.text, tmp_path)
    assert objects(three_adds) == before  # refused three ways: nothing written, nothing rewritten

    three_adds.storage.delete(newest)  # what the message says (moved aside: a copy kept elsewhere)
    back = vpm(tmp_path, "list", "--json")
    assert back.returncode == 0, back.stderr[-3000:]
    assert '"total": 2' in back.stdout and "Red mug" in back.stdout and "Desk lamp" in back.stdout


def test_a_missing_data_file_is_refused_everywhere_naming_no_server_path(three_adds, maintenance_idle, search_settings,
                                                                        tmp_path):
    data = [o.key for o in three_adds.storage.iter_objects(search_settings.metadata_prefix + TABLE + "data/")]
    assert data
    for key in data:
        three_adds.storage.delete(key)
    before = objects(three_adds)
    photo = tmp_path / "new.png"
    photo.write_bytes(make_product_photo(9))

    listed = one_line_error(vpm(tmp_path, "list"))
    added = one_line_error(vpm(tmp_path, "add", photo, "--name", "New", "--category", "Things"))

    for message in (listed, added):  # the command line runs where the catalog is: naming its folder helps
        assert "cannot read the products table" in message, message
    engine.forget()
    client = TestClient(create_app(search_settings, Matcher(search_settings)), raise_server_exceptions=False)
    response = client.get("/api/products")
    assert response.status_code == 503, response.text
    assert "cannot read the products table" in response.json()["error"]
    assert_no_server_path(response.text, tmp_path)
    assert objects(three_adds) == before
