"""REST API throughput: N concurrent clients searching by photo against `python -m vpm serve` on loopback.

    python bench/bench_api.py [--clients 8] [--requests 200] [--seconds 120] [--catalog 120]
                              [--model efficientnet-lite0] [--configs auto+batch,torch] [--photos DIR]

A catalog of --catalog photos from the shared product-photo set is imported into a temporary folder (with the
model under test, so its vectors exist), then for each config a server is started (`python -m vpm serve` on
127.0.0.1, a free port), warmed up with one search (the model loads), and --clients threads send multipart
photo searches (`POST /api/search`, top_k 10) over keep-alive connections until --requests are answered or
--seconds pass: both bounded. Each row: req/s over the run's wall time, p50 and p95 latency, errors.

Configs: `auto` or `torch` (VPM_RUNTIME: ONNX Runtime where it matches torch, or torch), `+batch` or not
(VPM_API_BATCH_QUERIES=true: concurrent queries embedded together, or false: one model call each; the app's
default `auto` batches on torch only, so `auto` and `torch+batch` are what it runs). `torch` without batching is
the API as it was before issue 14. `+norerank` turns off the keypoint verification of the top candidates
(VPM_RERANK=false; issue 13 made it the default, after the baseline below was measured). Target (issue 14,
offline model, 2 cores): twice the 35 req/s measured then, with p95 <= 150 ms. The clients run on the same machine as the server: their own CPU use
is in the figures, as it was in the baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from shared_photos import PHOTOS, require_photos  # bench/: the shared photos beside the repository

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REQ_S = 35.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def import_catalog(env: dict[str, str], photos: list[Path], work: Path) -> None:
    folder = work / "import"
    folder.mkdir()
    for path in photos:
        shutil.copy(path, folder / path.name)
    proc = subprocess.run([sys.executable, "-m", "vpm", "import", str(folder)], env=env, cwd=work,
                          capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"import failed:\n{proc.stdout}\n{proc.stderr}")


def start_server(env: dict[str, str], work: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    log = open(work / f"server-{port}.log", "w")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen([sys.executable, "-m", "vpm", "serve", "--port", str(port)], env=env, cwd=work,
                            stdout=log, stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: see {log.name}")
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code in (200, 503):
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    stop_server(proc)
    raise SystemExit("the server did not answer within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.log.close()  # type: ignore[attr-defined]


def run_clients(base: str, queries: list[tuple[str, bytes]], clients: int, requests: int, seconds: float):
    """`clients` threads, keep-alive each, until `requests` answers or `seconds` pass; (wall s, latencies, errors)."""
    import httpx

    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def client(n: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            while True:
                with lock:
                    if issued[0] >= requests or time.monotonic() > deadline:
                        return
                    name, data = queries[issued[0] % len(queries)]
                    issued[0] += 1
                started = time.perf_counter()
                try:
                    resp = http.post("/api/search", files={"image": (name, data, "image/jpeg")}, data={"top_k": "10"})
                    ok = resp.status_code == 200 and resp.json().get("success")
                except httpx.HTTPError as err:
                    ok, resp = False, err
                took = time.perf_counter() - started
                with lock:
                    if ok:
                        latencies.append(took)
                    else:
                        errors.append(str(getattr(resp, "status_code", resp)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="searches per config (a bound)")
    parser.add_argument("--seconds", type=float, default=120, help="longest run per config (a bound)")
    parser.add_argument("--catalog", type=int, default=120, help="photos imported as the catalog")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--configs", default="torch,auto+batch",
                        help="comma-separated, each `auto` or `torch`, optionally `+batch` and `+norerank`")
    parser.add_argument("--photos", type=Path, default=PHOTOS,
                        help="a folder of product photos (default: ../shared/datasets/products-photos)")
    args = parser.parse_args()
    require_photos(args.photos, suffixes=(".jpg", ".jpeg"))
    files = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in {".jpg", ".jpeg"})
    catalog = files[:: max(1, len(files) // args.catalog)][: args.catalog]
    queries = [(p.name, p.read_bytes()) for p in files[1 :: max(1, len(files) // 50)][:50]]

    work = Path(tempfile.mkdtemp(prefix="vpm-bench-api-"))
    load_before = _load()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "VPM_"))}
    env.update(VPM_DATA_DIR=str(work / "data"), VPM_MODEL=args.model, VPM_DEVICE="cpu", LOG_LEVEL="WARNING",
               HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    rows = []
    try:
        import_catalog(env, catalog, work)
        for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
            runtime, *flags = config.split("+")
            server_env = dict(env, VPM_RUNTIME=runtime, VPM_API_BATCH_QUERIES="true" if "batch" in flags else "false",
                              VPM_RERANK="false" if "norerank" in flags else "true")
            proc, base = start_server(server_env, work)
            try:
                import httpx

                name, data = queries[0]
                warm = httpx.post(f"{base}/api/search", files={"image": (name, data, "image/jpeg")}, timeout=600)
                if warm.status_code != 200:
                    raise SystemExit(f"warm-up search failed: {warm.status_code} {warm.text[:300]}")
                load_at_start = _load()
                wall, latencies, errors = run_clients(base, queries, args.clients, args.requests, args.seconds)
            finally:
                stop_server(proc)
            ms = sorted(x * 1000 for x in latencies)
            p95 = ms[min(len(ms) - 1, round(0.95 * len(ms)) - 1)] if ms else float("nan")
            rows.append((config, len(ms) / wall, statistics.median(ms) if ms else float("nan"), p95, len(errors),
                         load_at_start))
            print(f"  {config}: done (load average {_load()})", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.clients} clients, up to {args.requests} photo searches or {args.seconds:g} s per config, "
          f"model {args.model}, catalog of {len(catalog)} photos, server and clients on 127.0.0.1, {os.cpu_count()} "
          f"CPUs; load average before {load_before}, after {_load()}")
    header = f"{'config':<14} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'errors':>7} {'load at start':>14}"
    print(header)
    print("-" * len(header))
    for config, rate, p50, p95, errors, load in rows:
        print(f"{config:<14} {rate:>7.1f} {p50:>8.1f} {p95:>8.1f} {errors:>7} {load:>14}")
    best = max(rows, key=lambda r: r[1]) if rows else None
    if best is not None:
        print(f"target: >= {2 * BASELINE_REQ_S:.0f} req/s (twice the {BASELINE_REQ_S:.0f} measured before) at p95 <= 150 ms: "
              f"{'met' if best[1] >= 2 * BASELINE_REQ_S and best[3] <= 150 else 'MISSED'} by {best[0]}")


if __name__ == "__main__":
    main()
