"""A catalog written by the first release (products.json + .npz vectors) is upgraded in place on first start.

The fixture in tests/fixtures/legacy-catalog was written by that release's own code (see its README); here it
is copied into a fresh local folder or bucket and opened with today's Matcher.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vpm.backends import engine
from vpm.core import facade_parts
from vpm.core.catalog import CatalogCorrupt
from vpm.core.matcher import Matcher

from conftest import CountingEmbedder

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "legacy-catalog"
IDS = ["red-mug", "blue-mug", "trail-shoe", "desk-lamp"]


@pytest.fixture
def legacy(settings):
    """The fixture's files under the parametrised backend; returns {key: bytes} of what was copied."""
    from vpm.core.storage import make_storage

    storage = make_storage(settings)
    copied = {}
    for path in sorted(FIXTURE.rglob("*")):
        if path.is_file() and path.name != "README.md":
            key = path.relative_to(FIXTURE).as_posix()
            storage.put(key, path.read_bytes())
            copied[key] = path.read_bytes()
    facade_parts._upgraded.clear()  # a fresh process, as far as the upgrade is concerned
    yield copied
    engine.forget()


@pytest.fixture
def offline_model():
    """The built-in model the fixture's vectors were made with, counting what it embeds."""
    from vpm.models.embeddings import LEGACY_DESCRIPTOR, EfficientNetEmbedder, load_embedder

    built_in = load_embedder("efficientnet-lite0", "cpu")  # the fixture's vectors came from the first descriptor
    return CountingEmbedder(EfficientNetEmbedder(built_in._network, "cpu", descriptor=LEGACY_DESCRIPTOR))


def test_every_product_is_upgraded_with_its_photo_and_fields(settings, legacy):
    matcher = Matcher(settings, embedder=None)
    products = matcher.catalog.get_many(IDS)
    assert sorted(products) == sorted(IDS)
    mug = products["red-mug"]
    assert (mug.name, mug.category, mug.price, mug.description) == ("Red mug", "Kitchen", 12.5, "A red mug")
    assert [p.key for p in mug.photos] == ["images/red-mug.png"]
    assert mug.photos[0].thumbnail_key == "thumbnails/red-mug.webp"
    assert mug.created_at.startswith("2026-")
    assert matcher.count_products() == 4


def test_the_upgrade_reuses_the_cached_vectors_and_embeds_nothing(settings, legacy, offline_model):
    matcher = Matcher(settings, embedder=offline_model)
    photo = legacy["images/trail-shoe.png"]
    response = matcher.search_image(photo, "query.png", threshold=0.0)
    assert response.results[0].product.id == "trail-shoe"
    assert response.results[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert offline_model.images_embedded == 1  # the query only: every catalog vector came from the .npz
    assert matcher.index_status().missing == 0


def test_the_old_files_are_left_exactly_as_they_were(settings, legacy):
    Matcher(settings).catalog.count()
    from vpm.core.storage import make_storage

    storage = make_storage(settings)
    for key, data in legacy.items():
        assert storage.get(key) == data, key
    marker = json.loads(storage.get("metadata/products.json.upgraded"))
    assert marker["products"] == 4 and marker["vectors"] == {"efficientnet-lite0": 4}


def test_the_upgrade_runs_once(settings, legacy):
    matcher = Matcher(settings)
    matcher.delete_product("desk-lamp")
    facade_parts._upgraded.clear()
    engine.forget()  # a restart
    again = Matcher(settings)
    assert sorted(again.catalog.get_many(IDS)) == sorted(["red-mug", "blue-mug", "trail-shoe"])


def test_two_processes_upgrading_at_once_lose_and_duplicate_nothing(settings, legacy):
    def open_catalog(_):
        return Matcher(settings).count_products()

    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(open_catalog, range(4)))
    assert counts == [4, 4, 4, 4]
    assert Matcher(settings).page_products(limit=10).total == 4


def test_an_upgrade_cut_off_half_way_completes_on_the_next_start(settings, legacy, monkeypatch):
    from vpm.core import upgrade

    original = upgrade._copy_vectors

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(upgrade, "_copy_vectors", crash)
    with pytest.raises(KeyboardInterrupt):
        Matcher(settings).catalog
    monkeypatch.setattr(upgrade, "_copy_vectors", original)
    facade_parts._upgraded.clear()
    matcher = Matcher(settings)
    assert matcher.count_products() == 4
    assert matcher.vector_index("efficientnet-lite0").count() == 4


# A first start killed with SIGKILL (no cleanup, no finally: as if the machine lost power) at one exact step of
# the upgrade; a batch is 2 rows here so that the kill can land between two commits of one table.
KILLED_UPGRADE = textwrap.dedent("""
    import os, signal, sys
    from vpm.core import upgrade
    from vpm.backends.lance_catalog import LanceCatalogStore
    from vpm.backends.lance_vectors import LanceVectorIndex
    from vpm.faces.cli import main

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    def then_die(write):
        def written(self, rows):
            write(self, rows)
            die()
        return written

    upgrade.BATCH = 2
    step = {step!r}
    if step == "between-product-batches":
        LanceCatalogStore.add = then_die(LanceCatalogStore.add)
    elif step == "before-the-vectors":
        upgrade._copy_vectors = die
    elif step == "between-vector-batches":
        LanceVectorIndex.upsert = then_die(LanceVectorIndex.upsert)
    elif step == "before-the-marker":
        upgrade.now_iso = die  # dated just before the marker is written: everything else is copied
    sys.exit(main(["list"]))
""")


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize("step", ["between-product-batches", "before-the-vectors", "between-vector-batches",
                                  "before-the-marker"])
def test_a_first_start_killed_during_the_upgrade_is_finished_by_the_next(settings, legacy, tmp_path, step):
    """On a local folder and on a bucket (moto's HTTP server): whatever step the kill lands on, the next start
    upgrades what is left, and every product and vector is then in the tables once; the old files are untouched."""
    from vpm.core.storage import make_storage

    killed = subprocess.run([sys.executable, "-c", KILLED_UPGRADE.format(step=step)], cwd=tmp_path, env=child_env(),
                            capture_output=True, text=True, timeout=300, check=False)
    assert killed.returncode == -9, killed.stdout + killed.stderr[-3000:]
    storage = make_storage(settings)
    assert not storage.exists("metadata/products.json.upgraded")

    listed = subprocess.run([sys.executable, "-m", "vpm", "list", "--json"], cwd=tmp_path, env=child_env(),
                            capture_output=True, text=True, timeout=300, check=False)

    assert listed.returncode == 0, listed.stdout + listed.stderr[-3000:]
    assert sorted(item["id"] for item in json.loads(listed.stdout)["items"]) == sorted(IDS)
    engine.forget()
    facade_parts._upgraded.clear()
    matcher = Matcher(settings, embedder=None)
    rows = matcher.catalog.table.search().select(["id"]).limit(None).to_arrow().column("id").to_pylist()
    assert sorted(rows) == sorted(IDS)  # each product once
    vectors = matcher.vector_index("efficientnet-lite0").table
    keys = Counter(vectors.search().select(["photo_key"]).limit(None).to_arrow().column("photo_key").to_pylist())
    assert sorted(keys) == sorted(f"images/{pid}.png" for pid in IDS) and set(keys.values()) == {1}
    for key, data in legacy.items():
        assert storage.get(key) == data, key
    marker = json.loads(storage.get("metadata/products.json.upgraded"))
    assert marker["products"] == 4 and marker["vectors"] == {"efficientnet-lite0": 4}


def test_a_corrupt_products_json_is_reported_and_left_untouched(settings, legacy):
    from vpm.core.storage import make_storage

    storage = make_storage(settings)
    storage.put("metadata/products.json", b'{"products": [ broken')
    with pytest.raises(CatalogCorrupt, match="left untouched"):
        Matcher(settings).catalog
    assert storage.get("metadata/products.json") == b'{"products": [ broken'
    assert not storage.exists("metadata/products.json.upgraded")


def test_a_stored_infinite_price_upgrades_as_no_price(settings, legacy, caplog):
    from vpm.core.storage import make_storage

    storage = make_storage(settings)
    document = json.loads(legacy["metadata/products.json"])
    document["products"][0]["price"] = float("inf")
    storage.put("metadata/products.json", json.dumps(document).encode())  # json writes Infinity
    assert Matcher(settings).get_product("red-mug").price is None
    assert "red-mug" in caplog.text


def test_the_seed_format_is_exported_and_imports_again(settings, legacy, tmp_path, tiny_clip_dir, monkeypatch):
    matcher = Matcher(settings)
    out = tmp_path / "export" / "products.json"
    out.parent.mkdir()
    with out.open("w") as fh:
        assert matcher.export_json(fh) == 4
    document = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the export"))
    first = next(p for p in document["products"] if p["id"] == "red-mug")
    assert first["image_key"] == "images/red-mug.png" and first["image_sha256"]
    assert first["photos"][0]["key"] == "images/red-mug.png"
    from vpm.core.legacy import parse_products_json

    assert sorted(p.id for p in parse_products_json(out.read_bytes(), "export")) == sorted(IDS)
