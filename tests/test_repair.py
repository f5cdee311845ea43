"""`vpm check` and `vpm check --repair` (vpm/core/repair.py, vpm/backends/table_repair.py), on a local folder and on S3 (moto).

The repair's promises: it says what it will do first; it deletes only orphan files, only after a yes (a terminal, or
--yes), never ones written in the last minutes or around changes set aside; it embeds what is missing by the code
`vpm index` runs; and a table that will not open gets its unreadable newest versions set aside (kept in the
catalog's set-aside folder, never deleted) and opens at its newest readable version, losing nothing readable.
"""

from __future__ import annotations

import io
import json
import sys
from datetime import UTC, datetime, timedelta

import pytest

from vpm.backends import engine, table_repair
from vpm.backends.table_repair import SetAsideRecord
from vpm.core import repair
from vpm.core.consistency import ConsistencyReport, Orphan, VectorCoverage

from conftest import make_product_photo
from fakes import ColourMeanEmbedder


def new_matcher(settings):
    from vpm.core.matcher import Matcher

    return Matcher(settings, embedder=ColourMeanEmbedder())


@pytest.fixture
def matcher(settings):
    yield new_matcher(settings)
    engine.forget()


class Terminal(io.StringIO):
    """Standard input that is a terminal, with the person's answers typed in advance."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def cli(settings, monkeypatch, capsys):
    """`cli(*args, answer=None) -> (code, stdout, stderr)`: `python -m vpm` in this process, with the instant
    colour embedder; `answer` makes standard input a terminal on which that answer is typed, else it is not one."""
    from vpm.faces import cli as cli_module
    from vpm.faces import cli_check

    monkeypatch.setattr(cli_module, "make_matcher", lambda args: new_matcher(settings))
    monkeypatch.setattr(cli_check, "make_matcher", lambda args: new_matcher(settings))

    def run(*args: str, answer: str | None = None) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO("") if answer is None else Terminal(answer + "\n"))
        code = cli_module.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def add(matcher, pid: str, seed: int):
    return matcher.add_product(make_product_photo(seed), f"{pid}.png", name=f"Product {pid}", category="Test",
                               product_id=pid)


def versions(storage, settings, table: str = "products") -> list[str]:
    """The table's version files, oldest first."""
    found = [(v, o.key) for o in storage.iter_objects(f"{settings.metadata_prefix}{table}.lance/_versions/")
             if (v := engine.version_of(o.key.rpartition("/")[2])) is not None]
    return [key for _v, key in sorted(found)]


def product_ids(settings) -> set[str]:
    engine.forget()
    return {p.id for p in new_matcher(settings).iter_products()}


def files_of(products) -> set[str]:
    return {key for p in products for photo in p.photos for key in (photo.key, photo.thumbnail_key)}


# ---------------------------------------------------------------------------------------------------- check


def test_check_passes_on_a_sound_catalog_and_names_every_table(matcher, cli):
    add(matcher, "p1", 1)
    add(matcher, "p2", 2)

    code, out, _ = cli("check")

    assert code == 0 and out.rstrip().endswith("overall: pass")
    assert "[PASS] catalog tables: every table opens: " in out and "products (2 rows)" in out
    assert "[PASS] catalog files: every file of 2 products is there" in out
    assert "[PASS] search vectors: all 2 photos have a vector for fake-colour" in out
    assert "[PASS] keypoints: all 2 photos have keypoints" in out


def test_check_of_an_empty_catalog_passes_and_creates_nothing(cli, storage):
    code, out, _ = cli("check", "--repair")

    assert code == 0 and "[PASS] catalog tables: no tables yet (an empty catalog)" in out
    assert out.rstrip().endswith("overall: pass")
    assert not [o.key for o in storage.iter_objects("") if not o.key.startswith(".vpm/")]  # no table made by looking


def test_check_gives_the_same_verdict_as_health_and_fails_on_a_missing_file(matcher, cli, storage, settings):
    p1 = add(matcher, "p1", 1)
    add(matcher, "p2", 2)
    storage.delete(p1.image_key)
    matcher.vectors.delete_photos([p1.photos[0].key])  # and a photo without a vector

    code, out, _ = cli("check", "--json")
    health_code, health_out, _ = cli("health", "--json")

    checked, health = json.loads(out), json.loads(health_out)
    assert code == 1 == health_code and checked["status"] == "fail" == health["status"]
    files = {c["name"]: c for c in checked["checks"]}["catalog files"]
    assert files == {c["name"]: c for c in health["checks"]}["catalog files"]  # one verdict, word for word
    assert f"1 file that products point at is missing: {p1.image_key} (image of p1)" in files["detail"]
    vectors = {c["name"]: c for c in checked["checks"]}["search vectors"]
    assert vectors["status"] == "warn" and "1 of 2 photos have no vector for fake-colour" in vectors["detail"]
    assert "vectors for 1/2 photos" in {c["name"]: c for c in health["checks"]}["index"]["detail"]  # same figures
    assert checked["files"]["missing"][0]["key"] == p1.image_key


def test_check_says_that_photos_lack_keypoints(matcher, cli):
    p1 = add(matcher, "p1", 1)
    add(matcher, "p2", 2)
    matcher.features.delete_photos([p1.photos[0].key])

    code, out, _ = cli("check")

    assert code == 0 and "overall: warn" in out
    assert "[WARN] keypoints: 1 of 2 photos have no keypoints, so their matches are not verified" in out
    _, health, _ = cli("health")
    assert "[WARN] keypoints: 1 of 2 photos have no keypoints" in health  # vpm health says the same


# ------------------------------------------------------------------------------------------------- orphans


def test_repair_refuses_without_a_terminal_or_yes_and_changes_nothing(matcher, cli, storage, monkeypatch):
    monkeypatch.setattr(repair, "RECENT_SECONDS", 0)  # S3 cannot backdate a file: no file counts as recent
    add(matcher, "p1", 1)
    storage.put("images/stray.png", b"x" * 10, "image/png")
    before = sorted(o.key for o in storage.iter_objects(""))

    code, out, err = cli("check", "--repair")

    assert code == 1
    assert "1 orphan file (10 B) will be deleted" in out and "  images/stray.png" in out  # said first
    assert "error: stopped before deleting 1 orphan file: nobody can be asked to confirm here (not a terminal); " \
           "run it again with --yes" in err and "Nothing was changed" in err
    assert sorted(o.key for o in storage.iter_objects("")) == before


def test_repair_asks_on_a_terminal_and_a_no_deletes_nothing(matcher, cli, storage, monkeypatch):
    monkeypatch.setattr(repair, "RECENT_SECONDS", 0)
    add(matcher, "p1", 1)
    storage.put("images/stray.png", b"x" * 10, "image/png")

    code, out, err = cli("check", "--repair", answer="n")

    assert "Delete it permanently? [y/N]" in err and "nothing was deleted" in out
    assert storage.exists("images/stray.png") and code == 0  # an orphan is a warning

    code, out, err = cli("check", "--repair", answer="y")

    assert code == 0 and not storage.exists("images/stray.png")
    assert "done: deleted 1 orphan file(s)" in out and out.rstrip().endswith("overall: pass")


def test_repair_deletes_only_orphans_under_the_catalogs_own_prefixes(matcher, cli, storage, settings, monkeypatch):
    monkeypatch.setattr(repair, "RECENT_SECONDS", 0)
    products = [add(matcher, "p1", 1), add(matcher, "p2", 2)]
    strays = ["images/stray.png", "thumbnails/stray.webp"]
    others = ["notes/readme.txt", f"{settings.metadata_prefix}notes.txt", "stray-at-the-root.png"]
    for key in strays + others:
        storage.put(key, b"x" * 10)

    code, out, _ = cli("check", "--repair", "--yes", "--json")

    assert code == 0
    document = json.loads(out)
    assert sorted(document["orphans"]["result"]["deleted"]) == strays
    assert not any(storage.exists(k) for k in strays)
    assert all(storage.exists(k) for k in [*others, *files_of(products)])
    assert document["after"]["status"] == "pass" and document["status"] == "pass"


@pytest.mark.parametrize("backend", ["local"], indirect=True)  # a file's age can be set on a local disk only
def test_repair_keeps_orphans_written_in_the_last_minutes_and_says_so(matcher, cli, settings):
    import os
    import time

    add(matcher, "p1", 1)
    old, new = settings.vpm_data_dir / "images" / "old.png", settings.vpm_data_dir / "images" / "new.png"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))

    code, out, _ = cli("check", "--repair", "--yes")

    assert code == 0 and not old.exists() and new.exists()
    assert "1 orphan file (1 B) will be deleted" in out
    assert "  images/new.png: written in the last 10 minutes: it may belong to a product being added right now" in out


def test_a_file_written_around_a_change_set_aside_is_kept():
    """Pure: the plan keeps orphans written between a set-aside table's last readable version (less a margin) and
    the moment it was set aside; older and newer ones go."""
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

    def orphan(key: str, minutes_ago: float) -> Orphan:
        return Orphan(key, "image", 10, now - timedelta(minutes=minutes_ago), False)

    report = ConsistencyReport("here", 1, 4, 0, [], [orphan("images/long-before.png", 120),
                                                     orphan("images/during.png", 30),
                                                     orphan("images/after.png", 5)],
                               VectorCoverage("ok", "m", ""))
    record = SetAsideRecord("metadata/set-aside/x-products/", "products", [7], 6, now - timedelta(minutes=40),
                            now - timedelta(minutes=20))

    plan = repair.plan_orphans(None, report, records=[record])

    assert [o.key for o in plan.delete] == ["images/long-before.png", "images/after.png"]
    assert [(o.key, "changes set aside in metadata/set-aside/x-products/" in why) for o, why in plan.keep] == [
        ("images/during.png", True)]


# ----------------------------------------------------------------------------------------------- re-embed


def test_repair_embeds_the_missing_vectors_and_keypoints_without_asking(matcher, cli, storage):
    p1, p2 = add(matcher, "p1", 1), add(matcher, "p2", 2)
    matcher.vectors.delete_photos([p1.photos[0].key])
    matcher.features.delete_photos([p2.photos[0].key])

    code, out, _ = cli("check", "--repair")  # no terminal and no --yes: adding derived data needs no consent

    assert code == 0
    assert "embed 1 photo without a search vector for fake-colour; find the keypoints of 1 photo" in out
    assert out.rstrip().endswith("overall: pass")
    engine.forget()
    fresh = new_matcher(matcher.settings)
    keys = [p1.photos[0].key, p2.photos[0].key]
    assert fresh.vectors.photo_keys_with_vectors(keys) == set(keys)
    assert fresh.features.photo_keys_with_features(keys) == set(keys)


# -------------------------------------------------------------------------------------------- damaged tables


def test_a_garbage_newest_version_is_set_aside_and_the_table_opens_with_nothing_readable_lost(
        matcher, cli, storage, settings, monkeypatch):
    monkeypatch.setattr(repair, "RECENT_SECONDS", 0)  # it is the set-aside that keeps p3's files, not their age
    p1, p2, p3 = add(matcher, "p1", 1), add(matcher, "p2", 2), add(matcher, "p3", 3)
    newest = versions(storage, settings)[-1]
    storage.put(newest, b"\x07" * 4096)  # one 4 KB garbage file as the newest version
    engine.forget()
    readable = versions(storage, settings)[:-1]

    code, out, _ = cli("check")
    assert code == 1 and "[FAIL] catalog tables: the table products in " in out
    assert "fix: python -m vpm check --repair sets the damaged versions aside (it keeps them)" in out

    code, out, err = cli("check", "--repair")  # refused: nothing moved
    assert code == 1 and "stopped before setting 1 version file aside" in err
    assert storage.get(newest) == b"\x07" * 4096

    code, out, _ = cli("check", "--repair", "--yes", "--json")

    document = json.loads(out)
    assert code == 0, document
    (done,) = document["set_aside"]
    version = engine.version_of(newest.rpartition("/")[2])
    assert done["versions"] == [version] and done["changes"] == 1 and done["rows"] == 2
    assert done["folder"].startswith(f"{settings.metadata_prefix}set-aside/") and done["folder"].endswith("-products/")
    moved = done["moved"][0]["to"]
    assert storage.get(moved) == b"\x07" * 4096 and not storage.exists(newest)  # kept, out of the table
    record = json.loads(storage.get(done["folder"] + "set-aside.json"))
    assert record["table"] == "products" and record["changes"] == 1 and record["readable_version"] == version - 1
    assert versions(storage, settings) == readable  # every readable version is still there
    assert product_ids(settings) == {"p1", "p2"}  # what version N-1 held: nothing readable lost
    # p3's photos were written around the change set aside: kept, whatever their age, and said why.
    assert all(storage.exists(k) for k in files_of([p1, p2, p3]))
    assert any(k["key"] == p3.image_key and "set aside" in k["reason"] for k in document["orphans"]["plan"]["keep"])

    again = new_matcher(settings)
    add(again, "p4", 4)  # the table takes new changes again
    assert product_ids(settings) == {"p1", "p2", "p4"}


def test_the_terminal_flow_says_which_versions_and_how_many_changes(matcher, cli, storage, settings):
    for i in range(1, 5):
        add(matcher, f"p{i}", i)
    damaged = versions(storage, settings)[-2:]
    for key in damaged:
        storage.put(key, b"not a manifest")
    engine.forget()
    numbers = [engine.version_of(k.rpartition("/")[2]) for k in damaged]

    code, out, err = cli("check", "--repair", answer="y")

    assert code == 0
    assert f"products: set aside versions {numbers[0]} and {numbers[1]} (the last 2 changes made to the table; " \
           f"their files: {damaged[1]}, {damaged[0]}); the table then opens at version {numbers[0] - 1} (2 rows)" in out
    assert "Set them aside (moved to " in err and "never deleted)? [y/N]" in err
    assert f"done: products: set aside versions {numbers[0]}, {numbers[1]} (2 changes) in " in out
    assert product_ids(settings) == {"p1", "p2"}


def test_a_no_on_the_terminal_sets_nothing_aside(matcher, cli, storage, settings):
    add(matcher, "p1", 1)
    add(matcher, "p2", 2)
    newest = versions(storage, settings)[-1]
    storage.put(newest, b"garbage")
    engine.forget()

    code, out, _ = cli("check", "--repair", answer="no")

    assert code == 1 and "nothing was set aside" in out
    assert storage.get(newest) == b"garbage" and not list(storage.iter_objects(f"{settings.metadata_prefix}set-aside/"))


def test_a_table_with_no_readable_version_is_left_alone_and_said_so(matcher, cli, storage, settings):
    add(matcher, "p1", 1)
    keys = versions(storage, settings)
    for key in keys:
        storage.put(key, b"not a manifest")
    engine.forget()

    code, out, _ = cli("check", "--repair", "--yes")

    assert code == 1 and "not repaired: the table products in " in out
    assert "setting versions aside cannot bring it back; restore it from a backup" in out
    assert all(storage.get(k) == b"not a manifest" for k in keys)
    assert not list(storage.iter_objects(f"{settings.metadata_prefix}set-aside/"))


def test_a_set_aside_that_does_not_make_the_table_open_is_put_back(matcher, storage, settings):
    add(matcher, "p1", 1)
    add(matcher, "p2", 2)
    newest = versions(storage, settings)[-1]
    storage.put(newest, b"garbage")
    for info in list(storage.iter_objects(f"{settings.metadata_prefix}products.lance/data/")):
        storage.delete(info.key)  # the older versions' data is gone too: setting versions aside cannot help
    engine.forget()
    before = {o.key: o.etag for o in storage.iter_objects(f"{settings.metadata_prefix}products.lance/")}
    found = repair.check(new_matcher(settings))
    (damaged,) = found.fixable

    with pytest.raises(table_repair.RepairError, match="they were put back where they were"):
        repair.set_aside_damaged(new_matcher(settings), [damaged])

    assert {o.key: o.etag for o in storage.iter_objects(f"{settings.metadata_prefix}products.lance/")} == before
    assert not list(storage.iter_objects(f"{settings.metadata_prefix}set-aside/"))


def test_a_damaged_vector_table_is_set_aside_too_and_its_missing_vectors_embedded(matcher, cli, storage, settings):
    add(matcher, "p1", 1)
    add(matcher, "p2", 2)
    table = f"vectors-{ColourMeanEmbedder.model_id}"
    newest = versions(storage, settings, table)[-1]
    storage.put(newest, b"garbage")
    engine.forget()

    code, out, _ = cli("check", "--repair", "--yes")

    assert code == 0, out
    assert f"done: {table}: set aside version " in out
    assert "embed 1 photo without a search vector for fake-colour" in out  # the change set aside, made again
    assert out.rstrip().endswith("overall: pass")


def test_the_refusal_to_open_a_damaged_table_names_the_repair(matcher, storage, settings):
    add(matcher, "p1", 1)
    add(matcher, "p2", 2)
    storage.put(versions(storage, settings)[-1], b"garbage")
    engine.forget()

    with pytest.raises(engine.TableUnreadable) as refused:
        new_matcher(settings).count_products()

    message = str(refused.value)
    assert "To go back to version " in message
    assert "run `python -m vpm check --repair` (it moves that one file into the catalog's set-aside folder and keeps " \
           "it)" in message
