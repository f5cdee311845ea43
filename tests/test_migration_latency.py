"""The migration through a link with a real bucket's latency (tests/slow_link.py, 40 ms round trips in front of
moto's server): complete and verified, a kill half-way resumed with nothing lost, and a bounded number of requests
per photo (one PUT, no read-back, no wait for "100 Continue"), so a change that adds a round trip per photo shows
up here. Counts, never times. Plus the gate that decides how many uploads are in flight, on a clock of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from vpm.backends import engine
from vpm.core.config import load_settings
from vpm.migration import DEFAULT_WORKERS, MAX_WORKERS, SKIP, Migration
from vpm.migration.flow import InFlight, Stopped, Throttles

from conftest import LocalCatalogBuilder, migrate_killed_after

REPO = Path(__file__).resolve().parents[1]
PRODUCTS = 24  # a photo and a thumbnail each: 48 files


@pytest.fixture
def slow_catalog(tmp_path, monkeypatch, server_bucket, slow_moto_server):
    """A local catalog whose migration reaches its bucket through the slow link. The builder itself inspects
    the bucket straight (its endpoint is the server's), so the checks cost no latency."""
    endpoint, bucket = server_bucket
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("VPM_DATA_DIR", str(root))
    monkeypatch.setenv("S3_BUCKET_NAME", bucket)
    monkeypatch.setenv("S3_ENDPOINT_URL", slow_moto_server)
    builder = LocalCatalogBuilder(root, endpoint, bucket)
    builder.slow_endpoint = slow_moto_server
    yield builder
    engine.forget()


def watch_requests(migration: Migration) -> dict[str, Counter]:
    """Every request the migration's S3 client sends, by operation, and the PUTs that asked for "100 Continue"
    (each of those waits a round trip before its body goes). LanceDB writes the tables with its own client."""
    seen = {"calls": Counter(), "expect_100": Counter()}
    lock = threading.Lock()  # sent from the uploads' threads: a Counter's += is not atomic

    def sent(request, event_name, **_kwargs):
        operation = event_name.rsplit(".", 1)[-1]
        with lock:
            seen["calls"][operation] += 1
            if request.headers.get("Expect"):
                seen["expect_100"][operation] += 1

    migration.target.storage.client.meta.events.register_last("before-send.s3", sent)
    return seen


def bucket_bytes(lc, key: str) -> bytes:
    return lc.s3().get_object(Bucket=lc.bucket, Key=key)["Body"].read()


def settled(root) -> None:
    """Every local file dated 10 s back, as a catalog is that was not written the moment before its migration: a
    ledger does not trust files changed within 2 s of the run it records (ledger.RACY_S), and a quick run on an
    idle machine would otherwise fall inside that window and (safely) plan in full."""
    import os
    import time

    past = time.time() - 10
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (past, past))


def test_a_migration_through_latency_is_complete_verified_and_one_put_per_file(slow_catalog):
    slow_catalog.add(PRODUCTS)
    settled(slow_catalog.root)
    migration = Migration(load_settings())
    seen = watch_requests(migration)

    plan = migration.plan()
    report = migration.execute(plan)

    assert report.ok, report.as_text()
    assert len(report.uploaded) == 2 * PRODUCTS
    assert {c.status for c in report.verification} == {"pass"}
    # Per file exactly one PUT, sent with its body at once; nothing read back (the PUT's SHA-256 is the proof).
    assert seen["calls"]["PutObject"] == 2 * PRODUCTS
    assert not seen["expect_100"]
    # A HEAD only for an old products.json: looked for by the plan, before the rows, and by the engine's upgrade.
    assert seen["calls"]["GetObject"] == 0 and seen["calls"]["HeadObject"] <= 3
    assert seen["calls"]["ListObjectsV2"] <= 10  # per prefix, never per file
    for key in ("images/p0000.jpg", "thumbnails/p0023.webp"):
        assert bucket_bytes(slow_catalog, key) == slow_catalog.storage.get(key)
    assert len(slow_catalog.bucket_products()) == PRODUCTS
    assert slow_catalog.bucket_vectors().count() == PRODUCTS
    assert 1 <= report.in_flight["most"] <= MAX_WORKERS and report.in_flight["slow_downs"] == 0

    # The re-run is decided from listings: no PUT, no HEAD, no table opened.
    again = Migration(load_settings())
    seen = watch_requests(again)
    plan = again.plan()
    assert {i.action for i in plan.items} == {SKIP} and plan.ledger is not None
    report = again.execute(plan)
    assert report.ok and not report.uploaded
    assert set(seen["calls"]) == {"ListObjectsV2"} and seen["calls"]["ListObjectsV2"] <= 3


def test_requests_grow_with_the_files_not_with_round_trips_per_file(slow_catalog):
    """Twice the photos: twice the PUTs, and the same handful of listings and table requests."""
    counts = []
    for start, n in ((0, 6), (6, 12)):
        slow_catalog.add(n, start=start, vectors=False)
        migration = Migration(load_settings())
        seen = watch_requests(migration)
        report = migration.execute(migration.plan())
        assert report.ok, report.as_text()
        counts.append(seen["calls"])
    first, second = counts
    assert first["PutObject"] == 12 and second["PutObject"] == 24  # the new files only
    other = lambda calls: sum(n for op, n in calls.items() if op != "PutObject")  # noqa: E731
    assert other(second) <= other(first) + 2


def test_a_migration_killed_through_latency_resumes_with_nothing_lost(slow_catalog):
    slow_catalog.add(PRODUCTS)
    env = {**os.environ, "S3_ENDPOINT_URL": slow_catalog.slow_endpoint, "S3_BUCKET_NAME": slow_catalog.bucket,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    killed = subprocess.run([sys.executable, "-c", migrate_killed_after(10)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    arrived = slow_catalog.bucket_keys()
    assert 10 <= len(arrived) < 2 * PRODUCTS  # the uploads in flight finished; the rest never started
    assert not any(k.startswith("metadata/") for k in arrived)  # no row points at a file that is not there
    for key in arrived:  # whatever arrived is whole
        assert bucket_bytes(slow_catalog, key) == slow_catalog.storage.get(key)

    rerun = subprocess.run([sys.executable, "-m", "vpm", "migrate", "--force", "--json"], env=env,
                           capture_output=True, text=True, timeout=300)
    report = json.loads(rerun.stdout)
    assert rerun.returncode == 0 and report["ok"], rerun.stdout + rerun.stderr
    assert report["skipped"]["files"] == len(arrived)
    assert report["uploaded"]["files"] == 2 * PRODUCTS - len(arrived)
    assert len(slow_catalog.bucket_keys() - {k for k in slow_catalog.bucket_keys() if k.startswith("metadata/")}) \
        == 2 * PRODUCTS
    assert len(slow_catalog.bucket_products()) == PRODUCTS
    assert slow_catalog.bucket_vectors().count() == PRODUCTS


def test_slow_down_answers_shrink_the_uploads_in_flight_and_lose_nothing(slow_catalog, monkeypatch):
    """The bucket answers 503 SlowDown to the first PUT of ten photos: botocore retries them, the gate halves what
    it keeps in flight, and every file still arrives, verified."""
    from botocore.awsrequest import AWSResponse
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0)
    slow_catalog.add(PRODUCTS, vectors=False)
    migration = Migration(load_settings())
    attempts = Counter()

    class Raw:
        def stream(self, *args, **kwargs):
            yield b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"

    refused_once = {f"images/p{i:04d}.jpg" for i in range(10)}
    lock = threading.Lock()  # the uploads' threads all pass here

    def slow_down(request, **_kwargs):
        with lock:
            attempts["put"] += 1
            key = next((k for k in refused_once if request.url.endswith("/" + k)), None)
            if key is None:
                return None
            refused_once.discard(key)
            attempts["slow_down"] += 1
        return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, Raw())

    migration.target.storage.client.meta.events.register_first("before-send.s3.PutObject", slow_down)
    report = migration.execute(migration.plan())

    assert report.ok, report.as_text()
    assert attempts["slow_down"] == 10 and attempts["put"] == 2 * PRODUCTS + 10  # each refused PUT sent again
    assert report.in_flight["slow_downs"] >= 1
    assert len(slow_catalog.bucket_products()) == PRODUCTS


# ------------------------------------------------------------------------------ the gate, on its own clock


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_windows(gate: InFlight, clock: FakeClock, seconds_per_request, rounds: int) -> list[int]:
    """Let `rounds` windows of requests finish, each taking seconds_per_request(limit) (in flight at once);
    the limits the gate chose, round by round."""
    limits = []
    for _ in range(rounds):
        limit = gate.limit
        limits.append(limit)
        for _ in range(max(4, limit)):
            with gate.slot():
                clock.now += seconds_per_request(limit) / limit
    return limits


def test_the_gate_doubles_while_more_in_flight_pays_and_stops_at_its_cap():
    clock = FakeClock()
    gate = InFlight(DEFAULT_WORKERS, MAX_WORKERS, clock=clock)
    limits = run_windows(gate, clock, lambda limit: 0.040, rounds=6)  # a 40 ms round trip, whatever the number
    assert limits[:4] == [8, 8, 16, 32] and max(limits) == MAX_WORKERS == gate.peak  # a first window warms up


def test_the_gate_steps_back_when_more_in_flight_no_longer_pays():
    clock = FakeClock()
    gate = InFlight(4, 64, clock=clock)
    # The bucket takes 16 at once: beyond that each request waits its turn at the other end.
    limits = run_windows(gate, clock, lambda limit: 0.040 * max(1.0, limit / 16), rounds=8)
    assert limits[:4] == [4, 4, 8, 16] and gate.limit == 16 and max(limits) <= 32


def test_where_the_cpu_is_the_limit_the_gate_goes_back_to_where_it_started():
    clock = FakeClock()
    gate = InFlight(DEFAULT_WORKERS, MAX_WORKERS, clock=clock)
    # On loopback a request costs CPU, not a round trip: as many finish per second whatever the number in flight.
    limits = run_windows(gate, clock, lambda limit: 0.005 * limit, rounds=6)
    assert limits == [8, 8, 16, 8, 8, 8] and gate.limit == DEFAULT_WORKERS


def test_the_gate_halves_when_the_bucket_asks_to_slow_down():
    clock = FakeClock()
    throttles = Throttles()
    gate = InFlight(32, 32, throttles=throttles, clock=clock)
    throttles.count += 1
    with gate.slot():
        pass
    assert gate.limit == 16 and gate.backoffs == 1
    throttles.count += 3  # several at once: one halving per finished request that sees them
    with gate.slot():
        pass
    assert gate.limit == 8


def test_a_fixed_gate_keeps_its_number_and_a_stopped_one_lets_nothing_start():
    clock = FakeClock()
    gate = InFlight(4, 4, fixed=True, clock=clock)
    assert run_windows(gate, clock, lambda limit: 0.040 / limit, rounds=4) == [4, 4, 4, 4]
    gate.stop()
    with pytest.raises(Stopped), gate.slot():
        pass


def test_throttles_count_slow_down_answers_not_connection_errors():
    class Http:
        def __init__(self, status):
            self.status_code = status

    throttles = Throttles()
    throttles._seen(response=(Http(503), {"Error": {"Code": "SlowDown"}}))
    throttles._seen(response=(Http(400), {"Error": {"Code": "RequestLimitExceeded"}}))
    throttles._seen(response=(Http(500), {"Error": {"Code": "InternalError"}}))
    throttles._seen(response=None, caught_exception=ConnectionError())
    assert throttles.count == 2
