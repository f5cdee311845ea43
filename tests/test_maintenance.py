"""Background table maintenance (vpm/backends/maintenance.py): its cost follows the change, not the table.

A table of two big fragments with an IVF-PQ index and a scalar index, on a local folder and on a bucket (moto's
HTTP server), then rows added one at a time: the small fragments they leave are merged while the big ones stay as
they were, the new rows reach the index as new delta segments, deleted rows leave the results, and the segments
stay few however many passes run. Without pylance, LanceDB's own optimize() still does the work.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest

from vpm.backends import engine, maintenance

maintenance.pylance()  # imported here first, so that its quiet log level applies (see maintenance.pylance)

DIM = 8
BIG = maintenance.FRAGMENT_ROWS  # a fragment this big is never rewritten
POLICY = maintenance.Policy(small_fragments=4, keep_versions_for=timedelta(hours=1))
SCHEMA = pa.schema(
    [pa.field("key", pa.string(), nullable=False), pa.field("vector", pa.list_(pa.float32(), DIM), nullable=False)]
)


def rows(keys: list[str], vectors: np.ndarray) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.table({"key": keys, "vector": pa.FixedSizeListArray.from_arrays(flat, DIM)}, schema=SCHEMA)


def unit_rows(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def table(engine_location):
    """Two big fragments, indexed (IVF-PQ on the vectors, a btree on the keys)."""
    from lancedb.index import BTree, IvfPq

    table = engine.open_or_create_table(engine_location, "maintained", SCHEMA, exists=False)
    for part in range(2):
        table.add(rows([f"big-{part}-{i}" for i in range(BIG)], unit_rows(BIG, seed=part)))
    table.create_index("vector", config=IvfPq(distance_type="cosine", num_partitions=4, num_sub_vectors=2))
    table.create_index("key", config=BTree())
    yield table
    maintenance.wait_idle(60)


def add_one(table, key: str, vector: np.ndarray) -> None:
    table.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(
        rows([key], vector[None, :])
    )


def fragments(table) -> dict[int, tuple[int, list[str]]]:
    """Each fragment's id: its rows and data files."""
    dataset = table.to_lance()
    return {
        f.fragment_id: (f.metadata.physical_rows, [d.path for d in f.metadata.files]) for f in dataset.get_fragments()
    }


def segments(table) -> dict[str, list[str]]:
    """Each index's segments (uuids), oldest first."""
    return {index.name: [segment.uuid for segment in index.segments] for index in table.to_lance().describe_indices()}


def nearest(table, vector: np.ndarray, k: int = 3) -> list[str]:
    """The keys an indexed search finds (only what the index covers: unindexed rows are not scanned)."""
    table.checkout_latest()
    found = (
        table.search(vector, vector_column_name="vector")
        .distance_type("cosine")
        .nprobes(4)
        .refine_factor(10)
        .fast_search()
        .limit(k)
        .to_list()
    )
    return [row["key"] for row in found]


def test_small_fragments_are_merged_and_big_ones_left_alone(table, monkeypatch):
    monkeypatch.setattr(engine, "SMALL_FRAGMENTS_BEFORE_COMPACTION", 4)  # the engine's call sites go through here
    big = fragments(table)
    assert [n for n, _files in big.values()] == [BIG, BIG]
    vectors = unit_rows(12, seed=7)
    for i, vector in enumerate(vectors):
        add_one(table, f"new-{i}", vector)
        engine.compact_when_due(table, wait=True)

    after = fragments(table)
    assert {fid: after[fid] for fid in big} == big  # the same fragments, the same files: not rewritten
    assert len(after) <= len(big) + 3  # 12 one-row fragments became a few
    assert sum(n for n, _files in after.values()) == 2 * BIG + 12


def test_new_rows_reach_the_index_as_a_delta_and_the_old_segment_is_kept(table):
    before = segments(table)
    vectors = unit_rows(POLICY.small_fragments, seed=8)
    for i, vector in enumerate(vectors):
        add_one(table, f"new-{i}", vector)
    assert "new-0" not in nearest(table, vectors[0])  # not indexed yet: an index-only search cannot see it

    maintenance.after_write(table, POLICY, wait=True)

    after = segments(table)
    for name, uuids in before.items():
        assert after[name][: len(uuids)] == uuids  # the old segments untouched
        assert len(after[name]) == len(uuids) + 1  # one delta segment for the new rows
    assert all(nearest(table, vector)[0] == f"new-{i}" for i, vector in enumerate(vectors))
    assert table.index_stats("vector_idx").num_unindexed_rows == 0


def test_deleted_rows_leave_the_results(table):
    vectors = unit_rows(POLICY.small_fragments, seed=9)
    for i, vector in enumerate(vectors):
        add_one(table, f"new-{i}", vector)
    maintenance.after_write(table, POLICY, wait=True)
    old = unit_rows(BIG, seed=0)[5]  # big-0-5's vector
    assert nearest(table, old)[0] == "big-0-5" and nearest(table, vectors[1])[0] == "new-1"

    table.delete("key IN ('big-0-5', 'new-1')")
    for i in range(POLICY.small_fragments):
        add_one(table, f"later-{i}", unit_rows(1, seed=100 + i)[0])
    maintenance.after_write(table, POLICY, wait=True)

    assert "big-0-5" not in nearest(table, old, k=10)
    assert "new-1" not in nearest(table, vectors[1], k=10)
    assert table.count_rows("key = 'big-0-5'") == 0


def test_segments_stay_few_after_many_passes(table):
    for round_ in range(12):
        for i in range(2):
            add_one(table, f"r{round_}-{i}", unit_rows(1, seed=1000 + 2 * round_ + i)[0])
        maintenance.after_write(table, maintenance.Policy(2, POLICY.keep_versions_for), wait=True)
    counts = {name: len(uuids) for name, uuids in segments(table).items()}
    assert counts and all(n <= 4 for n in counts.values()), counts
    assert len(fragments(table)) <= 2 + 4


def test_tiers_keep_the_segments_logarithmic():
    sizes = [100_000]
    most = 0
    for _ in range(5_000):  # 5,000 passes of 24 new rows each
        sizes.append(24)
        merge = maintenance.segments_to_merge(sizes)
        if merge > 1:
            sizes[-merge:] = [sum(sizes[-merge:])]
        most = max(most, len(sizes))
    assert sum(sizes) == 100_000 + 5_000 * 24
    assert most <= 12  # log base MERGE_RATIO + 1 of 120,000 / 24, and a few
    assert maintenance.segments_to_merge([100_000]) == 1
    assert maintenance.segments_to_merge([100_000, 24]) == 1
    assert maintenance.segments_to_merge([100_000, 24, 24]) == 2


def test_without_pylance_optimize_still_compacts(table, monkeypatch):
    before = table.stats()["fragment_stats"]["num_fragments"]
    for i, vector in enumerate(unit_rows(POLICY.small_fragments, seed=10)):
        add_one(table, f"new-{i}", vector)
    with monkeypatch.context() as without:  # only around the pass: lancedb imports pylance itself where present
        without.setitem(sys.modules, "lance", None)  # `import lance` raises ImportError
        assert maintenance.pylance() is None
        maintenance.after_write(table, POLICY, wait=True)
    table.checkout_latest()
    assert table.stats()["fragment_stats"]["num_fragments"] < before + POLICY.small_fragments
    assert table.count_rows() == 2 * BIG + POLICY.small_fragments
    assert table.index_stats("vector_idx").num_unindexed_rows == 0


def test_a_pass_runs_in_the_background_once_per_table_and_wait_idle_waits_for_it(table):
    for i, vector in enumerate(unit_rows(POLICY.small_fragments, seed=11)):
        add_one(table, f"new-{i}", vector)
    started = maintenance.totals().passes
    maintenance.after_write(table, POLICY)
    maintenance.after_write(table, POLICY)  # one already runs (or has run and nothing new is due)
    assert maintenance.wait_idle(60)
    assert maintenance.totals().passes == started + 1
    assert len(fragments(table)) < 2 + POLICY.small_fragments
