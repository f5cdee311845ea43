"""The crowd bench's options, figures and catalog bookkeeping, without a browser or a server: what it prints must say
what happened, and it must never write into a folder it did not prepare."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("bench_app_load", None)
    import bench_app_load

    return bench_app_load


def test_the_options_default_to_the_issues_crowd_sizes(bench):
    args = bench.parse_args([])
    assert args.sessions == [1, 5, 10, 20]
    assert args.catalog is None and args.products is None and args.sync is True and args.env == []


def test_the_options_take_counts_a_catalog_folder_and_app_settings(bench, tmp_path):
    args = bench.parse_args(["--sessions", "1,3", "--catalog", str(tmp_path), "--products", "5", "--no-sync",
                             "--env", "VPM_SEARCH_CONCURRENCY=1", "--env", "LOG_LEVEL=DEBUG"])
    assert args.sessions == [1, 3] and args.catalog == tmp_path and args.products == 5 and args.sync is False
    assert args.env == [("VPM_SEARCH_CONCURRENCY", "1"), ("LOG_LEVEL", "DEBUG")]


@pytest.mark.parametrize(("argv", "message"), [
    (["--sessions", "1,x"], "whole numbers separated by commas"),
    (["--sessions", "0,5"], "counts of at least 1"),
    (["--sessions", "5,5"], "names a count twice"),
    (["--products", "0"], "at least 1"),
    (["--env", "lower=1"], "NAME=VALUE with an upper-case NAME"),
    (["--env", "NOEQUALS"], "NAME=VALUE"),
])
def test_bad_options_stop_with_what_is_wrong(bench, capsys, argv, message):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_percentiles_are_nearest_rank(bench):
    values = [float(n) for n in range(1, 21)]
    assert bench.percentile(values, 50) == 10.0
    assert bench.percentile(values, 95) == 19.0
    assert bench.percentile([3.0], 95) == 3.0
    assert bench.percentile([], 50) != bench.percentile([], 50)  # NaN: nothing measured


def _row(bench, n, seconds, errors=(), queued=0, rss=800.0, loads=1):
    visits = [bench.Visit(page_s=1.0, results_s=s, queued=i < queued) for i, s in enumerate(seconds)]
    visits += [bench.Visit(page_s=1.0, error=e) for e in errors]
    return bench.Row(n, visits, rss, loads)


def test_the_table_gives_each_crowds_figures_and_the_ratio_to_one_alone(bench):
    rows = [_row(bench, 1, [0.4]), _row(bench, 10, [1.0] * 9 + [3.6], queued=8, rss=1100.0)]
    lines = bench.report(rows)
    header, one, ten = lines[0].split(), lines[2].split(), lines[3].split()
    assert header[:5] == ["sessions", "ok", "errors", "queued", "page"]
    assert one == ["1", "1", "0", "0", "1.00", "0.40", "0.40", "1.0", "800", "1"]
    assert ten == ["10", "10", "0", "8", "1.00", "1.00", "3.60", "9.0", "1100", "1"]
    assert "target: 10 sessions at once, no error, p95 <= 10x p50 of one alone: met (0 errors, 9.0x)" in lines
    assert "model loaded once a server for all its sessions (st.cache_resource)" in lines


def test_an_error_or_a_slow_crowd_misses_the_target_and_the_errors_are_listed(bench):
    timeout = "TimeoutError: Timeout 300000ms exceeded."
    slow = bench.report([_row(bench, 1, [0.4]), _row(bench, 10, [4.5] * 9 + [5.2])])
    failed = bench.report([_row(bench, 1, [0.4]), _row(bench, 10, [1.0] * 8, errors=[timeout, timeout])])

    assert "target: 10 sessions at once, no error, p95 <= 10x p50 of one alone: MISSED (0 errors, 13.0x)" in slow
    assert failed[3].split()[:3] == ["10", "8", "2"]
    assert f"  N=10: 2 x {timeout}" in failed
    assert any(line.startswith("target:") and "MISSED (2 errors" in line for line in failed)


def test_without_one_alone_and_ten_at_once_the_target_is_not_measured(bench):
    lines = bench.report([_row(bench, 3, [1.0, 1.2, 1.4])])
    assert lines[2].split()[7] == "n/a"  # no ratio without N=1
    assert lines[-2].endswith("not measured (needs N=1 and N=10 in --sessions)")


def test_a_model_loaded_twice_is_reported(bench):
    lines = bench.report([_row(bench, 5, [1.0] * 5, loads=2)])
    assert lines[-1] == "model loads a server: [2] (expected 1: the app caches it with st.cache_resource)"


def test_the_queries_are_photos_held_out_of_the_catalog_else_its_own(bench, tmp_path):
    rows = bench.sample_rows(2)
    ids = list(dict.fromkeys(r["id"] for r in rows))
    assert len(ids) == 2 and len(rows) >= 2
    in_catalog = Path(rows[0]["image"]).name
    (tmp_path / "metadata.csv").write_text(
        "file,product_id\n"
        f"{in_catalog},{ids[0]}\n"  # in the catalog: not a query
        f"held-out.jpg,{ids[0]}\n"
        "other.jpg,some-other-product\n"  # not in the catalog
        f"missing.jpg,{ids[1]}\n"  # listed, but the file is not there
    )
    for name in (in_catalog, "held-out.jpg", "other.jpg"):
        (tmp_path / name).write_bytes(b"jpeg")

    assert bench.query_photos(rows, tmp_path) == [tmp_path / "held-out.jpg"]
    assert bench.query_photos(rows, tmp_path / "nowhere") == [bench.SAMPLE / r["image"] for r in rows]


def test_a_folder_it_did_not_prepare_is_never_written_to(bench, tmp_path):
    folder = tmp_path / "someone-elses"
    folder.mkdir()
    (folder / "products.lance").write_text("precious")
    with pytest.raises(SystemExit) as refused:
        bench.prepare_catalog(folder, 5, "efficientnet-lite0", {})
    assert "is not empty and was not prepared by this bench" in str(refused.value)
    assert sorted(p.name for p in folder.iterdir()) == ["products.lance"]


def test_a_prepared_catalog_is_reused_only_with_the_same_model_and_size(bench, tmp_path):
    (tmp_path / bench.MARKER).write_text('{"model": "efficientnet-lite0", "products": 5, "photos": 15}')
    made = bench.prepare_catalog(tmp_path, None, "efficientnet-lite0", {})
    assert (made["products"], made["photos"]) == (5, 15)
    assert bench.prepare_catalog(tmp_path, 5, "efficientnet-lite0", {}) == made
    for products, model in ((10, "efficientnet-lite0"), (5, "clip-ViT-B-32")):
        with pytest.raises(SystemExit, match="prepared with --model efficientnet-lite0 --products 5"):
            bench.prepare_catalog(tmp_path, products, model, {})


def test_the_servers_memory_counts_its_whole_process_tree(bench):
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        alone = bench.tree_rss_bytes(child.pid)
        with_me = bench.tree_rss_bytes(os.getpid())
    finally:
        child.communicate(b"")
    assert alone > 0
    assert with_me > alone  # this process and the child below it
    assert bench.tree_rss_bytes(child.pid) == 0  # gone
