"""Benchmark: `python -m vpm migrate --force` versus `aws s3 sync` of the same local catalog.

Both run as subprocesses (so both pay their interpreter start-up; the table also shows that start-up alone)
against one moto S3 server on 127.0.0.1 started by this script, each into its own fresh bucket. The catalog
is N random-noise JPEGs of about --size-kb each plus metadata/products.json, written straight into a temp
folder. Each tool then runs a second time on the unchanged folder ("re-run": nothing to do).

    python bench/bench_migrate.py [--files 500] [--size-kb 100] [--workers 8]

Note the tools do different work per file: vpm hashes every file (SHA-256), sends the checksum (S3 verifies
it and returns it on the PUT, which is vpm's verification: no HEAD after it), guards each PUT with
If-None-Match, streams files (multipart above 8 MB) and writes the catalog's tables after the files; on a re-run
it decides from one listing per prefix (size and ETag against the file's MD5), a HEAD only where a listing cannot
tell. `aws s3 sync` compares size and modification time from one listing and verifies nothing.

A last row PUTs the same photos with botocore alone (8 threads, SHA-256 checksums, nothing else): the most any
tool can reach against this server on this machine, since moto's server works on the other core.

Targets (issue 14): vpm's first run >= 1.2x the files/s of `aws s3 sync`, its re-run no slower than aws's.
Without the AWS CLI (`pip install awscli` into the venv for this benchmark; it is not a requirement of the app)
only vpm is measured, and the table says so.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def noise_jpeg(rng: random.Random, target_bytes: int) -> bytes:
    """A JPEG of random noise near `target_bytes` (noise barely compresses, so size follows pixel count)."""
    from PIL import Image

    side = max(16, int((target_bytes / 0.75) ** 0.5))  # RGB noise at quality 85: ~0.75 bytes a pixel
    img = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def make_catalog(root: Path, n: int, size_kb: int) -> int:
    rng = random.Random(5)
    (root / "images").mkdir(parents=True)
    (root / "metadata").mkdir()
    products, total = [], 0
    for i in range(n):
        data = noise_jpeg(rng, size_kb * 1024)
        (root / "images" / f"p{i:05d}.jpg").write_bytes(data)
        total += len(data)
        products.append({"id": f"p{i:05d}", "name": f"Product {i}", "category": "noise",
                         "image_key": f"images/p{i:05d}.jpg", "created_at": "2026-01-01T00:00:00+00:00"})
    doc = {"schema": 1, "version": 1, "products": products}
    (root / "metadata" / "products.json").write_text(json.dumps(doc, indent=2))
    return total


def find_aws() -> list[str] | None:
    """The aws CLI: on PATH, /usr/local/bin/aws, or `python3 -m awscli` of the system python."""
    candidates = [[p] for p in (shutil.which("aws"), "/usr/local/bin/aws") if p]
    candidates += [[py, "-m", "awscli"] for py in ("/usr/bin/python3", shutil.which("python3")) if py]
    for cmd in candidates:
        try:
            if subprocess.run([*cmd, "--version"], capture_output=True, timeout=60, check=False).returncode == 0:
                return cmd
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc


def count_objects(client, bucket: str, prefix: str = "") -> int:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sum(page.get("KeyCount", 0) for page in pages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--size-kb", type=int, default=100)
    parser.add_argument("--workers", type=int, default=8, help="vpm --workers (aws s3 sync uses its default, 10)")
    args = parser.parse_args()

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise

    load_before = _load()
    work = Path(tempfile.mkdtemp(prefix="vpm-bench-migrate-"))
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        data_dir = work / "data"
        total_bytes = make_catalog(data_dir, args.files, args.size_kb)
        n_files = args.files  # the photos: the work both tools share (files/s counts them)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "VPM_"))}
        env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                   AWS_CONFIG_FILE=str(work / "none"), AWS_SHARED_CREDENTIALS_FILE=str(work / "none"),
                   AWS_EC2_METADATA_DISABLED="true", PYTHONPATH=str(REPO))
        s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=endpoint,
                          aws_access_key_id="bench", aws_secret_access_key="bench")
        for bucket in ("bench-vpm", "bench-aws"):
            s3.create_bucket(Bucket=bucket)

        rows = []
        vpm_env = dict(env, VPM_DATA_DIR=str(data_dir), S3_BUCKET_NAME="bench-vpm", S3_ENDPOINT_URL=endpoint)
        # The app upgrades a products.json catalog into tables on first use: do that before either tool runs, so
        # both copy the same folder (photos, products.json and the tables' files).
        timed([sys.executable, "-m", "vpm", "list", "--json"], vpm_env, work)
        vpm_cmd = [sys.executable, "-m", "vpm", "migrate", "--force", "--json", "--workers", str(args.workers)]
        startup, _ = timed([sys.executable, "-m", "vpm", "--help"], vpm_env, work)
        first, proc = timed(vpm_cmd, vpm_env, work)
        report = json.loads(proc.stdout)
        assert report["ok"] and report["uploaded"]["files"] == args.files, report
        again, proc = timed(vpm_cmd, vpm_env, work)
        assert json.loads(proc.stdout)["uploaded"]["files"] == 0
        assert count_objects(s3, "bench-vpm", "images/") == n_files
        rows.append((f"vpm migrate --force (--workers {args.workers})", startup, first, again,
                     count_objects(s3, "bench-vpm")))

        aws = find_aws()
        if aws is None:
            print("aws CLI not found (tried aws on PATH, /usr/local/bin/aws, python3 -m awscli): "
                  "only vpm was measured")
        else:
            answer = subprocess.run([*aws, "--version"], capture_output=True, text=True, check=False)
            version = answer.stdout.strip() or answer.stderr.strip()
            aws_cmd = [*aws, "s3", "sync", str(data_dir), "s3://bench-aws", "--endpoint-url", endpoint,
                       "--only-show-errors", "--exclude", ".vpm/*"]  # .vpm/ is the folder's lock files
            startup_aws, _ = timed([*aws, "--version"], env, work)
            first_aws, _ = timed(aws_cmd, env, work)
            again_aws, _ = timed(aws_cmd, env, work)
            assert count_objects(s3, "bench-aws", "images/") == n_files
            rows.append((f"aws s3 sync ({version.split()[0]})", startup_aws, first_aws, again_aws,
                         count_objects(s3, "bench-aws")))

        # The floor: the same photos PUT by botocore alone, 8 threads, nothing else (no listing, no checksum
        # beyond the SHA-256 both tools send, no catalog). Here the moto server, on the other core, is the limit.
        floor_cmd = [sys.executable, "-c", _BARE_PUTS, endpoint, "bench-floor", str(data_dir / "images"),
                     str(args.workers)]
        s3.create_bucket(Bucket="bench-floor")
        bare, _ = timed(floor_cmd, env, work)
        assert count_objects(s3, "bench-floor", "images/") == n_files
        rows.append((f"bare PUTs (botocore, {args.workers} threads)", float("nan"), bare, float("nan"),
                     count_objects(s3, "bench-floor")))

        print(f"\n{n_files} noise JPEGs ({total_bytes / 1024**2:.1f} MB) plus the catalog (products.json and its "
              f"tables), moto server on 127.0.0.1; both tools run as subprocesses; {os.cpu_count()} CPUs. files/s "
              "counts the photos, which both copy; 'objects' is everything each left in its bucket (vpm writes the "
              "catalog as table rows, aws copies the folder's files)")
        header = (f"{'tool':<40} {'start-up s':>10} {'first run s':>11} {'files/s':>8} {'MB/s':>6} {'re-run s':>9} "
                  f"{'objects':>8}")
        print(header)
        print("-" * len(header))
        for name, start, first_s, again_s, objects in rows:
            print(f"{name:<40} {_seconds(start):>10} {first_s:>11.2f} {n_files / first_s:>8.0f} "
                  f"{total_bytes / 1024**2 / first_s:>6.1f} {_seconds(again_s):>9} {objects:>8}")
        if len(rows) == 3:
            (_, _, v1, v2, _), (_, _, a1, a2, _), _floor = rows
            print(f"{'vpm / aws (files/s ratio; re-run time ratio)':<40} {'':>10} {'':>11} {a1 / v1:>7.2f}x "
                  f"{'':>6} {v2 / a2:>8.2f}x")
            print(f"targets: files/s >= 1.2x aws: {'met' if a1 / v1 >= 1.2 else 'MISSED'}; re-run no slower than "
                  f"aws's: {'met' if v2 <= a2 else 'MISSED'}")
        else:
            print("aws column skipped: the AWS CLI is not installed here (pip install awscli, for this benchmark only)")
        print(f"load average before/after: {load_before} / {_load()}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _seconds(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"  # NaN: not measured for this row


_BARE_PUTS = """
import glob, sys
from concurrent.futures import ThreadPoolExecutor
import botocore.session
from botocore.config import Config
endpoint, bucket, folder, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
session = botocore.session.Session()
client = session.create_client("s3", region_name="us-east-1", endpoint_url=endpoint,
                               config=Config(max_pool_connections=32))
def put(path):
    with open(path, "rb") as body:
        client.put_object(Bucket=bucket, Key="images/" + path.rsplit("/", 1)[1], Body=body, ChecksumAlgorithm="SHA256")
with ThreadPoolExecutor(workers) as pool:
    list(pool.map(put, sorted(glob.glob(folder + "/*.jpg"))))
"""


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
