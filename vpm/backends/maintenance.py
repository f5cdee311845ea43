"""What a table needs after writes, and doing it in the background at a cost that grows with the change.

Every one-at-a-time write leaves a small fragment (a data file) behind and rows that no index covers yet. A pass
puts that right without touching what is already in order:

1. compaction of the small fragments only (fewer than FRAGMENT_ROWS rows): a big fragment is not rewritten (unless
   a tenth of its rows are deleted: Lance's default), and Lance merges only neighbours that the same index segments
   cover, so no big index is remapped;
2. the new rows folded into every index as a new delta segment: the old segments are not rewritten;
3. the newest segments merged in tiers (once they add up to a fair share of the one before them), so an index keeps
   O(log N) segments and a row is merged O(log N) times;
4. versions older than `keep_versions_for` pruned, at most every CLEANUP_EVERY.

A pass is due once `small_fragments` fragments have appeared since the last one, or at least one has and the last
pass is MAINTAIN_EVERY old. It runs in a background thread (on the caller's only with `wait=True`), at most one per
table per process; one that loses a race with another writer is tried again after a later write.

The pass needs pylance (the `lance` module, the same Lance core as LanceDB's). Without it, LanceDB's own
`Table.optimize()` does the work: it compacts every fragment it deems small and merges the new rows into the whole
index, a cost that grows with the table.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from vpm.core.config import mask_secrets

log = logging.getLogger(__name__)

# A fragment with fewer rows is merged with its neighbours; a bigger one (a bulk write's) is left as it is.
FRAGMENT_ROWS = 8192
# The newest k segments of an index are merged once the segment before them is at most this many times their size.
MERGE_RATIO = 4
# A table written to since its last pass gets one after this long, however few fragments piled up.
MAINTAIN_EVERY = timedelta(minutes=10)
# Pruning old versions lists every file of the table: not on every pass.
CLEANUP_EVERY = timedelta(minutes=30)


@dataclass(frozen=True)
class Policy:
    small_fragments: int  # new fragments that make a pass due
    keep_versions_for: timedelta  # versions younger than this are kept: a reader never holds one nearly as long


@dataclass
class _State:
    """What this process knows about one table's maintenance."""

    fragments: int | None = None  # the table's fragments after the last pass (None: no pass yet here)
    last_pass: float = 0.0  # time.monotonic() of the last pass, or of the first write seen
    last_cleanup: float | None = None
    running: bool = False


@dataclass
class Totals:
    """What the passes of this process have cost so far, `after` included (benches read it)."""

    passes: int = 0
    cpu_s: float = 0.0  # process CPU time while a pass ran: the pass's, and whatever ran beside it (an upper bound)
    wall_s: float = 0.0


_states: dict[tuple[str, str], _State] = {}
_totals = Totals()
_idle = threading.Condition()


def after_write(table: Any, policy: Policy, *, after=None, wait: bool = False) -> None:
    """Call after a write to `table`: starts a maintenance pass when one is due (see the module's docstring).

    `after` runs once the pass is done (e.g. to build indexes a grown table now needs)."""
    try:
        stats = table.stats()["fragment_stats"]
        key = (str(table.uri), table.name)
    except Exception:  # noqa: BLE001 - maintenance is best effort: the next write asks again
        return
    now = time.monotonic()
    with _idle:
        state = _states.setdefault(key, _State(last_pass=now))
        if state.running or not _due(state, stats, policy, now):
            return
        state.running = True

    def run() -> None:
        cpu, wall = time.process_time(), time.monotonic()
        try:
            _run_pass(table, policy, state)
            if after is not None:
                after()
        except Exception as err:  # noqa: BLE001 - e.g. a conflict with a concurrent writer: retried after a later write
            log.info("maintenance of %s postponed: %s", table.name, _why(err))
        finally:
            with _idle:
                _totals.passes += 1
                _totals.cpu_s += time.process_time() - cpu
                _totals.wall_s += time.monotonic() - wall
                state.running = False
                _idle.notify_all()

    if wait:
        run()
    else:
        threading.Thread(target=run, name=f"maintain-{table.name}", daemon=True).start()


def wait_idle(timeout: float | None = None) -> bool:
    """Wait until no pass runs in this process; False when `timeout` seconds passed first."""
    with _idle:
        return _idle.wait_for(lambda: not any(s.running for s in _states.values()), timeout)


def totals() -> Totals:
    with _idle:
        return Totals(_totals.passes, _totals.cpu_s, _totals.wall_s)


def _due(state: _State, stats: dict, policy: Policy, now: float) -> bool:
    if state.fragments is None:  # no pass here yet: what LanceDB deems small, as before any pass
        return stats["num_small_fragments"] >= policy.small_fragments
    grown = stats["num_fragments"] - state.fragments
    return grown >= policy.small_fragments or (grown > 0 and now - state.last_pass >= MAINTAIN_EVERY.total_seconds())


def _run_pass(table: Any, policy: Policy, state: _State) -> None:
    lance = pylance()
    if lance is None:
        table.optimize(cleanup_older_than=policy.keep_versions_for)
    else:
        _pass_with_lance(lance, table, policy, state)
    table.checkout_latest()  # this process's readers see the compacted table at once
    fragments = int(table.stats()["fragment_stats"]["num_fragments"])
    with _idle:
        state.fragments, state.last_pass = fragments, time.monotonic()
    log.debug("maintained table %s (%d fragments)", table.name, fragments)


def _pass_with_lance(lance, table: Any, policy: Policy, state: _State) -> None:
    _open(lance, table).optimize.compact_files(target_rows_per_fragment=FRAGMENT_ROWS)
    _open(lance, table).optimize.optimize_indices(num_indices_to_merge=0)  # the new rows: a delta segment per index
    merged = False
    for name, sizes in _segment_sizes(_open(lance, table)).items():
        merge = segments_to_merge(sizes)
        if merge > 1:
            _open(lance, table).optimize.optimize_indices(num_indices_to_merge=merge, index_names=[name])
            merged = True
    if merged:  # the fragments one segment covers now may be merged too (only the merged segment is remapped)
        _open(lance, table).optimize.compact_files(target_rows_per_fragment=FRAGMENT_ROWS)
    now = time.monotonic()
    if state.last_cleanup is None or now - state.last_cleanup >= CLEANUP_EVERY.total_seconds():
        _open(lance, table).cleanup_old_versions(older_than=policy.keep_versions_for)
        state.last_cleanup = now


def segments_to_merge(sizes: list[int]) -> int:
    """How many of the newest segments (sizes in rows, oldest first) to merge into one: the newest k, as long as the
    segment before them is at most MERGE_RATIO times their size together; 1 means none."""
    merge = 1
    while merge < len(sizes) and sizes[-merge - 1] <= MERGE_RATIO * sum(sizes[-merge:]):
        merge += 1
    return merge


def _segment_sizes(dataset) -> dict[str, list[int]]:
    """The rows each segment of each index covers, oldest segment first (the order Lance merges the newest from)."""
    rows = {fragment.fragment_id: fragment.metadata.physical_rows for fragment in dataset.get_fragments()}
    return {
        index.name: [sum(rows.get(f, 0) for f in segment.fragment_ids) for segment in index.segments]
        for index in dataset.describe_indices()
    }


def _open(lance, table: Any):
    """The table's latest version through pylance, reached the way LanceDB reaches it."""
    return lance.dataset(table.uri, storage_options=table.initial_storage_options() or None)


def pylance():
    """pylance, or None when it is not installed (LanceDB's own optimize() is then used).

    Its log level is read when it is first imported, and nothing else imports it before a first pass: every delta
    segment of a vector index would log a warning for each empty partition (most are, for a few rows)."""
    os.environ.setdefault("LANCE_LOG", "error")
    try:
        import lance
    except ImportError:
        return None
    return lance


def _why(err: Exception) -> str:
    text = str(err).strip()
    return mask_secrets(text.splitlines()[0] if text else type(err).__name__)[:300]
