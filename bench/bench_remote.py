"""Search and start-up against a bucket tens of milliseconds away, beside the same catalog on local disk.

    python bench/bench_remote.py [--rtt-ms 40] [--searches 30] [--catalog DIR] [--model efficientnet-lite0]
                                 [--trace FILE]

On loopback moto's server answers in microseconds, which hides every serial round trip; a real bucket is tens of
milliseconds away. This bench fills the sample catalog (`sample/`, 84 products, 252 photos; `python -m vpm demo`,
4 to 6 minutes, kept in --catalog for the next run) on local disk, copies its objects key for key into a bucket on
moto's server (ThreadedMotoServer, in this process), and puts ../shared/tools/latency_proxy.py in front of it.
Then for each of: local disk, the bucket at 0 ms (moto directly), the bucket at --rtt-ms (through the proxy), it
starts `python -m vpm serve` (its defaults, the model named by --model) and measures
- start: from launching the server to the first answered POST /api/search (a sample photo), with the S3 requests
  that took;
- warm photo search: --searches more searches, each a different sample photo, one at a time: p50 and p95, the
  ratio of the p50 to local disk's, and the S3 requests per search (moto's server logs one line a request: they
  are counted here, not printed; each one through the proxy costs at least one round trip, so this column is the
  lever).
--trace FILE writes every S3 request the bucket@rtt server made (time since its start, method, path) for finding
serial round trips. Targets (issue 22): warm p50 at 40 ms <= 1.3x local disk; first answer <= 2x local disk's.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROXY = REPO.parent / "shared" / "tools" / "latency_proxy.py"
SAMPLE = REPO / "sample"
REGION = "us-east-1"
DEFAULT_CATALOG = REPO / "bench" / "results" / "remote-catalog"


def log(message: str = "") -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RequestLog(logging.Handler):
    """Every request moto's server answers (werkzeug logs one INFO line each), with when it was logged."""

    LINE = re.compile(r'"(\w+) (\S+) HTTP/[\d.]+"')

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        found = self.LINE.search(record.getMessage())
        with self._lock:
            self.lines.append((time.monotonic(), f"{found.group(1)} {found.group(2)}" if found
                               else record.getMessage()[:200]))

    @property
    def count(self) -> int:
        return len(self.lines)

    def since(self, start: int) -> list[tuple[float, str]]:
        time.sleep(0.1)  # werkzeug logs a request just after answering it
        with self._lock:
            return self.lines[start:]


def sample_photos() -> list[Path]:
    return sorted((SAMPLE / "photos").rglob("*.jpg")) + sorted((SAMPLE / "photos").rglob("*.png"))


def base_env(model: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_", "VPM_"))}
    env.update(VPM_MODEL=model, LOG_LEVEL="WARNING", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def fill_catalog(folder: Path, model: str) -> None:
    """The sample catalog on local disk, made once by `python -m vpm demo` and kept for the next run."""
    if (folder / "metadata" / "products.lance").is_dir():
        log(f"using the sample catalog already in {folder}")
        return
    log(f"loading the sample catalog into {folder} (python -m vpm demo: 4 to 6 minutes, once)")
    folder.mkdir(parents=True, exist_ok=True)
    env = base_env(model) | {"VPM_DATA_DIR": str(folder)}
    subprocess.run([sys.executable, "-m", "vpm", "demo"], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def copy_to_bucket(folder: Path, client, bucket: str) -> int:
    """Every object of the local catalog under the same key (the layout is the same locally and on S3)."""
    from concurrent.futures import ThreadPoolExecutor

    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock")]

    def put(path: Path) -> None:
        client.put_object(Bucket=bucket, Key=path.relative_to(folder).as_posix(), Body=path.read_bytes())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, files))
    return len(files)


def search_once(client, url: str, photo: Path) -> int:
    with photo.open("rb") as fh:
        return client.post(url, files={"image": (photo.name, fh, "image/jpeg")}, data={"top_k": "10"}).status_code


def measure(name: str, env: dict[str, str], photos: list[Path], searches: int, requests: RequestLog) -> dict:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}/api/search"
    before = requests.count
    started = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "vpm", "serve", "--port", str(port)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(timeout=300) as client:
            while True:  # the first answered search: the server up, the model loaded, the catalog read
                if server.poll() is not None:
                    raise SystemExit(f"{name}: vpm serve exited ({server.returncode}): {server.stderr.read()[-2000:]}")
                try:
                    status = search_once(client, url, photos[0])
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                if status != 200:
                    raise SystemExit(f"{name}: the first search answered {status}")
                break
            start_s = time.monotonic() - started
            start_requests = requests.since(before)
            warm_from = requests.count
            times = []
            for i in range(searches):
                photo = photos[1 + i % (len(photos) - 1)]
                t = time.perf_counter()
                if search_once(client, url, photo) != 200:
                    raise SystemExit(f"{name}: a warm search failed")
                times.append(time.perf_counter() - t)
            warm_requests = requests.since(warm_from)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    ordered = sorted(times)
    return {
        "name": name, "start_s": start_s, "start_requests": len(start_requests),
        "p50_ms": statistics.median(times) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1000,
        "requests_per_search": len(warm_requests) / searches, "trace": (started, start_requests, warm_requests),
    }


def write_trace(path: Path, result: dict) -> None:
    started, start_requests, warm_requests = result["trace"]
    with path.open("w") as out:
        out.write(f"# {result['name']}: S3 requests from the server's launch to its first answer\n")
        for t, line in start_requests:
            out.write(f"{t - started:9.3f} {line}\n")
        out.write("# warm searches\n")
        for t, line in warm_requests:
            out.write(f"{t - started:9.3f} {line}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rtt-ms", type=float, default=40.0)
    ap.add_argument("--searches", type=int, default=30, help="warm searches per configuration (default 30)")
    ap.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG,
                    help=f"where the filled sample catalog is kept between runs (default {DEFAULT_CATALOG})")
    ap.add_argument("--model", default="efficientnet-lite0", help="VPM_MODEL (default: the offline built-in one)")
    ap.add_argument("--trace", type=Path, help="write the bucket@rtt server's S3 requests here")
    args = ap.parse_args()
    if not PROXY.is_file():
        raise SystemExit(f"the latency proxy is missing: expected {PROXY} (../shared/tools/latency_proxy.py beside "
                         "the repository); without it there is no latency to measure")
    if args.searches < 2:
        raise SystemExit("--searches must be at least 2")

    import boto3
    from moto.server import ThreadedMotoServer

    fill_catalog(args.catalog.resolve(), args.model)
    photos = sample_photos()
    requests = RequestLog()
    werkzeug = logging.getLogger("werkzeug")  # one INFO line per request: counted, not printed
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    werkzeug.handlers = [requests]
    moto_port, proxy_port = free_port(), free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    server.start()
    proxy = subprocess.Popen([sys.executable, str(PROXY), "--listen", f"127.0.0.1:{proxy_port}",
                              "--upstream", f"127.0.0.1:{moto_port}", "--rtt-ms", str(args.rtt_ms)])
    try:
        direct = f"http://127.0.0.1:{moto_port}"
        bucket = f"vpm-remote-{uuid.uuid4().hex[:10]}"
        client = boto3.client("s3", region_name=REGION, endpoint_url=direct, aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        client.create_bucket(Bucket=bucket)
        copied = copy_to_bucket(args.catalog.resolve(), client, bucket)
        log(f"copied {copied} objects of the catalog into s3://{bucket}")
        local = base_env(args.model) | {"VPM_DATA_DIR": str(args.catalog.resolve())}
        s3 = base_env(args.model) | {
            "S3_ENABLED": "true", "S3_BUCKET_NAME": bucket, "S3_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "VPM_DATA_DIR": str(args.catalog.resolve() / "unused"),
        }
        configs = [("local disk", local), ("bucket at 0 ms", s3 | {"S3_ENDPOINT_URL": direct}),
                   (f"bucket at {args.rtt_ms:g} ms", s3 | {"S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy_port}"})]
        results = []
        for name, env in configs:
            log(f"measuring: {name}")
            results.append(measure(name, env, photos, args.searches, requests))
    finally:
        proxy.terminate()
        proxy.wait()
        server.stop()
    if args.trace:
        write_trace(args.trace, results[-1])
    local_result = results[0]
    print(f"\nsample catalog, vpm serve defaults (VPM_MODEL={args.model}), {args.searches} warm photo searches one at "
          f"a time, {os.cpu_count()} CPUs")
    print("| | start to first answer | x local | S3 requests | warm p50 | warm p95 | x local (p50) | S3 requests/search |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['start_s']:.1f} s | {r['start_s'] / local_result['start_s']:.2f}x | "
              f"{r['start_requests']} | {r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms | "
              f"{r['p50_ms'] / local_result['p50_ms']:.2f}x | {r['requests_per_search']:.1f} |")


if __name__ == "__main__":
    main()
