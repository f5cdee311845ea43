"""`python -m vpm migrate` and `python -m vpm costs`: in-process (vpm.cli.main) against moto, and as real
subprocesses against moto's HTTP server (the integration guide's commands, and a kill -9 half-way)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from vpm.cli import main

from conftest import BUCKET, REGION

REPO = Path(__file__).resolve().parents[1]


def bucket_keys(endpoint: str | None = None, bucket: str = BUCKET) -> set[str]:
    client = boto3.client("s3", region_name=REGION, endpoint_url=endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# -------------------------------------------------------------------------------------------- --check-only


def test_check_only_prints_one_line_per_check_and_exits_0(aws, local_catalog, capsys):
    local_catalog.add(2)
    code, out, _ = run(capsys, "migrate", "--check-only")
    assert code == 0
    assert "[PASS] bucket exists" in out and "[PASS] write probe" in out and "[PASS] delete probe" in out
    assert "[WARN] bucket versioning: versioning is off" in out
    assert "fix: turn it on" in out
    assert "[PASS] local catalog consistent" in out
    assert out.strip().endswith("overall: warn")
    assert bucket_keys() == set()


def test_check_only_missing_bucket_exits_1_with_the_mb_command(aws, local_catalog, capsys, monkeypatch):
    local_catalog.add(1)
    monkeypatch.setenv("S3_BUCKET_NAME", "missing-bucket")
    code, out, _ = run(capsys, "migrate", "--check-only")
    assert code == 1
    assert "[FAIL] bucket exists: bucket not found: s3://missing-bucket" in out
    assert "aws s3 mb s3://missing-bucket --region us-east-1" in out


def test_check_only_json(aws, local_catalog, capsys):
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


def test_dry_run_prints_the_plan_file_by_file_and_writes_nothing(aws, local_catalog, capsys):
    local_catalog.add(3)
    before = local_catalog.snapshot()
    code, out, _ = run(capsys, "migrate", "--dry-run")
    assert code == 0
    assert "upload    images/p0000.jpg" in out and "upload    thumbnails/p0002.webp" in out
    assert "upload          7 files" in out
    assert "products.json: create: 3 new" in out
    assert "Estimated cost: migration $" in out
    assert "(dry run: nothing was written)" in out
    assert bucket_keys() == set()
    assert local_catalog.snapshot() == before


def test_dry_run_json_has_totals_and_estimate(aws, local_catalog, capsys):
    local_catalog.add(2)
    code, out, _ = run(capsys, "migrate", "--dry-run", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["dry_run"] is True
    assert doc["plan"]["totals"]["upload"]["files"] == 5
    assert doc["plan"]["estimate"]["catalog"]["images"] == 2
    assert {i["action"] for i in doc["plan"]["items"]} == {"upload"}


# ---------------------------------------------------------------------------------------------- --force


def test_force_migrates_then_a_rerun_has_nothing_to_do(aws, local_catalog, capsys, monkeypatch):
    local_catalog.add(4)
    code, out, _ = run(capsys, "migrate", "--force", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"]
    assert report["uploaded"]["files"] == 9 and report["failed"] == [] and report["conflicts"] == []
    assert report["metadata"]["status"] == "written"

    code, out, _ = run(capsys, "migrate", "--force")
    assert code == 0
    assert "nothing to do" in out and "uploaded        0 files" in out

    monkeypatch.setenv("S3_ENABLED", "true")  # the app now reads the bucket
    code, out, _ = run(capsys, "list")
    assert code == 0 and "p0003  Product 3 [mugs]" in out


def test_unresolved_conflict_exits_1_and_overwrite_resolves_it(aws, local_catalog, capsys):
    local_catalog.add(2)
    boto3.client("s3", region_name=REGION).put_object(Bucket=BUCKET, Key="images/p0001.jpg", Body=b"other")
    code, out, _ = run(capsys, "migrate", "--force")
    assert code == 1
    assert "conflict: images/p0001.jpg: bucket has 5 bytes" in out and "--overwrite" in out

    code, out, _ = run(capsys, "migrate", "--force", "--overwrite", "--json")
    assert code == 0 and json.loads(out)["ok"]


def test_without_force_refuses_to_prompt_when_stdin_is_not_a_terminal(aws, local_catalog, capsys, monkeypatch):
    local_catalog.add(2)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    code, _, err = run(capsys, "migrate")
    assert code == 2
    assert "stdin is not a terminal" in err and "--force" in err and "--dry-run" in err
    assert bucket_keys() == set()


def test_without_force_asks_and_respects_the_answer(aws, local_catalog, capsys, monkeypatch):
    local_catalog.add(2)
    monkeypatch.setattr(sys, "stdin", FakeTerminal("n\n"))
    code, out, err = run(capsys, "migrate")
    assert code == 1 and "cancelled: nothing was written" in err
    assert "Upload 5 files to s3://vpm-test-bucket" in out
    assert bucket_keys() == set()

    monkeypatch.setattr(sys, "stdin", FakeTerminal("y\n"))
    code, out, _ = run(capsys, "migrate")
    assert code == 0 and "Migration to s3://vpm-test-bucket" in out
    assert "metadata/products.json" in bucket_keys()


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


def test_costs_reads_the_bucket_when_s3_is_active(aws, local_catalog, capsys, monkeypatch):
    local_catalog.add(5)
    assert run(capsys, "migrate", "--force")[0] == 0
    monkeypatch.setenv("S3_ENABLED", "true")
    code, out, _ = run(capsys, "costs", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["storage"].startswith("s3://vpm-test-bucket")
    assert (doc["catalog"]["images"], doc["catalog"]["thumbnails"], doc["catalog"]["metadata_objects"]) == (5, 5, 2)


def test_costs_rejects_a_negative_count(local_catalog, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["costs", "--searches", "-5"])
    assert exc.value.code == 2
    assert "must be 0 or more" in capsys.readouterr().err


# ------------------------------------------------------------------------- real processes, moto over HTTP


def subprocess_env(endpoint: str, bucket: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(S3_ENDPOINT_URL=endpoint, S3_BUCKET_NAME=bucket,
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    return env


def vpm(env, *argv: str, code: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "vpm", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_integration_guide_commands(server_bucket, local_catalog):
    endpoint, bucket = server_bucket
    local_catalog.add(6)
    env = subprocess_env(endpoint, bucket)

    check = vpm(env, "migrate", "--check-only")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "[PASS] write probe" in check.stdout

    dry = vpm(env, "migrate", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "upload         13 files" in dry.stdout and bucket_keys(endpoint, bucket) == set()

    force = vpm(env, "migrate", "--force")
    assert force.returncode == 0, force.stdout + force.stderr
    assert "uploaded       13 files" in force.stdout
    assert len(bucket_keys(endpoint, bucket)) == 14  # 13 files and products.json


KILL_AFTER_10_UPLOADS = """
import os, signal, sys
import vpm.cli_migrate as cli_migrate

update = cli_migrate._Bar.update

def update_then_die(self, done_files, total_files, done_bytes, total_bytes):
    update(self, done_files, total_files, done_bytes, total_bytes)
    if self.bytes_mode and done_files >= 10:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: as if the machine lost power

cli_migrate._Bar.update = update_then_die
from vpm.cli import main
sys.exit(main(["migrate", "--force", "--workers", "4"]))
"""


def test_killed_migration_resumes_with_nothing_lost(server_bucket, local_catalog):
    endpoint, bucket = server_bucket
    local_catalog.add(20)
    env = subprocess_env(endpoint, bucket)

    killed = vpm(env, code=KILL_AFTER_10_UPLOADS)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    arrived = bucket_keys(endpoint, bucket)
    assert 10 <= len(arrived) < 41
    assert "metadata/products.json" not in arrived

    rerun = vpm(env, "migrate", "--force", "--json")
    report = json.loads(rerun.stdout)
    assert rerun.returncode == 0 and report["ok"], rerun.stdout + rerun.stderr
    assert report["skipped"]["files"] == len(arrived)
    assert report["uploaded"]["files"] == 41 - len(arrived)
    assert len(bucket_keys(endpoint, bucket)) == 42
    client = boto3.client("s3", region_name=REGION, endpoint_url=endpoint)
    products = json.loads(client.get_object(Bucket=bucket, Key="metadata/products.json")["Body"].read())
    assert len(products["products"]) == 20
    for key in ("images/p0000.jpg", "thumbnails/p0019.webp"):
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == local_catalog.storage.get(key)
