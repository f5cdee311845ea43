"""`python -m vpm ...` on both backends: add / list / delete / health, and search / import / index.

Commands run in-process through vpm.faces.cli.main (the same code `python -m vpm` runs), with settings from the
environment the fixtures set, and the tiny CLIP as VPM_MODEL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vpm.models.embeddings import DEFAULT_DESCRIPTOR


@pytest.fixture
def photos(tmp_path, product_photo) -> dict[str, Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = {}
    for name, seed in (("mug", 1), ("bag", 2), ("lamp", 3)):
        paths[name] = folder / f"{name}.png"
        paths[name].write_bytes(product_photo(seed))
    return paths


@pytest.fixture
def stocked_cli(cli, photos):
    for name, category in (("mug", "Mugs"), ("bag", "Bags"), ("lamp", "Lighting")):
        code, _, err = cli("add", photos[name], "--name", name.title(), "--category", category, "--id", name)
        assert code == 0, err
    return cli


# --- add / list / delete / health ------------------------------------------------------------------------------


def test_add_list_and_delete_a_product(cli, photos):
    code, out, _ = cli("add", photos["mug"], "--name", "Red mug", "--category", "Mugs", "--price", "9.5",
                       "--id", "red-mug", "--description", "ceramic", "--json")
    assert code == 0
    added = json.loads(out)
    assert (added["id"], added["name"], added["category"], added["price"]) == ("red-mug", "Red mug", "Mugs", 9.5)
    assert added["image_url"] and added["thumbnail_url"]

    code, out, _ = cli("list")
    assert code == 0 and "red-mug  Red mug [Mugs]  $9.50" in out and "1-1 of 1 product" in out
    code, out, _ = cli("list", "--category", "mugs", "--json")
    listed = json.loads(out)
    assert [p["id"] for p in listed["items"]] == ["red-mug"] and listed["total"] == 1
    assert [i["key"] for i in listed["items"][0]["images"]] == [added["image_key"]]
    code, out, _ = cli("list", "--category", "Bags", "--json")
    assert json.loads(out)["items"] == []

    code, out, _ = cli("delete", "red-mug", "--json")
    assert code == 0 and json.loads(out) == {"deleted": "red-mug"}
    code, out, err = cli("delete", "red-mug")
    assert code == 1 and out == "" and "no product with id 'red-mug'" in err
    code, out, _ = cli("list")
    assert "the catalog is empty" in out


def test_add_refuses_bad_input_on_stderr(cli, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    code, out, err = cli("add", notes, "--name", "X", "--category", "Y")
    assert code == 1 and out == "" and "notes.png is not an image" in err
    code, out, err = cli("add", tmp_path / "missing.png", "--name", "X", "--category", "Y")
    assert code == 1 and "cannot read" in err and "missing.png" in err


def test_health_checks_storage_model_and_index(stocked_cli):
    code, out, _ = stocked_cli("health", "--json")
    report = json.loads(out)
    assert code == 0 and report["status"] == "pass"
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["model"]["status"] == "pass" and "tiny-clip" in checks["model"]["detail"]
    assert checks["index"]["status"] == "pass" and "3/3" in checks["index"]["detail"]
    code, out, _ = stocked_cli("health")
    assert "[PASS] index: vectors for 3/3 photos of 3 products" in out and "overall: pass" in out


def test_health_fails_on_a_missing_photo_file(stocked_cli, search_settings):
    """The Storage browser's consistency figures, from the command line: exit 1 while a product's photo is gone."""
    from vpm.core.matcher import Matcher
    from vpm.core.storage import make_storage

    mug = Matcher(search_settings).catalog.get("mug")
    make_storage(search_settings).delete(mug.image_key)

    code, out, _ = stocked_cli("health")

    assert code == 1 and "overall: fail" in out
    assert f"[FAIL] catalog files: 1 file that products point at is missing: {mug.image_key} (image of mug)" in out
    assert "restore the missing files" in out


@pytest.mark.parametrize("backend", ["local"], indirect=True)  # a file's age can be set on a local disk only
def test_health_warns_of_a_file_no_product_uses(stocked_cli, search_settings):
    import os
    import time

    orphan = search_settings.vpm_data_dir / "images" / "left-over.png"
    orphan.write_bytes(b"x" * 10)
    old = time.time() - 3600  # not a product being added right now
    os.utime(orphan, (old, old))

    code, out, _ = stocked_cli("health", "--json")

    report = json.loads(out)
    files = next(c for c in report["checks"] if c["name"] == "catalog files")
    assert code == 0 and report["status"] == "warn"
    assert files["status"] == "warn"
    assert "1 orphan file that no product uses (10 B): images/left-over.png" in files["detail"]
    assert "Storage browser" in files["fix"]


# --- search ----------------------------------------------------------------------------------------------------


def test_search_json_names_the_model_and_ranks_the_products_own_photo_first(stocked_cli, photos):
    code, out, _ = stocked_cli("search", photos["bag"], "--threshold", "-1", "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) >= {"model", "took_ms", "results", "query"}
    assert doc["model"].startswith("tiny-clip") and doc["query"] == "bag.png"
    assert isinstance(doc["took_ms"], float)
    first = doc["results"][0]
    assert set(first) >= {"id", "name", "category", "score", "image_url"}
    assert (first["id"], first["name"], first["category"]) == ("bag", "Bag", "Bags")
    assert first["signals"]["image"] == pytest.approx(1.0, abs=1e-4)  # the very same photo
    assert 0.9 <= first["score"] <= 1 and all(r["score"] < first["score"] for r in doc["results"][1:])
    assert len(doc["results"]) == 3


def test_search_prints_a_readable_table(stocked_cli, photos):
    code, out, _ = stocked_cli("search", photos["lamp"], "--threshold", "-1", "--top-k", "2")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("query: lamp.png · model tiny-clip")
    assert "verified by keypoints" in lines[0]  # VPM_RERANK is on by default
    assert lines[1].split() == ["#", "score", "name", "category", "id", "why"]
    first, second = lines[2].split(), lines[3].split()
    assert first[:5] == ["1", "99%", "Lamp", "Lighting", "lamp"] and first[5:8] == ["looks", "100%", "alike"]
    assert int(second[1].rstrip("%")) <= 99  # in the order of the score shown
    assert len(lines) == 4

    code, out, _ = stocked_cli("search", photos["lamp"], "--threshold", "-1", "--top-k", "2", "--no-rerank")
    lines = out.strip().splitlines()
    assert "verified" not in lines[0] and "keypoints" not in out


def test_search_says_how_close_it_came_when_nothing_passes_the_threshold(stocked_cli, tmp_path, product_photo):
    query = tmp_path / "other.png"
    query.write_bytes(product_photo(77))
    code, out, _ = stocked_cli("search", query, "--threshold", "1")
    assert code == 0
    assert "no product scored at least 100%; the closest is " in out and "lower --threshold" in out


def test_several_images_are_searched_in_one_batch_each_with_its_query(stocked_cli, photos):
    code, out, _ = stocked_cli("search", photos["lamp"], photos["mug"], "--threshold", "-1", "--top-k", "1", "--json")
    assert code == 0
    docs = json.loads(out)
    assert [d["query"] for d in docs] == ["lamp.png", "mug.png"]
    assert [d["results"][0]["id"] for d in docs] == ["lamp", "mug"]


def test_search_by_text_and_by_category(stocked_cli, photos):
    code, out, _ = stocked_cli("search", "--text", "a red mug", "--threshold", "-1", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["query"] == "a red mug" and {r["id"] for r in doc["results"]} == {"mug", "bag", "lamp"}
    code, out, _ = stocked_cli("search", photos["mug"], "--threshold", "-1", "--category", "bags",
                               "--category", "Lighting", "--json")
    assert {r["category"] for r in json.loads(out)["results"]} == {"Bags", "Lighting"}


def test_search_by_url_refuses_internal_addresses_with_the_reason(stocked_cli):
    code, out, err = stocked_cli("search", "--url", "http://169.254.169.254/latest/meta-data/", "--json")
    assert code == 1 and out == ""
    assert err.startswith("error: ") and "169.254.169.254" in err


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "give exactly one of"),
        (("x.png", "--url", "https://example.com/a.jpg"), "give exactly one of"),
        (("--text", "mug", "--text-weight", "2"), "--text-weight weighs --text beside a photo"),
        (("--text", "mug", "--threshold", "80"), "a score between 0 and 1"),
        (("--text", "mug", "--top-k", "0"), "--top-k must be at least 1"),
        (("nowhere.png",), "cannot read nowhere.png"),
    ],
)
def test_search_usage_errors_go_to_stderr(cli, args, message):
    code, out, err = cli("search", *args)
    assert code == 1 and out == "" and message in err


def test_text_search_with_the_offline_fallback_model_says_why_not(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("VPM_MODEL", "clip-ViT-B-32")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    code, out, err = cli("search", "--text", "red mug")
    assert code == 0 and "answered by: words in names and package text" in out and "huggingface" not in err


# --- import ----------------------------------------------------------------------------------------------------


def test_import_prints_a_json_report_and_progress_on_stderr(cli, tmp_path, product_photo):
    folder = tmp_path / "catalog"
    (folder / "mugs").mkdir(parents=True)
    (folder / "mugs" / "red_mug.png").write_bytes(product_photo(1))
    (folder / "lamp.png").write_bytes(product_photo(2))
    (folder / "broken.png").write_bytes(product_photo(3)[:50])
    code, out, err = cli("import", folder, "--json")
    report = json.loads(out)
    assert code == 1  # one image failed
    imported = sorted((p["name"], p["category"]) for p in report["imported"])
    assert imported == [("Lamp", "Uncategorized"), ("Red Mug", "mugs")]
    assert [f["source"] for f in report["failed"]] == ["broken.png"]
    assert report["summary"] == "imported 2 products (2 photos), skipped 0 duplicates, failed 1"
    assert "3/3" in err  # the progress bar

    (folder / "broken.png").unlink()
    code, out, _ = cli("import", folder)
    assert code == 0
    assert out.splitlines()[0] == f"{folder}: imported 0 products (0 photos), skipped 2 duplicates, failed 0"
    assert "duplicate" in out


def test_import_of_a_malformed_csv_fails_with_the_reason(cli, tmp_path):
    csv_path = tmp_path / "items.csv"
    csv_path.write_text("picture,name\nx.png,X\n")
    code, out, err = cli("import", csv_path)
    assert code == 1 and out == ""
    assert "items.csv is missing the required columns image, category" in err


# --- index -----------------------------------------------------------------------------------------------------


def test_index_reports_and_repairs_missing_vectors(stocked_cli, storage, search_settings):
    from vpm.backends import engine

    code, out, _ = stocked_cli("index", "--check", "--json")
    status = json.loads(out)
    assert code == 0 and (status["products"], status["vectors"], status["missing"]) == (3, 3, 0)

    for obj in list(storage.iter_objects(search_settings.metadata_prefix + "vectors-")):
        storage.delete(obj.key)  # the vectors are lost (derived data: they can be made again)
    engine.forget()
    code, out, _ = stocked_cli("index", "--check")
    assert code == 1 and "vectors for 0/3 photos of 3 products; 3 missing (run python -m vpm index)" in out

    code, out, err = stocked_cli("index", "--json")
    status = json.loads(out)
    assert code == 0 and status["vectors"] == 3 and status["missing"] == 0 and status["ok"]
    assert "3/3" in err

    code, out, _ = stocked_cli("index", "--rebuild", "--json")
    assert code == 0 and json.loads(out)["vectors"] == 3




# --- several photos, pages, export ---------------------------------------------------------------------------


def test_several_images_make_one_product_and_an_existing_id_gets_more(cli, photos, tmp_path, product_photo):
    code, out, err = cli("add", photos["mug"], photos["bag"], "--name", "Gift set", "--category", "Gifts",
                         "--id", "gift", "--json")
    assert code == 0, err
    assert len(json.loads(out)["images"]) == 2
    side = tmp_path / "side.png"
    side.write_bytes(product_photo(77))
    code, out, err = cli("add", side, "--id", "gift")
    assert code == 0 and "added 1 photo to gift: Gift set (3 in all)" in out
    code, out, err = cli("add", side, "--id", "gift", "--name", "Renamed")
    assert code == 1 and "takes only IMAGE... --id" in err
    code, out, err = cli("add", photos["lamp"], "--id", "new-one")
    assert code == 1 and "--name and --category required" in err


def test_a_photo_already_in_the_catalog_is_refused_unless_asked(cli, photos):
    assert cli("add", photos["mug"], "--name", "Mug", "--category", "Mugs", "--id", "mug")[0] == 0
    code, _out, err = cli("add", photos["mug"], "--name", "Copy", "--category", "Mugs")
    assert code == 1 and "already in the catalog" in err and "Mug (mug)" in err
    code, _out, err = cli("add", photos["mug"], "--name", "Copy", "--category", "Mugs", "--allow-duplicate")
    assert code == 0, err


def test_remove_photo_keeps_the_product_and_refuses_the_last_one(cli, photos):
    code, out, _ = cli("add", photos["mug"], photos["bag"], "--name", "Set", "--category", "Gifts", "--id", "set",
                       "--json")
    first, second = [i["key"] for i in json.loads(out)["images"]]
    code, out, _ = cli("remove-photo", "set", first)
    assert code == 0 and "1 photos left" in out
    code, _out, err = cli("remove-photo", "set", second)
    assert code == 1 and "only photo" in err


def test_list_pages_through_the_catalog(cli, tmp_path, product_photo):
    for i in range(7):
        path = tmp_path / f"{i}.png"
        path.write_bytes(product_photo(100 + i))
        assert cli("add", path, "--name", f"Item {i}", "--category", "Odd" if i % 2 else "Even", "--id", f"i{i}")[0] == 0
    code, out, _ = cli("list", "--limit", "3")
    assert code == 0 and "1-3 of 7 products" in out and "next page: --offset 3" in out
    assert [line.split()[0] for line in out.splitlines()[:3]] == ["i6", "i5", "i4"]
    code, out, _ = cli("list", "--limit", "3", "--offset", "6", "--json")
    assert [p["id"] for p in json.loads(out)["items"]] == ["i0"]
    code, out, _ = cli("list", "--name", "item 3", "--json")
    assert [p["id"] for p in json.loads(out)["items"]] == ["i3"]
    with pytest.raises(SystemExit) as usage:
        cli("list", "--limit", "0")
    assert usage.value.code == 2


def test_list_refuses_a_page_larger_than_the_api_allows(cli, capsys):
    with pytest.raises(SystemExit) as usage:
        cli("list", "--limit", "1000000000")
    assert usage.value.code == 2
    assert "--limit: must be at most 1000 (one page), got 1000000000; see the next page with --offset" in (
        capsys.readouterr().err)
    assert cli("list", "--limit", "1000")[0] == 0


def test_an_absurd_price_is_refused_and_one_stored_before_reads_in_a_few_characters(cli, photos, capsys,
                                                                                     search_settings):
    with pytest.raises(SystemExit) as usage:
        cli("add", photos["mug"], "--name", "Mug", "--category", "Mugs", "--price", "1e308")
    assert usage.value.code == 2
    assert "'1e308' is more than the largest price accepted (1,000,000,000)" in capsys.readouterr().err

    assert cli("add", photos["mug"], "--name", "Mug", "--category", "Mugs", "--id", "mug", "--price", "9.5")[0] == 0
    from vpm.core.matcher import Matcher

    # A catalog written before prices were capped: the row holds 1e308.
    Matcher(search_settings).catalog.table.update(where="id = 'mug'", values={"price": 1e308})
    code, out, _ = cli("list")
    assert code == 0 and "mug  Mug [Mugs]  $1.00e+308" in out, out
    assert max(len(line) for line in out.splitlines()) < 80
    assert json.loads(cli("list", "--json")[1])["items"][0]["price"] == 1e308  # the data as it is


def test_export_writes_a_products_json_other_tools_read(stocked_cli, tmp_path):
    target = tmp_path / "out" / "products.json"
    target.parent.mkdir()
    code, out, _ = stocked_cli("export", target)
    assert code == 0 and "wrote 3 products" in out
    document = json.loads(target.read_text())
    assert sorted(p["id"] for p in document["products"]) == ["bag", "lamp", "mug"]
    assert all(p["image_key"] and p["image_sha256"] for p in document["products"])
    assert not (tmp_path / "out" / "products.json.partial").exists()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_demo_loads_the_sample_and_a_second_run_adds_nothing(cli, small_sample):
    code, out, err = cli("demo")
    assert code == 0, err
    assert out.splitlines() == ["Loaded the sample catalog: imported 2 products (3 photos), skipped 0 duplicates, "
                                "failed 0. 2 products in the catalog now; try `python -m vpm search PHOTO`"]
    code, out, _ = cli("demo")
    assert code == 0 and "imported 0 products (0 photos), skipped 3 duplicates" in out


def test_log_lines_go_through_tqdm_and_never_break_a_progress_bar(monkeypatch, capsys):
    """A warning logged while a bar is drawn comes out on its own line, and the bar is drawn again after it."""
    import argparse
    import logging
    import sys

    from vpm.faces import cli as cli_module
    from vpm.faces.cli_progress import ProgressBar

    def command(args):
        with ProgressBar("img") as bar:
            bar(1, 3)
            logging.getLogger("vpm.test").warning("a log line in the middle")
            bar(3, 3)
        return 0

    handler = logging.StreamHandler(sys.stderr)  # the console handler configure_logging installs
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    parser = cli_module.build_parser()
    monkeypatch.setattr(cli_module, "build_parser", lambda: parser)
    monkeypatch.setattr(cli_module, "configure_logging", lambda settings: None)
    monkeypatch.setattr(parser, "parse_args", lambda argv: argparse.Namespace(func=command, command="x"))
    assert cli_module.main([]) == 0
    err = capsys.readouterr().err
    before, _, after = err.partition("a log line in the middle")
    assert after, err
    assert before.endswith(("\n", "\r")) or before.rstrip(" ").endswith("\r"), repr(before[-80:])
    assert "3/3" in after  # the bar carried on below the line


# --- what a one-shot command prints --------------------------------------------------------------------------------


def vpm_process(*args, **env: str):
    """`python -m vpm ARGS` as a real process (the console handler is the CLI's own, not pytest's)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": str(repo), **env}
    return subprocess.run([sys.executable, "-m", "vpm", *map(str, args)], env=environment, capture_output=True,
                          text=True, timeout=300, cwd=repo)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_one_shot_command_prints_its_answer_and_no_log_lines_unless_log_level_asks(search_settings, photos):
    added = vpm_process("add", photos["mug"], "--name", "Red mug", "--category", "Mugs", "--id", "mug")

    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("added mug: Red mug [Mugs] with 1 photo")
    assert not [line for line in added.stderr.splitlines() if " INFO " in line or "WARNING" in line], added.stderr

    listed = vpm_process("list", LOG_LEVEL="INFO")  # asked for: the log as before
    assert listed.returncode == 0 and "mug  Red mug [Mugs]" in listed.stdout


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_offline_fallback_is_not_a_warning_on_every_command(search_settings, photos, tmp_path):
    """It describes the configuration, not the command: health says it (with the fix); search names its model."""
    offline = {"VPM_MODEL": "clip-ViT-B-32", "HF_HUB_CACHE": str(tmp_path / "empty-hf-cache"), "HF_HUB_OFFLINE": "1"}

    added = vpm_process("add", photos["bag"], "--name", "Bag", "--category", "Bags", "--id", "bag", **offline)
    assert added.returncode == 0, added.stderr
    assert "unavailable" not in added.stderr and "WARNING" not in added.stderr and "INFO" not in added.stderr

    found = vpm_process("search", photos["bag"], **offline)
    assert found.returncode == 0, found.stderr
    assert f"model {DEFAULT_DESCRIPTOR.model_id}" in found.stdout.splitlines()[0]
    assert "unavailable" not in found.stderr
