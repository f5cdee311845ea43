"""A bucket tens of milliseconds away (moto's server behind tests/slow_link.py, RTT_MS round trip): what a search
and a start read from it. The assertions count requests and round trips, never time: a change that adds serial
round trips, or reads on every search what has not changed, fails here and not only in bench/bench_remote.py.

A catalog is written through moto directly (another replica, fast) and read through the slow link (this one).
"""

from __future__ import annotations

import logging
import re
import threading
import time

import pytest

from conftest import RTT_MS, make_product_photo

PRODUCTS = 6


class BucketRequests(logging.Handler):
    """The requests moto's server answers for one bucket (werkzeug logs a line each), with when each was answered."""

    LINE = re.compile(r'"(\w+) (\S+) HTTP')

    def __init__(self, bucket: str) -> None:
        super().__init__(logging.INFO)
        self.bucket = bucket
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        found = self.LINE.search(record.getMessage())
        if found and f"/{self.bucket}" in found.group(2):
            with self._lock:
                self.lines.append((time.monotonic(), f"{found.group(1)} {found.group(2)}"))

    def mark(self) -> int:
        time.sleep(0.1)  # werkzeug logs a request just after answering it
        with self._lock:
            return len(self.lines)

    def since(self, mark: int) -> list[tuple[float, str]]:
        time.sleep(0.1)
        with self._lock:
            return self.lines[mark:]


def round_trips(requests: list[tuple[float, str]]) -> int:
    """Requests answered together (within half a round trip of one another) are one round trip; one that waited
    on an earlier answer comes at least a round trip later."""
    trips, last = 0, None
    for at, _line in requests:
        if last is None or at - last > RTT_MS / 2000:
            trips += 1
        last = at
    return trips


def table_reads(requests: list[tuple[float, str]]) -> list[str]:
    """Reads of table data or of a version's manifest (a version check, a listing, is not one)."""
    return [line for _at, line in requests if "/data/" in line or line.endswith(".manifest")]


@pytest.fixture
def requests_to(slow_server_bucket):
    werkzeug = logging.getLogger("werkzeug")
    handler = BucketRequests(slow_server_bucket[1])
    level, werkzeug_level = werkzeug.level, logging.INFO
    werkzeug.setLevel(werkzeug_level)
    werkzeug.addHandler(handler)
    yield handler
    werkzeug.removeHandler(handler)
    werkzeug.setLevel(level)


def _settings(endpoint: str, bucket: str, model: str, data_dir):
    from vpm.core.config import Settings

    return Settings(s3_enabled=True, s3_bucket_name=bucket, s3_endpoint_url=endpoint, vpm_model=model,
                    vpm_device="cpu", vpm_data_dir=data_dir)


@pytest.fixture
def replicas(moto_server, slow_server_bucket, tiny_clip_dir, tmp_path):
    """(writer, reader): two Matchers on one bucket, the writer through moto directly, the reader through the slow
    link, each with tables of its own like two processes; the writer has added PRODUCTS products."""
    from vpm.backends import engine
    from vpm.core.matcher import Matcher

    slow, bucket = slow_server_bucket
    writer = Matcher(_settings(moto_server, bucket, str(tiny_clip_dir), tmp_path / "w"))
    for i in range(PRODUCTS):
        writer.add_product(make_product_photo(i), f"p{i}.png", name=f"product {i}", category="mugs",
                           product_id=f"p{i}")
    reader = Matcher(_settings(slow, bucket, str(tiny_clip_dir), tmp_path / "r"))
    yield writer, reader
    engine.forget()


def test_a_warm_search_reads_nothing_from_a_bucket_40_ms_away(replicas, requests_to):
    _writer, reader = replicas
    queries = [make_product_photo(i) for i in range(4)]
    for query in queries:  # the first searches open the tables and read their candidates' rows
        reader.search_image(query, "q.png")
    mark = requests_to.mark()
    for i, query in enumerate(queries):
        response = reader.search_image(query, "q.png", threshold=-1)
        assert response.results[0].product.id == f"p{i}"
    warm = requests_to.since(mark)
    # Nothing changed: no table data and no manifest is read again (not the products, nor the candidates'
    # keypoints), only version checks: a listing per table, at most every engine.REFRESH_AFTER, all at once.
    assert table_reads(warm) == []
    assert all("_versions/" in line for _at, line in warm), warm


def test_a_first_search_reads_the_tables_side_by_side(replicas, requests_to):
    """A fresh process's first search opens four tables, reads the products, the vectors and the calibration:
    side by side that is 7 round trips here; one after another it was 18."""
    from vpm.backends import engine

    _writer, reader = replicas
    engine.forget(reader.where)
    mark = requests_to.mark()
    response = reader.search_image(make_product_photo(2), "q.png", threshold=-1)
    assert response.results[0].product.id == "p2"
    first = requests_to.since(mark)
    assert round_trips(first) <= 12, [line for _at, line in first]


def test_a_start_reads_ahead_so_the_first_search_reads_no_table(replicas, requests_to):
    from vpm.backends import engine
    from vpm.backends.warm_start import warm_up

    _writer, reader = replicas
    engine.forget(reader.where)
    warm_up(reader).join()
    mark = requests_to.mark()
    response = reader.search_image(make_product_photo(3), "q.png", threshold=-1)
    assert response.results[0].product.id == "p3"
    # The products, the vectors and the calibration were read at the start; only the keypoints of the candidates
    # this search verifies, if it verifies, are read now (all photos' keypoints are too big to read ahead).
    read_now = [line for line in table_reads(requests_to.since(mark)) if "features-" not in line]
    assert read_now == []


def test_another_replicas_writes_are_seen_within_two_seconds(replicas):
    from vpm.backends import engine

    writer, reader = replicas
    assert reader.get_product("p1").name == "product 1"  # now held in the reader's memory
    reader.search_image(make_product_photo(1), "q.png")
    writer.update_product("p1", name="renamed mug")
    writer.add_product(make_product_photo(40), "new.png", name="new arrival", category="mugs", product_id="p40")
    time.sleep(2.0)  # the visibility promised: another replica's write, seen by every read 2 s after it
    assert engine.READ_CONSISTENCY.total_seconds() < 2.0
    assert reader.get_product("p1").name == "renamed mug"
    found = reader.search_image(make_product_photo(40), "q.png", threshold=-1)
    assert found.results[0].product.id == "p40"
    assert reader.count_products() == PRODUCTS + 1
