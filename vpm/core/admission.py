"""A process-wide gate for searches: at most K embed and rank at once; the others wait in line, knowing their place.

Every Streamlit session runs its script on a thread of its own, and a search is CPU-bound (the model, then the
keypoints). Twenty searches at once on two cores each get a twentieth of the machine: all of them slow, none
finished early, and memory grows with every search in flight. The gate lets K through (by default one a CPU
core), and the rest wait first come, first served. A waiting caller is told how many searches are ahead of it
(running, or in line before it) so the page can say so instead of looking stuck, and the wait is bounded: past
it the caller gets SearchBusy, a message that says what happened and what to do.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from vpm.core.errors import VpmError
from vpm.core.presentation import plural

DEFAULT_MAX_WAIT_S = 60.0
# A waiting caller hears from the gate at least this often, even when its place has not changed: Streamlit stops a
# script (the visitor left, or clicked again) only at its next st call, so the notice's refresh is where it can.
HEARTBEAT_S = 1.0
QUEUE_MARK = "ahead of you"  # in every queue notice; the crowd bench looks for it


class SearchBusy(VpmError):
    """The wait for a free search place ran past its bound."""


def default_limit() -> int:
    """One search a CPU core this process may use (its affinity, where the system says)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores)


def queue_notice(ahead: int) -> str:
    """What a waiting visitor reads: how many searches are before theirs, and that it will start by itself."""
    return (f"Busy right now: {plural(ahead, 'search', 'searches')} {QUEUE_MARK}. Yours starts as soon as a place "
            "is free; keep this page open…")


def _check(limit: int | None, max_wait_s: float) -> tuple[int, float]:
    limit = limit or default_limit()
    if limit < 1:
        raise ValueError(f"the number of searches at once must be at least 1 (got {limit})")
    if not max_wait_s > 0:  # also refuses NaN
        raise ValueError(f"the longest wait for a search must be more than 0 seconds (got {max_wait_s})")
    return limit, float(max_wait_s)


class SearchGate:
    """`with gate.admit(on_wait): search()` runs at most `limit` searches at once, first come, first served.

    `limit` 0 or None means default_limit(). While a caller waits, `on_wait(ahead)` is called on the caller's own
    thread, never under the gate's lock: when the number ahead changes, and at least every `heartbeat_s`. An
    exception raised by `on_wait` (Streamlit stopping the script) gives the caller's place up and propagates.
    """

    def __init__(self, limit: int | None = None, max_wait_s: float = DEFAULT_MAX_WAIT_S, *,
                 heartbeat_s: float = HEARTBEAT_S, clock: Callable[[], float] = time.monotonic):
        self.limit, self.max_wait_s = _check(limit, max_wait_s)
        self.heartbeat_s = heartbeat_s
        self._clock = clock
        self._cond = threading.Condition()
        self._line: deque[object] = deque()  # the waiting callers' tickets, first in line first
        self._running = 0

    @property
    def running(self) -> int:
        with self._cond:
            return self._running

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._line)

    def configure(self, limit: int | None, max_wait_s: float) -> None:
        """New bounds for the next admissions (the settings changed); searches already running finish as they are."""
        limit, max_wait_s = _check(limit, max_wait_s)
        with self._cond:
            self.limit, self.max_wait_s = limit, max_wait_s
            self._cond.notify_all()  # a higher limit lets waiting callers in now

    @contextmanager
    def admit(self, on_wait: Callable[[int], None] | None = None) -> Iterator[None]:
        self._enter(on_wait)
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def _enter(self, on_wait: Callable[[int], None] | None) -> None:
        ticket = object()
        started = self._clock()
        told: int | None = None
        told_at = started
        with self._cond:
            self._line.append(ticket)
        try:
            while True:
                with self._cond:
                    if self._line[0] is ticket and self._running < self.limit:
                        self._line.popleft()
                        self._running += 1
                        self._cond.notify_all()  # the next in line may fit too
                        return
                    ahead = self._running + self._line.index(ticket)
                    now = self._clock()
                    if now - started >= self.max_wait_s:
                        raise SearchBusy(
                            f"the app is busy: your search waited {self.max_wait_s:g} s for a free place and "
                            f"{plural(ahead, 'search', 'searches')} {'is' if ahead == 1 else 'are'} still ahead of "
                            "it. Nothing was searched; try again in a minute"
                        )
                    quiet_for = now - told_at
                    if on_wait is None or (ahead == told and quiet_for < self.heartbeat_s):
                        # Nothing new to say: sleep until a place frees, the next heartbeat, or the bound.
                        wake = self.max_wait_s - (now - started)
                        if on_wait is not None:
                            wake = min(wake, self.heartbeat_s - quiet_for)
                        self._cond.wait(wake)
                        continue
                on_wait(ahead)  # outside the lock: a page update must not hold up the others
                told, told_at = ahead, self._clock()
        except BaseException:
            with self._cond:
                if ticket in self._line:
                    self._line.remove(ticket)
                    self._cond.notify_all()  # those behind move up a place
            raise


_shared = SearchGate()  # the process's one gate; shared_gate() sets its bounds from the settings
_shared_lock = threading.Lock()


def shared_gate(limit: int | None = None, max_wait_s: float = DEFAULT_MAX_WAIT_S) -> SearchGate:
    """The one gate of this process (every session of the app shares it), set to these bounds."""
    with _shared_lock:
        if _check(limit, max_wait_s) != (_shared.limit, _shared.max_wait_s):
            _shared.configure(limit, max_wait_s)
        return _shared
