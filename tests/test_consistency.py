"""The consistency report (missing files, orphans, vectors) and the orphan cleanup, on both backends."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image

from vpm.core.catalog import Photo, validate_product
from vpm.core.consistency import (
    ConsistencyError,
    breadcrumbs,
    consistency_report,
    delete_orphans,
    object_rows,
    parent_prefix,
    preview_kind,
)
from vpm.core.storage import ObjectInfo

from fakes import ColourMeanEmbedder

LATER = datetime.now(UTC) + timedelta(hours=1)  # "now" for cleanups that must not see files as recent


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, "JPEG")
    return buf.getvalue()


def make_matcher(settings, storage):
    from vpm.core.matcher import Matcher

    return Matcher(settings, storage, embedder=ColourMeanEmbedder())


@pytest.fixture
def matcher(settings, storage):
    return make_matcher(settings, storage)


def add(matcher, pid: str, colour=(200, 30, 30)):
    return matcher.add_product(jpeg(colour), f"{pid}.jpg", name=f"Product {pid}", category="Test", product_id=pid)


def test_a_consistent_catalog_reports_nothing(matcher):
    add(matcher, "p1")
    add(matcher, "p2", (20, 200, 20))
    report = consistency_report(matcher, vectors=False)
    assert (report.products, report.image_files, report.thumbnail_files) == (2, 2, 2)
    assert report.missing == [] and report.orphans == []
    assert report.ok
    assert "2 products" in report.summary()


def test_reports_a_missing_image_and_thumbnail_and_orphans(matcher, storage):
    p1 = add(matcher, "p1")
    add(matcher, "p2", (20, 200, 20))
    storage.delete(p1.image_key)
    storage.delete(p1.thumbnail_key)
    storage.put("images/stray.png", b"not referenced", "image/png")
    storage.put("thumbnails/stray.webp", b"x" * 2048, "image/webp")

    report = consistency_report(matcher, vectors=False)

    assert [(m.product_id, m.kind, m.key) for m in report.missing] == [
        ("p1", "image", p1.image_key),
        ("p1", "thumbnail", p1.thumbnail_key),
    ]
    assert [(o.key, o.kind, o.size) for o in report.orphans] == [
        ("images/stray.png", "image", 14),
        ("thumbnails/stray.webp", "thumbnail", 2048),
    ]
    assert report.orphans[0].recent  # just written: maybe a product being added
    assert not report.ok
    assert report.orphan_rows()[1]["size"] == "2.0 KB"
    assert report.missing_rows()[0] == {"product": "p1", "name": "Product p1", "file": "image", "key": p1.image_key}
    doc = report.as_dict()
    assert json.loads(json.dumps(doc))["orphans"][0]["key"] == "images/stray.png"


def test_a_bounded_report_says_so_and_never_calls_an_unlisted_file_missing(matcher, storage):
    """A health check reads at most `limit` products and files of each folder: what it did not look at is neither
    missing nor fine, and the report says it is partial."""
    # Added p1, p4, p2, p3, p5: the first two read are p1 and p4; files are listed by key (p1, p2, p3, p4, p5).
    order = ["p1", "p4", "p2", "p3", "p5"]
    added = {pid: add(matcher, pid, (40 * i, 30, 200 - 40 * i)) for i, pid in enumerate(order)}
    storage.delete(added["p1"].image_key)  # before where the listing of 2 images (p2, p3) stops: really missing
    storage.delete(added["p4"].image_key)  # read, but past where the listing stopped: not looked at

    bounded = consistency_report(matcher, vectors=False, limit=2)
    full = consistency_report(matcher, vectors=False)

    assert not bounded.complete and (bounded.products, bounded.products_in_catalog) == (2, 5)
    assert [m.key for m in bounded.missing] == [added["p1"].image_key]
    assert bounded.orphans == []
    assert {m.key for m in full.missing} == {added["p1"].image_key, added["p4"].image_key} and full.complete
    assert consistency_report(matcher, vectors=False, limit=5).missing == full.missing  # the whole catalog fits


def test_metadata_is_never_an_orphan_even_with_an_empty_image_prefix(tmp_path, monkeypatch):
    from vpm.core.config import load_settings
    from vpm.core.storage import make_storage

    monkeypatch.setenv("VPM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("S3_IMAGE_PREFIX", "")
    settings = load_settings()
    storage = make_storage(settings)
    matcher = make_matcher(settings, storage)
    add(matcher, "p1")
    storage.put(settings.embeddings_prefix + "some-model.npz", b"vectors")
    storage.put("stray.jpg", b"orphan at the root")

    report = consistency_report(matcher, vectors=False)

    assert [o.key for o in report.orphans] == ["stray.jpg"]
    table_file = next(o.key for o in storage.iter_objects(settings.metadata_prefix + "products.lance/"))
    metadata = {table_file, settings.embeddings_prefix + "some-model.npz"}
    result = delete_orphans(matcher, metadata, metadata, now=LATER)
    assert result.deleted == []
    assert {why for _, why in result.kept} == {"not under the image or thumbnail prefix"}
    assert all(storage.exists(key) for key in metadata)


def test_delete_orphans_deletes_only_confirmed_orphans(matcher, storage):
    p1 = add(matcher, "p1")
    storage.put("images/orphan-a.jpg", b"a")
    storage.put("images/orphan-b.jpg", b"b")
    report = consistency_report(matcher, vectors=False)
    assert report.orphan_keys == {"images/orphan-a.jpg", "images/orphan-b.jpg"}

    # The caller asks for a referenced key and an unconfirmed one too: both are refused.
    result = delete_orphans(
        matcher, ["images/orphan-a.jpg", p1.image_key, "images/orphan-b.jpg"], {"images/orphan-a.jpg", p1.image_key},
        now=LATER,
    )

    assert result.deleted == ["images/orphan-a.jpg"]
    assert dict(result.kept) == {
        p1.image_key: "a product references it now",
        "images/orphan-b.jpg": "not in the orphan report that was confirmed",
    }
    assert not storage.exists("images/orphan-a.jpg")
    assert storage.exists("images/orphan-b.jpg") and storage.exists(p1.image_key)
    assert result.summary() == "deleted 1 orphan file(s); kept 2"


def test_delete_rechecks_the_catalog_at_delete_time(matcher, storage):
    storage.put("images/late.jpg", jpeg((1, 2, 3)), "image/jpeg")
    add(matcher, "p1")
    report = consistency_report(matcher, vectors=False)
    assert "images/late.jpg" in report.orphan_keys
    # Meanwhile someone adds a product that uses the file the report called an orphan.
    late = Photo(key="images/late.jpg", sha256=hashlib.sha256(b"late").hexdigest())
    matcher.catalog.add([validate_product(id="late", name="Late", category="Test", photos=[late])])

    result = delete_orphans(matcher, report.orphan_keys, report.orphan_keys, now=LATER)

    assert result.deleted == []
    assert result.kept == [("images/late.jpg", "a product references it now")]
    assert storage.exists("images/late.jpg")


def test_recent_files_are_kept_unless_old_enough(matcher, storage):
    add(matcher, "p1")
    storage.put("images/new.jpg", b"just uploaded")
    keys = {"images/new.jpg"}

    kept = delete_orphans(matcher, keys, keys)
    assert kept.deleted == [] and "written in the last 10 minutes" in kept.kept[0][1]
    assert storage.exists("images/new.jpg")

    assert delete_orphans(matcher, keys, keys, min_age_seconds=0).deleted == ["images/new.jpg"]
    assert not storage.exists("images/new.jpg")
    assert delete_orphans(matcher, keys, keys, min_age_seconds=0).kept == [("images/new.jpg", "already gone")]


def test_without_products_json_nothing_is_deleted(matcher, storage):
    storage.put("images/a.jpg", b"a")
    keys = {"images/a.jpg"}
    report = consistency_report(matcher, vectors=False)
    assert not report.catalog_exists and report.orphan_keys == keys
    with pytest.raises(ConsistencyError, match="do not exist"):
        delete_orphans(matcher, keys, keys, now=LATER)
    assert storage.exists("images/a.jpg")


def test_a_damaged_catalog_table_is_reported_and_blocks_cleanup(matcher, storage, settings):
    from vpm.backends import engine

    add(matcher, "p1")
    storage.put("images/a.jpg", b"a")
    for info in list(storage.iter_objects(settings.metadata_prefix + "products.lance/_versions/")):
        storage.put(info.key, b"this is not a manifest")
    engine.forget()  # a new process
    fresh = make_matcher(settings, storage)
    with pytest.raises(engine.TableUnreadable, match="left untouched"):
        consistency_report(fresh, vectors=False)
    with pytest.raises(ConsistencyError, match="nothing was deleted.*cannot be opened"):
        delete_orphans(fresh, {"images/a.jpg"}, {"images/a.jpg"}, now=LATER)
    assert storage.exists("images/a.jpg")


def test_vectors_are_unknown_rather_than_guessed_when_the_index_cannot_say(matcher, monkeypatch):
    add(matcher, "p1")
    import vpm.core.consistency as consistency

    def broken(*_args):
        raise OSError("cache unreadable")

    monkeypatch.setattr(consistency, "_vector_coverage", broken)
    report = consistency_report(matcher)
    assert report.vectors.state == "unknown"
    assert "cache unreadable" in report.vectors.detail
    assert report.ok  # unknown is not a problem to fix


def test_browsing_helpers():
    assert breadcrumbs("") == [("All files", "")]
    assert breadcrumbs("images/a/") == [("All files", ""), ("images", "images/"), ("a", "images/a/")]
    assert parent_prefix("images/a/") == "images/" and parent_prefix("images/") == ""
    when = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    photo = ObjectInfo("images/a/p1.jpg", 1536, '"e"', when)  # as an S3 listing gives it: no content type
    catalog = ObjectInfo("metadata/products.json", 10, '"e"', when, "application/json")
    blob = ObjectInfo("metadata/embeddings/m.npz", 10, '"e"', when)
    assert object_rows([photo], "images/a/") == [
        {"name": "p1.jpg", "size": "1.5 KB", "bytes": 1536, "last modified": "2026-01-02 03:04 UTC",
         "content type": "image/jpeg"},
    ]
    assert [preview_kind(o) for o in (photo, catalog, blob)] == ["image", "json", "none"]


def _catalog_only(matcher, storage, pid: str, colour) -> str:
    """A product written without embedding anything (files, then the row): returns its photo's key."""
    from vpm.core import photos

    image = matcher.decode(jpeg(colour), f"{pid}.jpg")
    prepared = photos.prepare(image, pid, matcher.settings.s3_image_prefix, matcher.settings.s3_thumbnail_prefix)
    photos.store(storage, prepared, [])
    matcher.catalog.add([validate_product(id=pid, name=pid, category="Test", photos=[prepared.photo])])
    return prepared.photo.key


def fake_hub_cache(home, repo: str = "sentence-transformers/clip-ViT-B-32"):
    """A Hugging Face cache holding a snapshot of `repo` (its layout only: enough to say "it is cached")."""
    folder = home / "hub" / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    (folder / "snapshots" / "0123abcd").mkdir(parents=True)


@pytest.mark.parametrize("cached", [True, False], ids=["model-cached", "offline-without-it"])
def test_vectors_missing_for_the_model_that_will_run_without_loading_it(settings, storage, monkeypatch, tmp_path,
                                                                         cached):
    """Counted for the configured model when it can load (it is cached), else for the offline fallback that
    will run instead: never for a configured model that cannot load here."""
    from vpm.backends.lance_vectors import LanceVectorIndex
    from vpm.core.matcher import Matcher
    from vpm.core.vector_index import PhotoVector
    from vpm.models.embeddings import model_slug

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    if cached:
        fake_hub_cache(tmp_path / "hf")
    matcher = Matcher(settings, storage)  # no embedder given: the model must stay unloaded
    key1 = _catalog_only(matcher, storage, "p1", (200, 30, 30))
    _catalog_only(matcher, storage, "p2", (30, 200, 30))

    nothing = consistency_report(matcher).vectors
    assert nothing.state == "missing" and "none of the 2 products" in nothing.detail

    model_id = model_slug(settings.vpm_model if cached else "efficientnet-lite0")  # the built-in's own id
    index = LanceVectorIndex(matcher.where, model_id, 3)
    index.upsert([PhotoVector(key1, "p1", "a" * 64, "Test", np.array([0.6, 0.8, 0.0], dtype=np.float32))])
    report = consistency_report(matcher)

    assert report.vectors.state == "missing"
    assert report.vectors.model_id == model_id
    assert report.vectors.missing_product_ids == ["p2"]
    assert "1 of 2 photos have no vector" in report.vectors.detail
    assert report.orphans == []  # the tables live under the metadata prefix, never orphans
    assert not matcher.model_loaded


def test_vectors_of_the_running_model_once_it_is_loaded(matcher, storage, settings):
    add(matcher, "p1")
    add(matcher, "p2", (20, 200, 20))  # the add embeds: its vector is cached before the metadata
    assert matcher.model_loaded
    report = consistency_report(matcher)
    assert (report.vectors.state, report.vectors.model_id) == ("ok", "fake-colour")
    assert "all 2 photos have a vector" in report.vectors.detail

    from vpm.backends import engine

    for info in list(storage.iter_objects(settings.metadata_prefix + "vectors-")):
        storage.delete(info.key)  # the vectors are lost (derived data)
    engine.forget()
    fresh = make_matcher(settings, storage)  # a new process: nothing in memory
    fresh.embedder  # loaded, as it would be after a search
    lost = consistency_report(fresh).vectors
    assert (lost.state, lost.missing_product_ids) == ("missing", ["p1", "p2"])


def test_keypoint_coverage_names_photos_without_keypoints_and_says_when_it_looked_at_a_sample(matcher):
    from vpm.core.consistency import keypoint_coverage

    p1, _p2 = add(matcher, "p1"), add(matcher, "p2", (20, 200, 20))
    assert keypoint_coverage(matcher).state == "ok"
    matcher.features.delete_photos([p1.photos[0].key])

    found = keypoint_coverage(matcher)
    assert (found.state, found.missing_photos, found.missing_product_ids) == ("missing", 1, ["p1"])
    assert found.detail.startswith("1 of 2 photos have no keypoints")
    sample = keypoint_coverage(matcher, limit=1)  # a health probe's bounded walk
    assert "(of the first 1 products looked at)" in sample.detail
