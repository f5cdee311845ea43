"""Benchmark: `python -m vpm migrate --force` versus `aws s3 sync` of the same local catalog, on loopback and
through a link with real latency.

Every tool runs as a subprocess (so each pays its interpreter start-up) against one moto S3 server on 127.0.0.1
started by this script, each into its own fresh bucket. With `--rtt-ms N` each tool is measured twice: straight
to the server (0 ms) and through ../shared/tools/latency_proxy.py (run as its own process), which delays every
byte by N/2 ms each way, as a bucket in a nearby region does; every tool goes through the same proxy. Each tool
runs a second time on the unchanged folder ("re-run": nothing to do).

    python bench/bench_migrate.py --rtt-ms 40                 # the 398 shared photos (bench/shared_photos.py)
    python bench/bench_migrate.py --noise --files 500 --size-kb 100

The catalog: the shared photos as products (metadata.csv's products, several photos each), or with --noise N
random-noise JPEGs, one product each; written as the first release's metadata/products.json, which the app
upgrades into its tables before either tool runs, so both copy the same folder.

The tools do different work per file: vpm hashes every file (SHA-256), sends the checksum (S3 verifies it and
returns it on the PUT, which is vpm's verification: no request after it), guards each PUT with If-None-Match,
writes the catalog's tables once their photos are verified, and verifies the bucket at the end; on a re-run it
decides from one listing per prefix. `aws s3 sync` compares size and modification time from one listing and
verifies nothing. A last row PUTs the same photos with botocore alone (SHA-256 checksums, nothing else, as many
threads as vpm may keep in flight): the floor any tool reaches against this server through this link.

Target (issue 22): at --rtt-ms 40, vpm's first run in at most half the time of `aws s3 sync`'s, its re-run no
slower than aws's; the loopback figures no worse than before. Without the AWS CLI (`pip install awscli`; not a
requirement of the app) only vpm and the bare PUTs are measured, and the table says so.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
from shared_photos import PHOTOS, require_photos  # noqa: E402

PROXY = REPO.parent / "shared" / "tools" / "latency_proxy.py"


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


def _write_catalog(root: Path, products: list[dict]) -> None:
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    doc = {"schema": 1, "version": 1, "products": products}
    (root / "metadata" / "products.json").write_text(json.dumps(doc, indent=2))


def noise_catalog(root: Path, n: int, size_kb: int) -> tuple[int, int]:
    rng = random.Random(5)
    (root / "images").mkdir(parents=True)
    products, total = [], 0
    for i in range(n):
        data = noise_jpeg(rng, size_kb * 1024)
        (root / "images" / f"p{i:05d}.jpg").write_bytes(data)
        total += len(data)
        products.append({"id": f"p{i:05d}", "name": f"Product {i}", "category": "noise",
                         "image_key": f"images/p{i:05d}.jpg", "image_sha256": hashlib.sha256(data).hexdigest(),
                         "created_at": "2026-01-01T00:00:00+00:00"})
    _write_catalog(root, products)
    return n, total


def photos_catalog(root: Path, folder: Path) -> tuple[int, int]:
    """The shared photos as their products (metadata.csv), each photo under images/ with its SHA-256."""
    (root / "images").mkdir(parents=True)
    products: dict[str, dict] = {}
    count = total = 0
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            data = (folder / row["file"]).read_bytes()
            (root / "images" / row["file"]).write_bytes(data)
            count, total = count + 1, total + len(data)
            pid = re.sub(r"[^A-Za-z0-9_-]", "-", row["product_id"])
            product = products.setdefault(pid, {"id": pid, "name": row["name"][:200], "category": row["category"],
                                                "created_at": "2026-01-01T00:00:00+00:00", "photos": []})
            product["photos"].append({"key": f"images/{row['file']}", "sha256": hashlib.sha256(data).hexdigest(),
                                      "added_at": "2026-01-01T00:00:00+00:00"})
    _write_catalog(root, list(products.values()))
    return count, total


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


class Link:
    """The way to the server: straight (rtt 0) or through the latency proxy, in its own process."""

    def __init__(self, upstream_port: int, rtt_ms: float):
        self.rtt_ms, self.process = rtt_ms, None
        if not rtt_ms:
            self.endpoint = f"http://127.0.0.1:{upstream_port}"
            return
        if not PROXY.is_file():
            raise SystemExit(f"cannot find the latency proxy at {PROXY} (../shared/tools/latency_proxy.py)")
        port = free_port()
        self.process = subprocess.Popen([sys.executable, str(PROXY), "--listen", f"127.0.0.1:{port}",
                                         "--upstream", f"127.0.0.1:{upstream_port}", "--rtt-ms", str(rtt_ms)])
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise SystemExit("the latency proxy did not start") from None
                time.sleep(0.05)
        self.endpoint = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


def measure(link: Link, s3, data_dir: Path, work: Path, env: dict[str, str], n_files: int, args, aws) -> list:
    """[(tool, first run s, re-run s, objects)] through `link`, each tool into its own fresh bucket."""
    tag = f"{int(link.rtt_ms)}ms"
    rows = []
    bucket = f"bench-vpm-{tag}"
    s3.create_bucket(Bucket=bucket)
    vpm_env = dict(env, VPM_DATA_DIR=str(data_dir), S3_BUCKET_NAME=bucket, S3_ENDPOINT_URL=link.endpoint)
    vpm_cmd = [sys.executable, "-m", "vpm", "migrate", "--force", "--json"]
    if args.workers:
        vpm_cmd += ["--workers", str(args.workers)]
    first, proc = timed(vpm_cmd, vpm_env, work)
    report = json.loads(proc.stdout)
    assert report["ok"] and report["uploaded"]["files"] == n_files, report
    again, proc = timed(vpm_cmd, vpm_env, work)
    assert json.loads(proc.stdout)["uploaded"]["files"] == 0
    assert count_objects(s3, bucket, "images/") == n_files
    label = f"--workers {args.workers}" if args.workers else "adaptive"
    rows.append((f"vpm migrate --force ({label})", first, again, count_objects(s3, bucket)))

    if aws is not None:
        bucket = f"bench-aws-{tag}"
        s3.create_bucket(Bucket=bucket)
        aws_cmd = [*aws, "s3", "sync", str(data_dir), f"s3://{bucket}", "--endpoint-url", link.endpoint,
                   "--only-show-errors", "--exclude", ".vpm/*"]  # .vpm/ is the folder's lock files
        first_aws, _ = timed(aws_cmd, env, work)
        again_aws, _ = timed(aws_cmd, env, work)
        assert count_objects(s3, bucket, "images/") == n_files
        version = subprocess.run([*aws, "--version"], capture_output=True, text=True, check=False)
        name = (version.stdout.strip() or version.stderr.strip()).split()[0]
        rows.append((f"aws s3 sync ({name}, 10 requests)", first_aws, again_aws, count_objects(s3, bucket)))

    # The floor: the same photos PUT by botocore alone (SHA-256 checksums, nothing else: no listing, no
    # condition, no catalog), as many threads as vpm may keep in flight.
    bucket = f"bench-floor-{tag}"
    s3.create_bucket(Bucket=bucket)
    floor_cmd = [sys.executable, "-c", _BARE_PUTS, link.endpoint, bucket, str(data_dir / "images"),
                 str(args.bare_threads)]
    bare, _ = timed(floor_cmd, env, work)
    assert count_objects(s3, bucket, "images/") == n_files
    rows.append((f"bare PUTs (botocore, {args.bare_threads} threads)", bare, float("nan"),
                 count_objects(s3, bucket)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="also measure through the latency proxy at this round-trip time (e.g. 40)")
    parser.add_argument("--photos", type=Path, default=None, help=f"a photo folder with metadata.csv (default {PHOTOS})")
    parser.add_argument("--noise", action="store_true", help="random-noise JPEGs instead of the shared photos")
    parser.add_argument("--files", type=int, default=500, help="with --noise: how many")
    parser.add_argument("--size-kb", type=int, default=100, help="with --noise: about how big each")
    parser.add_argument("--workers", type=int, default=None,
                        help="vpm --workers (default: vpm's own, adaptive); aws s3 sync uses its default, 10")
    parser.add_argument("--bare-threads", type=int, default=None, help="threads of the bare-PUTs row")
    args = parser.parse_args()
    if args.bare_threads is None:
        from vpm.migration import MAX_WORKERS

        args.bare_threads = args.workers or MAX_WORKERS

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise

    load_before = _load()
    work = Path(tempfile.mkdtemp(prefix="vpm-bench-migrate-"))
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    links: list[Link] = []
    try:
        data_dir = work / "data"
        if args.noise:
            n_files, total_bytes = noise_catalog(data_dir, args.files, args.size_kb)
            what = f"{n_files} noise JPEGs"
        else:
            folder = require_photos(args.photos, metadata=True)
            n_files, total_bytes = photos_catalog(data_dir, folder)
            what = f"{n_files} photos of {folder.name}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "VPM_"))}
        env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                   AWS_CONFIG_FILE=str(work / "none"), AWS_SHARED_CREDENTIALS_FILE=str(work / "none"),
                   AWS_EC2_METADATA_DISABLED="true", PYTHONPATH=str(REPO))
        s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
        # The app upgrades a products.json catalog into tables on first use: do that before either tool runs, so
        # both copy the same folder (photos, products.json and the tables' files).
        timed([sys.executable, "-m", "vpm", "list", "--json"], dict(env, VPM_DATA_DIR=str(data_dir)), work)
        aws = find_aws()
        results = []
        for rtt in sorted({0.0, args.rtt_ms}):
            link = Link(port, rtt)
            links.append(link)
            results.append((rtt, measure(link, s3, data_dir, work, env, n_files, args, aws)))
            link.close()
        print(f"\n{what} ({total_bytes / 1024**2:.1f} MB) plus the catalog (products.json and its tables), moto "
              f"server on 127.0.0.1, each tool a subprocess; {os.cpu_count()} CPUs. 'objects' is everything each "
              "left in its bucket (vpm writes the catalog as table rows, aws copies the folder's files)")
        header = f"{'RTT':>6}  {'tool':<44} {'first run s':>11} {'files/s':>8} {'re-run s':>9} {'objects':>8}"
        print(header)
        print("-" * len(header))
        for rtt, rows in results:
            for name, first_s, again_s, objects in rows:
                print(f"{rtt:>4.0f}ms  {name:<44} {first_s:>11.2f} {n_files / first_s:>8.0f} {_seconds(again_s):>9} "
                      f"{objects:>8}")
        for rtt, rows in results:
            if aws is None:
                print("aws rows skipped: the AWS CLI is not installed here (pip install awscli, for this bench only)")
                break
            (_, v1, v2, _), (_, a1, a2, _) = rows[:2]
            print(f"at {rtt:.0f} ms: vpm / aws first run {v1 / a1:.2f}x the time (target <= 0.5: "
                  f"{'met' if v1 <= a1 / 2 else 'MISSED'}), re-run {v2 / a2:.2f}x (target <= 1: "
                  f"{'met' if v2 <= a2 else 'MISSED'})")
        print(f"load average before/after: {load_before} / {_load()}")
    finally:
        for link in links:
            link.close()
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
                               config=Config(max_pool_connections=max(10, workers)))
def put(path):
    with open(path, "rb") as body:
        client.put_object(Bucket=bucket, Key="images/" + path.rsplit("/", 1)[1], Body=body.read(),
                          ChecksumAlgorithm="SHA256")
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
