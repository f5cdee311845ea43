"""The search gate: at most K searches at once, the rest in line first come first served, each told its place, with a
bounded wait. Threads meet on events and queues, never on sleeps: no assertion here depends on timing."""

from __future__ import annotations

import math
import os
import queue
import threading

import pytest

from vpm.core import admission
from vpm.core.admission import SearchBusy, SearchGate, queue_notice

QUIET = 3600.0  # a heartbeat that never comes during a test: a waiter hears only of changes in its place
PATIENT = 3600.0  # a wait bound that never runs out during a test
STEP = 30  # seconds a thread may take to reach a point before the test reports it stuck


class Visitor:
    """A thread that asks the gate for a place, reports what it hears, and holds its place until released."""

    def __init__(self, gate: SearchGate, name: str, log: queue.Queue | None = None):
        self.gate, self.name = gate, name
        self.heard: queue.Queue = queue.Queue()  # the `ahead` figures its notice would show, in order
        self.admitted = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None
        self._log = log
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Visitor:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            with self.gate.admit(on_wait=self.heard.put):
                if self._log is not None:
                    self._log.put(self.name)
                self.admitted.set()
                assert self.release.wait(STEP), f"{self.name} was never released"
        except BaseException as err:  # noqa: BLE001 - the test looks at it
            self.error = err

    def next_heard(self) -> int:
        return self.heard.get(timeout=STEP)

    def finish(self) -> None:
        self.release.set()
        self.thread.join(STEP)
        assert not self.thread.is_alive(), f"{self.name} did not finish"


def wait_until(condition, what: str) -> None:
    """Poll a condition the threads will reach (bounded; a failure says which point was never reached)."""
    done = threading.Event()
    for _ in range(STEP * 100):
        if condition():
            return
        done.wait(0.01)
    pytest.fail(f"never reached: {what}")


def test_at_most_k_run_at_once_and_a_waiting_visitor_hears_how_many_are_ahead():
    gate = SearchGate(2, PATIENT, heartbeat_s=QUIET)
    first, second = Visitor(gate, "a").start(), Visitor(gate, "b").start()
    assert first.admitted.wait(STEP) and second.admitted.wait(STEP)

    third = Visitor(gate, "c").start()
    assert third.next_heard() == 2  # two searches running, nobody else in line
    fourth = Visitor(gate, "d").start()
    assert fourth.next_heard() == 3  # the two running and the third, in line before it
    assert not third.admitted.is_set() and not fourth.admitted.is_set()
    assert (gate.running, gate.waiting) == (2, 2)

    first.finish()
    assert third.admitted.wait(STEP)
    assert fourth.next_heard() == 2  # one place up
    assert not fourth.admitted.is_set()

    for visitor in (second, third):
        visitor.finish()
    assert fourth.admitted.wait(STEP)
    fourth.finish()
    assert (gate.running, gate.waiting) == (0, 0)
    assert all(v.error is None for v in (first, second, third, fourth))


def test_the_line_is_first_come_first_served():
    gate = SearchGate(1, PATIENT, heartbeat_s=QUIET)
    order: queue.Queue = queue.Queue()
    holder = Visitor(gate, "holder", order).start()
    assert holder.admitted.wait(STEP)
    line = []
    for n in range(5):  # each joins only once the one before it is in line
        visitor = Visitor(gate, f"v{n}", order).start()
        assert visitor.next_heard() == n + 1
        line.append(visitor)

    holder.finish()
    for visitor in line:
        assert visitor.admitted.wait(STEP)
        visitor.finish()

    assert [order.get_nowait() for _ in range(6)] == ["holder"] + [f"v{n}" for n in range(5)]


def test_a_crowd_never_runs_more_than_k_searches_and_every_search_runs():
    gate = SearchGate(3, PATIENT, heartbeat_s=QUIET)
    lock = threading.Lock()
    inside, peak, done = [0], [0], []
    release = threading.Event()

    def search(n: int) -> None:
        with gate.admit():
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            release.wait(STEP)
            with lock:
                inside[0] -= 1
                done.append(n)

    threads = [threading.Thread(target=search, args=(n,), daemon=True) for n in range(12)]
    for thread in threads:
        thread.start()
    wait_until(lambda: gate.running == 3 and gate.waiting == 9, "3 searches running and 9 in line")
    assert peak[0] == 3
    release.set()
    for thread in threads:
        thread.join(STEP)
    assert sorted(done) == list(range(12))
    assert peak[0] == 3
    assert (gate.running, gate.waiting) == (0, 0)


def test_a_wait_past_the_bound_gets_a_clear_message_and_leaves_the_line():
    now = [1000.0]
    gate = SearchGate(1, 60, heartbeat_s=QUIET, clock=lambda: now[0])
    holder = Visitor(gate, "holder").start()
    assert holder.admitted.wait(STEP)

    def time_passes(ahead: int) -> None:
        now[0] += 61  # the visitor's notice is up; a minute goes by with no place freed

    with pytest.raises(SearchBusy) as busy, gate.admit(on_wait=time_passes):
        pytest.fail("admitted while the only place was taken")

    message = str(busy.value)
    assert "busy" in message and "waited 60 s" in message and "1 search is still ahead" in message
    assert "Nothing was searched" in message and "try again" in message
    assert gate.waiting == 0  # it gave its place up
    holder.finish()
    with gate.admit():  # and the gate works on
        assert gate.running == 1


def test_a_stopped_visitor_gives_its_place_to_those_behind():
    """Streamlit stops a script by raising from the next st call: here, the notice's update."""
    gate = SearchGate(1, PATIENT, heartbeat_s=QUIET)
    holder = Visitor(gate, "holder").start()
    assert holder.admitted.wait(STEP)
    leaver_heard = threading.Event()
    leave = threading.Event()
    errors: queue.Queue = queue.Queue()

    def stopped(ahead: int) -> None:
        leaver_heard.set()
        leave.wait(STEP)
        raise KeyboardInterrupt("the visitor left")  # a BaseException, like Streamlit's StopException

    def leaver() -> None:
        try:
            with gate.admit(on_wait=stopped):
                pass
        except BaseException as err:  # noqa: BLE001
            errors.put(err)

    thread = threading.Thread(target=leaver, daemon=True)
    thread.start()
    assert leaver_heard.wait(STEP)
    behind = Visitor(gate, "behind").start()
    assert behind.next_heard() == 2  # the search running and the leaver

    leave.set()
    assert isinstance(errors.get(timeout=STEP), KeyboardInterrupt)
    assert behind.next_heard() == 1  # the leaver's place is gone
    holder.finish()
    assert behind.admitted.wait(STEP)
    behind.finish()
    assert (gate.running, gate.waiting) == (0, 0)


def test_a_search_that_fails_frees_its_place():
    gate = SearchGate(1, PATIENT, heartbeat_s=QUIET)
    with pytest.raises(ValueError, match="bad photo"), gate.admit():
        raise ValueError("bad photo")
    assert gate.running == 0
    with gate.admit():
        assert gate.running == 1


def test_the_heartbeat_repeats_the_notice_while_nothing_changes():
    gate = SearchGate(1, PATIENT, heartbeat_s=0.001)
    holder = Visitor(gate, "holder").start()
    assert holder.admitted.wait(STEP)
    waiter = Visitor(gate, "waiter").start()
    assert [waiter.next_heard() for _ in range(3)] == [1, 1, 1]  # same place, told again and again
    holder.finish()
    assert waiter.admitted.wait(STEP)
    waiter.finish()


def test_raising_the_limit_lets_a_waiting_visitor_in_at_once():
    gate = SearchGate(1, PATIENT, heartbeat_s=QUIET)
    holder = Visitor(gate, "holder").start()
    assert holder.admitted.wait(STEP)
    waiter = Visitor(gate, "waiter").start()
    assert waiter.next_heard() == 1

    gate.configure(2, PATIENT)

    assert waiter.admitted.wait(STEP)
    assert not holder.release.is_set() and gate.running == 2
    for visitor in (holder, waiter):
        visitor.finish()


@pytest.mark.parametrize(("limit", "wait", "message"), [
    (-1, 60, "at least 1 (got -1)"),
    (2, 0, "more than 0 seconds (got 0)"),
    (2, -5, "more than 0 seconds (got -5)"),
    (2, math.nan, "more than 0 seconds (got nan)"),
])
def test_bad_bounds_are_refused_with_what_is_wrong(limit, wait, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SearchGate(limit, wait)
    gate = SearchGate(1, 60)
    with pytest.raises(ValueError):
        gate.configure(limit, wait)
    assert (gate.limit, gate.max_wait_s) == (1, 60)  # unchanged


def test_no_limit_means_one_search_a_core():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert admission.default_limit() == expected >= 1
    assert SearchGate(0).limit == SearchGate(None).limit == expected


def test_the_notice_says_how_many_searches_are_ahead():
    assert queue_notice(1).startswith("Busy right now: 1 search ahead of you.")
    assert queue_notice(7).startswith("Busy right now: 7 searches ahead of you.")
    assert admission.QUEUE_MARK in queue_notice(3)


def test_the_process_shares_one_gate_and_new_settings_reach_it(monkeypatch):
    monkeypatch.setattr(admission, "_shared", SearchGate())
    gate = admission.shared_gate(2, 30)
    assert admission.shared_gate(2, 30) is gate
    assert admission.shared_gate(4, 10) is gate
    assert (gate.limit, gate.max_wait_s) == (4, 10)
