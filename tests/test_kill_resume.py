"""`vpm import` and `vpm index` killed with SIGKILL midway (as if the machine lost power), then run again.

Each run is a real `python -m vpm` process on the parametrised backend (a local folder, or a bucket on moto's HTTP
server) with the tiny offline CLIP. It is killed either from outside, once its progress on stderr has reported so
many photos (the kill then lands wherever the next batch happens to be), or from inside at one exact step (files
and vectors written but no product row; rows committed but not yet reported; a table being compacted; the score
being fitted; a table being created). The same command run again must
leave every product of the input in the catalog exactly once, with all its photos, each with its vector and
keypoints; no product reported added may be lost; and the rerun says what it skipped.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vpm.backends import engine
from vpm.core import photos
from vpm.core.catalog import validate_product
from vpm.core.matcher import Matcher

from conftest import make_product_photo

REPO = Path(__file__).resolve().parent.parent
BATCH = 32  # photos an import or index run commits at a time (bulk_import.BATCH_PHOTOS, indexing.EMBED_BATCH)
PRODUCTS = 64  # with 1 to 3 photos each: 127 photos, four batches of an import
IMPORTED = re.compile(r"(\d+)/(\d+): imported (\d+) products? \((\d+) photos?\)")
EMBEDDED = re.compile(r"embedded (\d+)/(\d+) photos")
KEYPOINTS = re.compile(r"keypoints of (\d+)/(\d+) photos")


def child_env() -> dict[str, str]:
    """The test's settings (backend, tiny CLIP, one thread) as a child process reads them: the environment."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def vpm_command(*args: str, code: str | None = None) -> list[str]:
    return [sys.executable, "-c", code] if code else [sys.executable, "-m", "vpm", *args]


def run_until_killed(command: list[str], cwd: Path, kill_when=None, timeout: float = 300) -> list[str]:
    """Run `command`, reading its stderr (tqdm's bar: lines end in \\r) as it comes; SIGKILL it on the first
    line `kill_when(line)` accepts (None: the command kills itself). Returns the lines seen; fails the test when
    the command ends on its own, since then nothing was tested."""
    process = subprocess.Popen(command, cwd=cwd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    lines: list[str] = []
    pending = b""
    try:
        while chunk := os.read(process.stderr.fileno(), 65536):
            *complete, pending = re.split(rb"[\r\n]", pending + chunk)
            # tqdm starts each redraw with \r: the last one so far is only ended by the next, so look at it now
            for raw in [*complete, pending]:
                line = raw.decode("utf-8", "replace")
                if raw is not pending:
                    lines.append(line)
                if kill_when is not None and kill_when(line):
                    os.kill(process.pid, signal.SIGKILL)  # no cleanup, no finally: as if the machine lost power
                    process.wait()
                    return [*lines, line]
    finally:
        watchdog.cancel()
        process.stderr.close()
    process.wait()
    assert process.returncode == -signal.SIGKILL, (
        f"the run ended by itself (exit {process.returncode}) before it could be killed:\n" + "\n".join(lines[-30:]))
    return lines


def run_json(cwd: Path, *args: str) -> tuple[dict, str]:
    done = subprocess.run(vpm_command(*args, "--json"), cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout), done.stderr


def last(pattern: re.Pattern, lines: list[str]) -> tuple[int, ...] | None:
    found = [m for line in lines for m in [pattern.search(line)] if m]
    return tuple(int(g) for g in found[-1].groups()) if found else None


# ------------------------------------------------------------------------------------------------- the input


def write_csv_source(folder: Path) -> tuple[Path, dict[str, set[str]]]:
    """A CSV of PRODUCTS products with 1-3 photos each (rows sharing an id), plus their photos; returns the CSV
    and {product id: the SHA-256 of each of its photos}."""
    import hashlib

    folder.mkdir(parents=True)
    rows, want = [("image", "id", "name", "category", "price")], {}
    for p in range(PRODUCTS):
        pid = f"item-{p:03d}"
        want[pid] = set()
        for j in range(1 + p % 3):
            data = make_product_photo(5000 + 10 * p + j, size=48)
            (folder / f"{pid}-{j}.png").write_bytes(data)
            rows.append((f"{pid}-{j}.png", pid, f"Item {p}", ("Mugs", "Lamps", "Bags")[p % 3], f"{p}.50"))
            want[pid].add(hashlib.sha256(data).hexdigest())
    with (folder / "products.csv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return folder / "products.csv", want


def fresh_matcher(settings) -> Matcher:
    """The catalog as a new process finds it (no handle cached from before the child wrote it)."""
    engine.forget()
    return Matcher(settings)


def table_keys(table, column: str) -> list[str]:
    """Every row's `column`, read from the table itself (duplicates included)."""
    return table.search().select([column]).limit(None).to_arrow().column(column).to_pylist()


def products_by_id(matcher: Matcher) -> dict[str, object]:
    ids = table_keys(matcher.catalog.table, "id")
    assert not [i for i, n in Counter(ids).items() if n > 1], "a product row is in the table twice"
    return {p.id: p for batch in matcher.catalog.iter_batches() for p in batch}


def assert_every_photo_has_its_vector_and_keypoints(matcher: Matcher) -> set[str]:
    """Every catalog photo has exactly one vector row and one keypoints row; returns the catalog's photo keys."""
    keys = {photo.key for batch in matcher.catalog.iter_batches() for p in batch for photo in p.photos}
    for what, table in (("vector", matcher.vectors.table), ("keypoints", matcher.features.table)):
        stored = Counter(table_keys(table, "photo_key"))
        assert not [k for k, n in stored.items() if n > 1], f"a photo has two {what} rows"
        assert keys <= set(stored), f"{len(keys - set(stored))} photos have no {what}"
    return keys


def assert_catalog_is(matcher: Matcher, want: dict[str, set[str]]) -> None:
    """Exactly the input's products, each once, each with exactly its photos, each photo with its derived data."""
    found = products_by_id(matcher)
    assert sorted(found) == sorted(want)
    for pid, shas in want.items():
        got = [photo.sha256 for photo in found[pid].photos]
        assert sorted(got) == sorted(shas), f"{pid} has the photos {got}"
        for photo in found[pid].photos:
            assert matcher.storage.exists(photo.key) and matcher.storage.exists(photo.thumbnail_key)
    assert_every_photo_has_its_vector_and_keypoints(matcher)
    vectors = matcher.vectors.vectors_for_keys([ph.key for p in found.values() for ph in p.photos])
    matrix = np.stack(list(vectors.values()))
    assert np.isfinite(matrix).all() and np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-3)


# ------------------------------------------------------------------------------------------------- import

# Killed from inside at one exact step of a batch: `commit_rows` is where a batch's files, vectors and keypoints
# are all written and its product rows are committed (a batch of duplicates only never gets there); or while
# LanceDB compacts a table (here after two writes).
KILLED_IMPORT = textwrap.dedent("""
    import os, signal, sys
    from vpm.core import bulk_import
    from vpm.faces.cli import main

    STEP, AT = {step!r}, {at}
    commit = bulk_import.commit_rows
    calls = []

    def commit_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == AT and STEP == "before-rows":
            os.kill(os.getpid(), signal.SIGKILL)  # files, vectors and keypoints written; no row points at them
        commit(*args, **kwargs)
        if len(calls) == AT and STEP == "after-rows":
            os.kill(os.getpid(), signal.SIGKILL)  # the rows are committed; nobody was told
    bulk_import.commit_rows = commit_then_die
    if STEP == "compaction":  # merging a table's small fragments (and dropping old versions) after a write
        import threading
        from vpm.backends import engine

        engine.SMALL_FRAGMENTS_BEFORE_COMPACTION = 2  # due after a table's second write, however busy the machine
        compact = engine.compact_when_due

        def compact_here_and_die(table, *, after=None, wait=False):
            if int(table.version) >= 3:  # created, then written twice: this run compacts
                threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGKILL)).start()  # during it, or just after
            compact(table, after=after, wait=True)
        engine.compact_when_due = compact_here_and_die
    sys.exit(main(["import", {source!r}]))
""")


def killed_import(source: Path, step: str, at: int = 2) -> list[str]:
    return vpm_command(code=KILLED_IMPORT.format(step=step, at=at, source=str(source)))


def imported_at_least(photos: int):
    """Kill once the progress reports `photos` photos imported by this run."""
    def seen(line: str) -> bool:
        found = IMPORTED.search(line)
        return bool(found) and int(found.group(4)) >= photos

    return seen


@pytest.mark.parametrize("kill", ["watched-1-batch", "watched-2-batches", "inside-before-rows", "inside-after-rows",
                                  "inside-compaction"])
def test_a_killed_import_resumes_with_nothing_lost_or_duplicated(search_settings, tmp_path, kill):
    source, want = write_csv_source(tmp_path / "source")
    total = sum(len(shas) for shas in want.values())
    if kill.startswith("watched-"):
        batches = int(kill.split("-")[1])
        lines = run_until_killed(vpm_command("import", str(source)), tmp_path, imported_at_least(batches * BATCH))
    else:
        lines = run_until_killed(killed_import(source, kill.removeprefix("inside-")), tmp_path)

    after_kill = products_by_id(fresh_matcher(search_settings))
    kept_photos = sum(len(p.photos) for p in after_kill.values())
    reported = last(IMPORTED, lines)
    if reported is not None:  # no product reported added may be lost
        assert len(after_kill) >= reported[2] and kept_photos >= reported[3]
    assert 0 < len(after_kill) < PRODUCTS
    for pid, product in after_kill.items():  # a product lands whole, with all its photos, or not at all
        assert sorted(photo.sha256 for photo in product.photos) == sorted(want[pid])
    assert_every_photo_has_its_vector_and_keypoints(fresh_matcher(search_settings))

    report, _stderr = run_json(tmp_path, "import", str(source))

    assert report["duplicates"] == kept_photos  # the rerun says what it skipped: every photo already there
    assert all(i["reason"].startswith("duplicate: the same image is already product") for i in report["skipped"])
    assert {p["id"] for p in report["imported"]} == set(want) - set(after_kill)
    assert report["photos"] == total - kept_photos and report["failed"] == []
    assert_catalog_is(fresh_matcher(search_settings), want)


def test_an_import_killed_twice_then_run_again_holds_each_product_once(search_settings, tmp_path):
    source, want = write_csv_source(tmp_path / "source")
    run_until_killed(vpm_command("import", str(source)), tmp_path, imported_at_least(BATCH))
    run_until_killed(killed_import(source, "before-rows", at=1), tmp_path)  # its first new batch never lands
    report, _stderr = run_json(tmp_path, "import", str(source))
    assert report["duplicates"] > 0 and report["imported"]
    assert_catalog_is(fresh_matcher(search_settings), want)


def write_zip_source(path: Path, count: int = 96) -> dict[str, tuple[str, str]]:
    """A zipped folder of `count` photos in three category folders, without ids (each photo becomes a product
    named after its file); returns {product name: (category, the photo's SHA-256)}."""
    import hashlib
    import zipfile

    want = {}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for i in range(count):
            data, category = make_product_photo(9000 + i, size=48), ("Mugs", "Lamps", "Bags")[i % 3]
            archive.writestr(f"shop/{category}/item_{i:03d}.png", data)
            want[f"Item {i:03d}"] = (category, hashlib.sha256(data).hexdigest())
    return want


def test_a_killed_import_of_a_zip_without_ids_resumes_with_each_photo_once(search_settings, tmp_path):
    """Without ids, a product is known by its photo's bytes: the rerun must not add a second product for a photo
    the killed run had added."""
    source = tmp_path / "shop.zip"
    want = write_zip_source(source)
    run_until_killed(vpm_command("import", str(source)), tmp_path, imported_at_least(BATCH))
    kept = len(products_by_id(fresh_matcher(search_settings)))
    assert 0 < kept < len(want)

    report, _stderr = run_json(tmp_path, "import", str(source))

    assert report["duplicates"] == kept and len(report["imported"]) == len(want) - kept
    matcher = fresh_matcher(search_settings)
    found = products_by_id(matcher).values()
    names = Counter(p.name for p in found)
    assert sorted(names) == sorted(want) and set(names.values()) == {1}
    assert {p.name: (p.category, p.photos[0].sha256) for p in found} == want
    assert all(len(p.photos) == 1 for p in found)
    assert_every_photo_has_its_vector_and_keypoints(matcher)


def leftovers_of_a_killed_creation(settings, table: str, tmp_path: Path, *, manifest_started: bool) -> None:
    """What a process killed while LanceDB created `table` leaves: LanceDB writes the table's transaction file,
    then its first version file (locally a temporary `<name>.manifest#1`, then linked to its name). Made here by a
    real creation in a scratch folder, of which only the files written before the kill are copied over."""
    import lancedb
    import pyarrow as pa

    from vpm.core.storage import make_storage

    scratch = lancedb.connect(tmp_path / "scratch")
    scratch.create_table(table, schema=pa.schema([pa.field("id", pa.string())]))
    storage, folder = make_storage(settings), tmp_path / "scratch" / f"{table}.lance"
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith("_transactions/"):
            storage.put(f"{settings.metadata_prefix}{table}.lance/{rel}", path.read_bytes())
        elif manifest_started and rel.endswith(".manifest"):
            storage.put(f"{settings.metadata_prefix}{table}.lance/{rel}#1", path.read_bytes())


def test_an_import_killed_while_it_created_the_catalog_table_runs_again(search_settings, tmp_path):
    """The first import into an empty catalog creates its tables. Killed before a table's first version was
    committed, the table never held anything: the import runs again and every command works, rather than all of
    them refusing a table "that cannot be opened"."""
    source, want = write_csv_source(tmp_path / "source")
    leftovers_of_a_killed_creation(search_settings, "products", tmp_path, manifest_started=False)

    report, _stderr = run_json(tmp_path, "import", str(source))

    assert len(report["imported"]) == PRODUCTS
    assert_catalog_is(fresh_matcher(search_settings), want)


@pytest.mark.parametrize("backend", ["local"], indirect=True)  # on S3 a version file is one conditional PUT
def test_an_import_killed_while_the_first_version_file_was_half_written_runs_again(search_settings, tmp_path):
    source, want = write_csv_source(tmp_path / "source")
    leftovers_of_a_killed_creation(search_settings, "products", tmp_path, manifest_started=True)

    report, _stderr = run_json(tmp_path, "import", str(source))

    assert len(report["imported"]) == PRODUCTS
    assert_catalog_is(fresh_matcher(search_settings), want)


def test_an_import_killed_while_fitting_the_score_fits_it_when_run_again(search_settings, tmp_path):
    """The score is fitted on the catalog after an import (derived data, like vectors): an import killed during
    that fit has every product in, and its rerun, which finds only duplicates, still fits the score."""
    source, want = write_csv_source(tmp_path / "source")
    run_until_killed(vpm_command("import", str(source)), tmp_path, lambda line: "fitting the score" in line)
    killed = fresh_matcher(search_settings)
    assert sorted(products_by_id(killed)) == sorted(want)
    assert killed.calibration().score.source not in ("catalog", "views")  # the fit never landed

    report, _stderr = run_json(tmp_path, "import", str(source))

    assert report["imported"] == [] and report["duplicates"] == sum(len(shas) for shas in want.values())
    fitted = fresh_matcher(search_settings).calibration().score
    assert fitted.source == "catalog" and fitted.photos == report["duplicates"]


# -------------------------------------------------------------------------------------------------- index


def catalog_without_derived_data(settings, count: int = 96) -> dict[str, set[str]]:
    """`count` one-photo products written as a catalog of an older model would be: files and rows, no vector,
    no keypoints (what `vpm index` fills in)."""
    matcher = Matcher(settings, embedder=None)
    products, want = [], {}
    for i in range(count):
        image = matcher.decode(make_product_photo(7000 + i, size=48), f"p{i}.png")
        pid = f"p{i:03d}"
        prepared = photos.prepare(image, pid, settings.s3_image_prefix, settings.s3_thumbnail_prefix)
        photos.store(matcher.storage, prepared, [])
        products.append(validate_product(id=pid, name=f"Product {i}", category="Test", photos=[prepared.photo]))
        want[pid] = {prepared.photo.sha256}
    assert matcher.catalog.add(products) == []
    engine.forget()
    return want


def index_reached(pattern: re.Pattern, photos: int):
    def seen(line: str) -> bool:
        found = pattern.search(line)
        return bool(found) and int(found.group(1)) >= photos

    return seen


KILLED_INDEX = textwrap.dedent("""
    import os, signal, sys
    from vpm.backends import {module} as module
    from vpm.faces.cli import main

    upsert = module.{store}.upsert
    calls = []

    def upsert_then_die(self, entries):
        upsert(self, entries)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # the second batch is committed; nothing after it ran
    module.{store}.upsert = upsert_then_die
    sys.exit(main(["index"]))
""")


@pytest.mark.parametrize("kill", ["vectors-after-1-batch", "vectors-second-commit", "keypoints-after-1-batch",
                                  "keypoints-second-commit"])
def test_a_killed_index_run_resumes_embedding_only_what_is_missing(search_settings, tmp_path, kill):
    want = catalog_without_derived_data(search_settings)
    photos_in_catalog = len(want)
    if kill == "vectors-after-1-batch":
        lines = run_until_killed(vpm_command("index"), tmp_path, index_reached(EMBEDDED, BATCH))
    elif kill == "keypoints-after-1-batch":
        lines = run_until_killed(vpm_command("index"), tmp_path, index_reached(KEYPOINTS, BATCH))
    else:
        module, store = (("lance_vectors", "LanceVectorIndex") if kill.startswith("vectors")
                         else ("lance_features", "LanceFeatureStore"))
        lines = run_until_killed(vpm_command(code=KILLED_INDEX.format(module=module, store=store)), tmp_path)

    killed = fresh_matcher(search_settings)
    assert sorted(products_by_id(killed)) == sorted(want)  # the products are the data: untouched
    with_vectors = Counter(table_keys(killed.vectors.table, "photo_key")) if killed.has_vector_index(
        killed.embedder.model_id) else Counter()
    assert not [k for k, n in with_vectors.items() if n > 1]
    reported = last(EMBEDDED, lines)
    if reported is not None:  # what was reported embedded is stored
        assert len(with_vectors) >= reported[0]
    vectors_before = len(with_vectors)
    keypoints_before = killed.features.count() if killed.has_features_table() else 0

    status, stderr = run_json(tmp_path, "index")

    assert status["ok"] and status["vectors"] == status["photos"] == photos_in_catalog
    progress = [line for line in re.split(r"[\r\n]", stderr) if line.strip()]
    # The rerun says how many photos it works on and how many it found done (nothing when all are done).
    total = photos_in_catalog
    for before, what, done in ((vectors_before, "embedding", "have a vector already"),
                               (keypoints_before, "finding the keypoints of", "done already")):
        said = f"{what} {total - before} of {total} photos ({before} {done})" if before else f"{what} {total} photos"
        if before < total:
            assert any(said in line for line in progress), (said, progress[-6:])
        else:
            assert not any(what in line for line in progress), progress[-6:]
    assert_catalog_is(fresh_matcher(search_settings), want)
