"""`python -m vpm migrate` and `python -m vpm costs`: in-process (vpm.faces.cli.main) and as real subprocesses
(the integration guide's commands, and kill -9 half-way), always against moto's HTTP server, since LanceDB's
own client writes the bucket's tables."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpm.faces.cli import main

from conftest import migrate_killed_after

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def files_in(keys) -> set[str]:
    """Photos and thumbnails, without the catalog tables."""
    return {k for k in keys if not k.startswith("metadata/")}


# -------------------------------------------------------------------------------------------- --check-only


def test_check_only_prints_one_line_per_check_and_exits_0(local_catalog, capsys):
    local_catalog.add(2)
    code, out, _ = run(capsys, "migrate", "--check-only")
    assert code == 0
    assert "[PASS] bucket exists" in out and "[PASS] write probe" in out and "[PASS] delete probe" in out
    assert "[WARN] bucket versioning: versioning is off" in out
    assert "fix: turn it on" in out
    assert "[PASS] local catalog consistent" in out and "[PASS] local vectors" in out
    assert out.strip().endswith("overall: warn")
    assert local_catalog.bucket_keys() == set()


def test_check_only_missing_bucket_exits_1_with_the_mb_command(local_catalog, capsys, monkeypatch):
    local_catalog.add(1)
    monkeypatch.setenv("S3_BUCKET_NAME", "missing-bucket")
    code, out, _ = run(capsys, "migrate", "--check-only")
    assert code == 1
    assert "[FAIL] bucket exists: bucket 'missing-bucket' does not exist in us-east-1" in out
    assert "aws s3 mb s3://missing-bucket --region us-east-1" in out


def test_check_only_json(local_catalog, capsys):
    local_catalog.add(1)
    code, out, _ = run(capsys, "migrate", "--check-only", "--json")
    report = json.loads(out)
    assert code == 0 and report["status"] == "warn"
    assert {c["name"]: c["status"] for c in report["checks"]}["bucket exists"] == "pass"


def test_migrate_without_a_bucket_name_says_which_setting(local_catalog, capsys, monkeypatch):
    monkeypatch.delenv("S3_BUCKET_NAME")
    code, _, err = run(capsys, "migrate", "--check-only")
    assert code == 1 and "S3_BUCKET_NAME is not set" in err


def test_workers_out_of_range_is_a_usage_error(local_catalog, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["migrate", "--dry-run", "--workers", "0"])
    assert exc.value.code == 2
    assert "between 1 and 32" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- --dry-run


def test_dry_run_prints_the_plan_file_by_file_and_writes_nothing(local_catalog, capsys):
    local_catalog.add(3)
    before = local_catalog.snapshot()
    code, out, _ = run(capsys, "migrate", "--dry-run")
    assert code == 0
    assert "upload    images/p0000.jpg" in out and "upload    thumbnails/p0002.webp" in out
    assert "upload          6 files" in out
    assert "products: write: 3 to add" in out
    assert "vectors: fake-colour: 3 to copy, 0 already there" in out
    assert "Estimated cost: migration $" in out
    assert "(dry run: nothing was written)" in out
    assert local_catalog.bucket_keys() == set()
    assert local_catalog.snapshot() == before


def test_dry_run_without_credentials_prints_the_local_plan_and_says_the_bucket_is_not_compared(
    local_catalog, capsys, monkeypatch
):
    local_catalog.add(2)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    code, out, err = run(capsys, "migrate", "--dry-run")

    assert code == 0, err
    assert "upload    images/p0000.jpg" in out and "upload          4 files" in out
    assert "products: write: 2 to add" in out and "Estimated cost: migration $" in out
    assert "no AWS credentials found, so this plan is made from the local catalog alone" in out
    assert "not checked until credentials are set" in out

    code, out, err = run(capsys, "migrate", "--force")  # the real thing needs the bucket compared
    assert code == 1 and "no AWS credentials found" in err and "--dry-run" in err
    assert local_catalog.bucket_keys() == set()


def test_dry_run_json_has_totals_estimate_and_fingerprint(local_catalog, capsys):
    local_catalog.add(2)
    code, out, _ = run(capsys, "migrate", "--dry-run", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["dry_run"] is True
    assert doc["plan"]["totals"]["upload"]["files"] == 4
    assert doc["plan"]["estimate"]["catalog"]["images"] == 2
    assert {i["action"] for i in doc["plan"]["items"]} == {"upload"}
    assert doc["plan"]["products"]["added"] == ["p0000", "p0001"]
    assert len(doc["plan"]["fingerprint"]) == 64


# ---------------------------------------------------------------------------------------------- --force


def test_force_migrates_then_a_rerun_has_nothing_to_do(local_catalog, capsys, monkeypatch):
    local_catalog.add(4)
    code, out, _ = run(capsys, "migrate", "--force", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"]
    assert report["uploaded"]["files"] == 8 and report["failed"] == [] and report["conflicts"] == []
    assert report["products"]["status"] == "written" and report["products"]["rows_written"] == 4
    assert report["vectors"] == [{"model_id": "fake-colour", "status": "copied", "copied": 4, "planned": 4,
                                  "detail": ""}]

    code, out, _ = run(capsys, "migrate", "--force")
    assert code == 0
    assert "nothing to do" in out and "uploaded        0 files" in out
    assert "fake-colour: every vector already there" in out

    monkeypatch.setenv("S3_ENABLED", "true")  # the app now reads the bucket
    code, out, _ = run(capsys, "list")
    assert code == 0 and "p0003  Product 3 [mugs]" in out


def test_unresolved_conflict_exits_1_and_overwrite_resolves_it(local_catalog, capsys):
    local_catalog.add(2)
    local_catalog.s3().put_object(Bucket=local_catalog.bucket, Key="images/p0001.jpg", Body=b"other")
    code, out, _ = run(capsys, "migrate", "--force")
    assert code == 1
    assert "conflict: images/p0001.jpg: bucket has 5 bytes" in out and "--overwrite" in out
    assert "1 held back because a file is in conflict: p0001" in out

    code, out, _ = run(capsys, "migrate", "--force", "--overwrite", "--json")
    assert code == 0 and json.loads(out)["ok"]


def test_without_force_refuses_to_prompt_when_stdin_is_not_a_terminal(local_catalog, capsys, monkeypatch):
    local_catalog.add(2)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    code, _, err = run(capsys, "migrate")
    assert code == 2
    assert "stdin is not a terminal" in err and "--force" in err and "--dry-run" in err
    assert local_catalog.bucket_keys() == set()


def test_without_force_asks_and_respects_the_answer(local_catalog, capsys, monkeypatch):
    from vpm.core.config import load_settings
    from vpm.migration import plan_fingerprint

    local_catalog.add(2)
    monkeypatch.setattr(sys, "stdin", FakeTerminal("n\n"))
    code, out, err = run(capsys, "migrate")
    assert code == 1 and "cancelled: nothing was written" in err
    assert f"Upload 4 files, write 2 products and copy 2 vectors to s3://{local_catalog.bucket}" in out
    assert f"(plan {plan_fingerprint(load_settings(), overwrite=False)[:12]})" in out
    assert local_catalog.bucket_keys() == set()

    monkeypatch.setattr(sys, "stdin", FakeTerminal("y\n"))
    code, out, _ = run(capsys, "migrate")
    assert code == 0 and f"Migration to s3://{local_catalog.bucket}" in out
    assert sorted(local_catalog.bucket_products()) == ["p0000", "p0001"]


# ------------------------------------------------------------------------------------------------ costs


def test_costs_of_the_local_catalog(local_catalog, capsys):
    local_catalog.add(4)
    code, out, _ = run(capsys, "costs")
    assert code == 0
    assert "4 images, 4 thumbnails" in out
    assert "One-time (migration)" in out and "Monthly" in out and "S3 Standard storage" in out
    assert "S3 GET requests: image views" in out and "CloudFront HTTPS requests" not in out


def test_costs_json_follows_the_traffic_flags(local_catalog, capsys):
    local_catalog.add(3)
    code, out, _ = run(capsys, "costs", "--json", "--searches", "50000", "--images-per-search", "20", "--cdn",
                       "--originals")
    doc = json.loads(out)
    assert code == 0
    assert doc["catalog"]["images"] == 3 and doc["catalog"]["thumbnails"] == 3
    assert doc["traffic"]["searches_per_month"] == 50000 and doc["traffic"]["images_per_search"] == 20
    assert doc["traffic"]["use_cdn"] is True and doc["traffic"]["serve_thumbnails"] is False
    assert any(line["item"].startswith("CloudFront") for line in doc["monthly"])
    assert doc["monthly_total"] >= 0


def test_costs_measures_the_catalog_the_way_the_migration_plan_does(local_catalog, capsys):
    local_catalog.add(3)
    _, costs, _ = run(capsys, "costs", "--json")
    _, dry, _ = run(capsys, "migrate", "--dry-run", "--json")
    assert json.loads(costs)["catalog"] == json.loads(dry)["plan"]["estimate"]["catalog"]


def test_costs_reads_the_bucket_when_s3_is_active(local_catalog, capsys, monkeypatch):
    local_catalog.add(5)
    assert run(capsys, "migrate", "--force")[0] == 0
    monkeypatch.setenv("S3_ENABLED", "true")
    code, out, _ = run(capsys, "costs", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["storage"].startswith(f"s3://{local_catalog.bucket}")
    tables = [k for k in local_catalog.bucket_keys() if k.startswith("metadata/")]
    assert (doc["catalog"]["images"], doc["catalog"]["thumbnails"]) == (5, 5)
    assert doc["catalog"]["metadata_objects"] == len(tables) > 0


def test_costs_rejects_a_negative_count(local_catalog, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["costs", "--searches", "-5"])
    assert exc.value.code == 2
    assert "must be 0 or more" in capsys.readouterr().err


def test_costs_of_the_whole_system_at_a_size_nobody_has_run(local_catalog, capsys):
    """--products sizes the system from the measured unit costs, not from the catalog on disk (here: 2 products)."""
    from vpm.core.capacity import SystemSize, system_estimate

    local_catalog.add(2)
    code, out, _ = run(capsys, "costs", "--json", "--products", "10M", "--photos-per-product", "3",
                       "--searches-per-month", "2,000,000", "--replicas", "4", "--workers", "20", "--cdn")
    doc = json.loads(out)
    assert code == 0
    assert doc["size"]["products"] == 10_000_000 and doc["size"]["photos"] == 30_000_000
    assert doc["catalog"]["images"] == 30_000_000  # the size asked for, not the 2 products on disk
    expected = system_estimate(SystemSize(products=10_000_000, photos_per_product=3, searches_per_month=2_000_000,
                                          replicas=4, workers=20, use_cdn=True))
    assert doc["monthly_total"] == pytest.approx(expected.bill.monthly_total)
    assert doc["one_time_total"] == pytest.approx(expected.bill.one_time_total)
    items = {line["item"]: line for line in doc["monthly"] + doc["one_time"]}
    assert items["Search replicas: c7i.large (2 vCPU, 4 GiB)"]["quantity"] == 4 * 730
    assert {"Full re-embed: compute", "Index build: compute", "CloudFront data transfer out"} <= set(items)
    assert {u["basis"] for u in doc["units"]} == {"measured", "derived", "not measured"}


def test_costs_text_for_a_size_says_how_each_figure_was_reached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VPM_DATA_DIR", str(tmp_path))
    code, out, _ = run(capsys, "costs", "--products", "1000000")
    assert code == 0
    assert "The whole system: 1,000,000 products x 1 photo(s)" in out
    assert "[measured]" in out and "[extrapolated]" in out and "not measured" in out
    assert "What breaks at this size" in out and "Full re-embed: compute" in out
    assert "Catalog in" not in out  # the active catalog is not what was asked about


def test_costs_at_several_sizes_prints_the_table_docs_scaling_shows(tmp_path, monkeypatch, capsys):
    from vpm.core import capacity

    monkeypatch.setenv("VPM_DATA_DIR", str(tmp_path))
    code, out, _ = run(capsys, "costs", "--products", "1M", "10M", "100M", "1B", "--searches-per-month", "10M",
                       "--cdn")
    assert code == 0
    assert capacity.DOC_ASSUMPTIONS == {"searches_per_month": 10_000_000, "workers": 10, "use_cdn": True}
    assert out == capacity.comparison_markdown(capacity.DOC_SIZES, **capacity.DOC_ASSUMPTIONS) + "\n"
    assert out.rstrip("\n") in (REPO / "docs" / "scaling.md").read_text()
    code, out, _ = run(capsys, "costs", "--json", "--products", "1M", "2M")
    assert [size["size"]["products"] for size in json.loads(out)["sizes"]] == [1_000_000, 2_000_000]


@pytest.mark.parametrize("argv, message", [
    (["--products", "abc"], "'abc' is not a number; write a whole number such as 250000"),
    (["--products", "-3"], "products must be at least 1, got -3"),
    (["--products", "0"], "products must be at least 1, got 0"),
    (["--products", "1e30"], "1e30 is more than this model covers"),
    (["--products", "1M", "--photos-per-product", "2.5"], "photos per product must be a whole number"),
    (["--products", "1M", "--replicas", "0"], "replicas must be at least 1"),
    (["--products", "1M", "--searches-per-month", "lots"], "'lots' is not a number"),
])
def test_costs_refuses_a_size_it_cannot_use(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setenv("VPM_DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        main(["costs", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_costs_size_flags_need_products(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VPM_DATA_DIR", str(tmp_path))
    code, out, err = run(capsys, "costs", "--photos-per-product", "3", "--replicas", "2")
    assert code == 2 and out == ""
    assert "--photos-per-product, --replicas size the whole system: give --products N too" in err


# ------------------------------------------------------------------------- real processes, moto over HTTP


def subprocess_env(lc) -> dict[str, str]:
    env = dict(os.environ)
    env.update(S3_ENDPOINT_URL=lc.endpoint, S3_BUCKET_NAME=lc.bucket,
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    return env


def vpm(env, *argv: str, code: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "vpm", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_integration_guide_commands(local_catalog):
    local_catalog.add(6)
    env = subprocess_env(local_catalog)

    check = vpm(env, "migrate", "--check-only")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "[PASS] write probe" in check.stdout

    dry = vpm(env, "migrate", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "upload         12 files" in dry.stdout and local_catalog.bucket_keys() == set()

    force = vpm(env, "migrate", "--force")
    assert force.returncode == 0, force.stdout + force.stderr
    assert "uploaded       12 files" in force.stdout
    assert len(files_in(local_catalog.bucket_keys())) == 12
    assert len(local_catalog.bucket_products()) == 6 and local_catalog.bucket_vectors().count() == 6


def test_killed_migration_resumes_with_nothing_lost(local_catalog):
    local_catalog.add(20)
    env = subprocess_env(local_catalog)

    killed = vpm(env, code=migrate_killed_after(10, "--workers", "4"))
    assert killed.returncode == -9, killed.stdout + killed.stderr
    arrived = local_catalog.bucket_keys()
    assert 10 <= len(arrived) < 40
    assert files_in(arrived) == arrived  # no table yet: no row points at a file that is not there

    rerun = vpm(env, "migrate", "--force", "--json")
    report = json.loads(rerun.stdout)
    assert rerun.returncode == 0 and report["ok"], rerun.stdout + rerun.stderr
    assert report["skipped"]["files"] == len(arrived)
    assert report["uploaded"]["files"] == 40 - len(arrived)
    assert len(files_in(local_catalog.bucket_keys())) == 40
    assert len(local_catalog.bucket_products()) == 20 and local_catalog.bucket_vectors().count() == 20
    s3 = local_catalog.s3()
    for key in ("images/p0000.jpg", "thumbnails/p0019.webp"):
        body = s3.get_object(Bucket=local_catalog.bucket, Key=key)["Body"].read()
        assert body == local_catalog.storage.get(key)


KILL_BEFORE_THE_VECTORS = """
import os, signal, sys
import vpm.migration.execute as execute

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # the product rows are committed; the vectors never start

execute.copy_vectors = die
from vpm.faces.cli import main
sys.exit(main(["migrate", "--force"]))
"""


def test_killed_between_the_products_and_the_vectors_a_rerun_copies_the_vectors(local_catalog):
    local_catalog.add(8)
    env = subprocess_env(local_catalog)

    killed = vpm(env, code=KILL_BEFORE_THE_VECTORS)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert len(local_catalog.bucket_products()) == 8  # the bucket's catalog opens, complete
    assert not any(k.startswith("metadata/vectors-") for k in local_catalog.bucket_keys())

    rerun = vpm(env, "migrate", "--force", "--json")
    report = json.loads(rerun.stdout)
    assert rerun.returncode == 0 and report["ok"], rerun.stdout + rerun.stderr
    assert report["uploaded"]["files"] == 0 and report["products"]["rows_written"] == 0
    assert report["vectors"][0]["copied"] == 8
    assert local_catalog.bucket_vectors().count() == 8
