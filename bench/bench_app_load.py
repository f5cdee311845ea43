"""The app under a crowd: N browser sessions at once search by photo against `streamlit run streamlit_app.py`.

    python bench/bench_app_load.py [--sessions 1,5,10,20] [--catalog DIR] [--products K]
                                   [--model efficientnet-lite0] [--photos DIR] [--timeout 300] [--no-sync]
                                   [--env NAME=VALUE ...]

The catalog: the sample catalog (vpm/core/sample.py, as `python -m vpm demo` loads it: 84 products, 252 photos, minutes
on 2 cores), or its first K products with --products K for a quick run. It is prepared in --catalog DIR (a new or
empty folder) and reused by later runs that name the same folder; without --catalog it goes into a temporary
folder that is removed at the end. The query photos are the shared product photos of the catalog's products that
are not in the catalog themselves (held-out photos; see bench/shared_photos.py), else the catalog's own photos.

For each N a fresh server is started (headless, 127.0.0.1, a free port) and warmed up by one visitor's search (the
model loads, the catalog opens); then N Chromium sessions (one browser, one context each, driven by Playwright)
open Search at once. When every page has drawn, all upload their photo at the same moment (--no-sync: each as soon
as its page is up), and each waits for its results: the match count or "No product reaches", with the app's run
finished. Reported per N: sessions with results, errors (an exception, an error message on the page, or no result
within --timeout), sessions that saw the queue notice (vpm/core/admission.py), the time to Search drawn (p50), the time
from upload to results (p50, p95), p95(N) / p50(1), the peak resident memory of the server's process tree (sampled
from /proc every 0.1 s from its start), and how many times the server loaded the model (its log's "Embedding
model:" lines; the app caches it with st.cache_resource, so 1 is right). Target (issue 24, 2 cores): 10 sessions
at once with no error and p95 within 10x of one session alone.

The browsers run on the same machine as the server: their CPU use is in the figures. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared_photos import PHOTOS  # noqa: E402 - bench/: the shared photos beside the repository

from vpm.core.admission import QUEUE_MARK  # noqa: E402 - the queue notice a waiting visitor reads

APP = ROOT / "streamlit_app.py"
SAMPLE = ROOT / "sample"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
MARKER = "bench-catalog.json"  # what this bench prepared in a --catalog folder: model, products, photos
TARGET_N, TARGET_RATIO = 10, 10.0
MODEL_LOADED = "Embedding model:"  # vpm.models.embeddings logs it once a load
# Polled in each page after its upload: "results" once the count line (or "No product reaches") is drawn and the
# app's run has finished, "error: ..." for an error on the page; on the way it notes whether the queue notice showed.
RESULTS_JS = """() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const text = main ? main.innerText : '';
  if (text.includes(QUEUE_MARK)) window.__vpmQueued = true;
  const failed = main && main.querySelector('[data-testid="stException"], [data-testid="stAlertContentError"]');
  if (failed) return 'error: ' + failed.innerText.slice(0, 200);
  const running = document.querySelector('[data-testid="stStatusWidget"]');
  return /match(es)? at or above|No product reaches/.test(text) && !running ? 'results' : false;
}""".replace("QUEUE_MARK", json.dumps(QUEUE_MARK))


# ------------------------------------------------------------------------------------------- options


def session_counts(text: str) -> list[int]:
    """"1,5,10,20" -> [1, 5, 10, 20]: positive, each once, in the order given."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sessions takes whole numbers separated by commas, not {text!r}") from None
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"--sessions needs counts of at least 1 (got {text!r})")
    if len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"--sessions names a count twice ({text!r})")
    return counts


def env_setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
        raise argparse.ArgumentTypeError(f"--env takes NAME=VALUE with an upper-case NAME (got {text!r})")
    return name, value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=session_counts, default=[1, 5, 10, 20],
                        help="browser sessions at once, one run each (default 1,5,10,20)")
    parser.add_argument("--catalog", type=Path,
                        help="folder for the prepared catalog, reused by the next run (default: a temporary one)")
    parser.add_argument("--products", type=positive_int,
                        help="the sample's first K products only (default: all 84)")
    parser.add_argument("--model", default="efficientnet-lite0", help="VPM_MODEL of the catalog and the app")
    parser.add_argument("--photos", type=Path, default=PHOTOS,
                        help="query photos with metadata.csv (default: ../shared/datasets/products-photos)")
    parser.add_argument("--timeout", type=positive_int, default=300, help="seconds a session may wait for results")
    parser.add_argument("--no-sync", dest="sync", action="store_false",
                        help="upload as soon as each page is up, not all at the same moment")
    parser.add_argument("--env", type=env_setting, action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the app (e.g. LOG_LEVEL=DEBUG); repeatable")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------- figures


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1))]


@dataclass
class Visit:
    page_s: float | None = None  # goto -> Search drawn
    results_s: float | None = None  # upload -> results drawn, run finished
    queued: bool = False  # saw "N searches ahead of you"
    error: str | None = None


@dataclass
class Row:
    sessions: int
    visits: list[Visit]
    peak_rss_mb: float
    model_loads: int | None
    errors: list[str] = field(init=False)

    def __post_init__(self):
        self.errors = [v.error for v in self.visits if v.error]

    @property
    def ok(self) -> int:
        return sum(1 for v in self.visits if v.error is None and v.results_s is not None)

    def results(self) -> list[float]:
        return [v.results_s for v in self.visits if v.error is None and v.results_s is not None]

    def p50(self) -> float:
        return percentile(self.results(), 50)

    def p95(self) -> float:
        return percentile(self.results(), 95)


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "n/a" if value is None or value != value else format(value, fmt)


def report(rows: list[Row]) -> list[str]:
    """The table, the errors seen, and the target's verdict, as printed lines."""
    alone = next((r for r in rows if r.sessions == 1), None)
    base = alone.p50() if alone and alone.ok else None
    header = (f"{'sessions':>8} {'ok':>4} {'errors':>6} {'queued':>6} {'page p50 s':>10} {'p50 s':>7} "
              f"{'p95 s':>7} {'p95/p50(1)':>10} {'peak RSS MB':>11} {'model loads':>11}")
    lines = [header, "-" * len(header)]
    for r in rows:
        pages = [v.page_s for v in r.visits if v.page_s is not None]
        ratio = r.p95() / base if base and r.ok else None
        lines.append(f"{r.sessions:>8} {r.ok:>4} {len(r.errors):>6} {sum(v.queued for v in r.visits):>6} "
                     f"{_num(percentile(pages, 50)):>10} {_num(r.p50()):>7} {_num(r.p95()):>7} "
                     f"{_num(ratio, '.1f'):>10} {_num(r.peak_rss_mb, '.0f'):>11} "
                     f"{'n/a' if r.model_loads is None else r.model_loads:>11}")
    for r in rows:
        for error in sorted(set(r.errors))[:3]:
            lines.append(f"  N={r.sessions}: {r.errors.count(error)} x {error}")
    target = next((r for r in rows if r.sessions == TARGET_N), None)
    if target is None or base is None:
        lines.append(f"target: {TARGET_N} sessions at once, no error, p95 <= {TARGET_RATIO:g}x p50 of one alone: "
                     f"not measured (needs N=1 and N={TARGET_N} in --sessions)")
    else:
        ratio = target.p95() / base if target.ok else float("inf")
        met = not target.errors and target.ok == TARGET_N and ratio <= TARGET_RATIO
        lines.append(f"target: {TARGET_N} sessions at once, no error, p95 <= {TARGET_RATIO:g}x p50 of one alone: "
                     f"{'met' if met else 'MISSED'} ({len(target.errors)} errors, {_num(ratio, '.1f')}x)")
    loads = {r.model_loads for r in rows} - {None}
    if loads:
        lines.append("model loaded once a server for all its sessions (st.cache_resource)" if loads == {1} else
                     f"model loads a server: {sorted(loads)} (expected 1: the app caches it with st.cache_resource)")
    return lines


# ------------------------------------------------------------------------------------------- catalog


def sample_rows(products: int | None) -> list[dict[str, str]]:
    """The sample CSV's rows of its first `products` products (all when None), in the CSV's order."""
    with (SAMPLE / "products.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = list(dict.fromkeys(row["id"] for row in rows))
    keep = set(ids if products is None else ids[:products])
    return [row for row in rows if row["id"] in keep]


def query_photos(rows: list[dict[str, str]], photos: Path) -> list[Path]:
    """Photos of the catalog's products that are not in the catalog (from `photos`/metadata.csv), else the
    catalog's own photos from the sample."""
    ids = {row["id"] for row in rows}
    in_catalog = {Path(row["image"]).name for row in rows}
    held_out: list[Path] = []
    if (photos / "metadata.csv").is_file():
        with (photos / "metadata.csv").open(encoding="utf-8", newline="") as fh:
            held_out = [photos / r["file"] for r in csv.DictReader(fh)
                        if r["product_id"] in ids and r["file"] not in in_catalog and (photos / r["file"]).is_file()]
    return held_out or [SAMPLE / row["image"] for row in rows]


def prepare_catalog(folder: Path, products: int | None, model: str, env: dict[str, str]) -> dict:
    """The catalog in `folder`: the one this bench prepared there before (same model), or a new one."""
    marker = folder / MARKER
    if marker.is_file():
        made = json.loads(marker.read_text())
        if made["model"] != model or (products is not None and made["products"] != products):
            raise SystemExit(f"{folder} holds a catalog prepared with --model {made['model']} --products "
                             f"{made['products']}; pass those, or another --catalog folder")
        print(f"reusing the catalog in {folder}: {made['products']} products, {made['photos']} photos", file=sys.stderr)
        return made
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty and was not prepared by this bench (no {MARKER}); "
                         "pass a new or empty folder to --catalog")
    rows = sample_rows(products)
    folder.mkdir(parents=True, exist_ok=True)
    run_env = dict(env, VPM_DATA_DIR=str(folder / "data"))
    started = time.monotonic()
    if products is None:
        command = [sys.executable, "-m", "vpm", "demo"]
    else:  # the first K products: their rows and photos copied beside a CSV of their own
        subset = folder / "subset"
        (subset / "photos").mkdir(parents=True)
        with (subset / "products.csv").open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        for row in rows:
            shutil.copy(SAMPLE / row["image"], subset / row["image"])
        command = [sys.executable, "-m", "vpm", "import", str(subset / "products.csv")]
    print(f"preparing the catalog in {folder} ({' '.join(command[1:])}; minutes for the whole sample)…",
          file=sys.stderr)
    done = subprocess.run(command, env=run_env, cwd=folder, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"preparing the catalog failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    made = {"model": model, "products": len({r["id"] for r in rows}), "photos": len(rows),
            "seconds": round(time.monotonic() - started)}
    marker.write_text(json.dumps(made, indent=1))
    return made


# ------------------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and every process below it, from /proc (0 once it is gone)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            statm = (entry / "statm").read_text().split()
        except OSError:  # it ended while we looked
            continue
        parent = int(stat.rpartition(")")[2].split()[1])  # after the command name, which may hold spaces
        children.setdefault(parent, []).append(int(entry.name))
        rss[int(entry.name)] = int(statm[1]) * page
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss.get(current, 0)
        todo.extend(children.get(current, []))
    return total


class PeakMemory:
    """Samples a process tree's resident memory on a thread; `.peak` in bytes."""

    def __init__(self, pid: int, every_s: float = 0.1):
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self._stop.wait(self.every_s)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def start_app(env: dict[str, str], work: Path) -> tuple[subprocess.Popen, str, Path]:
    """`streamlit run streamlit_app.py` from a folder holding only the app's Streamlit config, once it is healthy."""
    shutil.copytree(ROOT / ".streamlit", work / ".streamlit", ignore=shutil.ignore_patterns("secrets.toml"))
    port = free_port()
    log_path = work / "streamlit.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true", "--server.port",
             str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return server, url, log_path
        except OSError:
            time.sleep(0.2)
    stop_app(server)
    raise SystemExit(f"streamlit did not start:\n{log_path.read_text(errors='replace')[-3000:]}")


def stop_app(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# ------------------------------------------------------------------------------------------- browsers


async def visit(browser, url: str, photo: Path, timeout_s: int, ready, go: asyncio.Event) -> Visit:
    """One visitor: open Search, (wait for the others,) upload the photo, wait for the results."""
    result = Visit()
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    signalled = False
    try:
        page = await context.new_page()
        page.set_default_timeout(timeout_s * 1000)
        started = time.perf_counter()
        await page.goto(f"{url}/search")
        uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Photo of a product")
        await uploader.locator('input[type="file"]').wait_for(state="attached")
        result.page_s = time.perf_counter() - started
        await page.wait_for_timeout(300)  # the run that drew the page ends: an upload starts a run of its own
        await page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden")
        signalled = True
        ready()
        await go.wait()
        started = time.perf_counter()
        mime = "image/png" if photo.suffix.lower() == ".png" else "image/jpeg"
        await uploader.locator('input[type="file"]').set_input_files(
            {"name": photo.name, "mimeType": mime, "buffer": photo.read_bytes()})
        state = await (await page.wait_for_function(RESULTS_JS, polling=100, timeout=timeout_s * 1000)).json_value()
        result.results_s = time.perf_counter() - started
        result.queued = bool(await page.evaluate("() => window.__vpmQueued === true"))
        if state != "results":
            result.error = " ".join(str(state).split())[:200]
    except Exception as err:  # noqa: BLE001 - a visitor's failure is a figure of the run, not the end of it
        result.error = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    finally:
        if not signalled:
            ready()
        await context.close()
    return result


async def crowd(url: str, photos: list[Path], sessions: int, timeout_s: int, sync: bool) -> list[Visit]:
    from playwright.async_api import async_playwright

    go = asyncio.Event()
    if not sync:
        go.set()
    arrived = [0]

    def ready() -> None:
        arrived[0] += 1
        if arrived[0] == sessions:
            go.set()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            return list(await asyncio.gather(*(
                visit(browser, url, photos[n % len(photos)], timeout_s, ready, go) for n in range(sessions))))
        finally:
            await browser.close()


def run_one(sessions: int, env: dict[str, str], photos: list[Path], args) -> Row:
    """A fresh server for N sessions: warmed up by one search, then the crowd; its peak memory from start to end."""
    with tempfile.TemporaryDirectory(prefix=f"vpm-bench-app-{sessions}-") as tmp:
        server, url, log_path = start_app(env, Path(tmp))
        memory = PeakMemory(server.pid)
        try:
            warm = asyncio.run(crowd(url, photos[-1:], 1, args.timeout, sync=True))[0]
            if warm.error:
                raise SystemExit(f"the warm-up search failed: {warm.error}\n"
                                 f"{log_path.read_text(errors='replace')[-3000:]}")
            visits = asyncio.run(crowd(url, photos, sessions, args.timeout, args.sync))
        finally:
            peak = memory.stop()
            stop_app(server)
        log_text = log_path.read_text(errors="replace")
        loads = log_text.count(MODEL_LOADED)
    row = Row(sessions, visits, peak / 2**20, loads or None)
    print(f"  N={sessions}: {row.ok} with results, {len(row.errors)} errors, p50 {_num(row.p50())} s "
          f"(load average {_load()})", file=sys.stderr)
    return row


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"Chromium is not at {CHROMIUM}: install it with `apt-get install chromium`")
    if not (SAMPLE / "products.csv").is_file():
        raise SystemExit(f"the sample catalog is missing ({SAMPLE / 'products.csv'}); restore sample/ from the "
                         "repository")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_", "VPM_", "LOG_LEVEL"))}
    env.update(VPM_MODEL=args.model, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    scratch = None
    if args.catalog is None:
        scratch = Path(tempfile.mkdtemp(prefix="vpm-bench-app-catalog-"))
    folder = (args.catalog or scratch).resolve()
    try:
        made = prepare_catalog(folder, args.products, args.model, env)
        photos = query_photos(sample_rows(made["products"]), args.photos)
        app_env = dict(env, VPM_DATA_DIR=str(folder / "data"), **dict(args.env))
        load_before = _load()
        rows = [run_one(n, app_env, photos, args) for n in args.sessions]
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    extra = " ".join(f"{k}={v}" for k, v in args.env)
    source = "the catalog's own" if photos[0].is_relative_to(SAMPLE) else "held out of the catalog"
    print(f"\nmodel {args.model}, catalog of {made['products']} products ({made['photos']} photos), "
          f"{len(photos)} query photos ({source}), uploads {'at the same moment' if args.sync else 'as each page is up'}, "
          f"{os.cpu_count()} CPUs, server and browsers on this machine{', ' + extra if extra else ''}; "
          f"load average before {load_before}, after {_load()}")
    print("ok = sessions that got results; queued = saw the queue notice; times in seconds: page = open Search "
          "until drawn, p50/p95 = upload until results drawn; peak RSS = the server's process tree")
    for line in report(rows):
        print(line)


if __name__ == "__main__":
    main()
