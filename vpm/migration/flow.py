"""How many uploads a migration keeps in flight: as many as the bucket takes, found while it runs.

A fixed number is wrong one way or the other: 8 leaves a bucket 40 ms away idle between its answers, while many
more against a bucket that is throttling only earns SlowDown answers. So the number in flight starts small (after
a first window that warms the connections up) and doubles while the rate of finished uploads grows with it, steps
back when more in flight stopped paying (on loopback the CPU, not the round trip, is the limit), and
halves whenever S3 asks to slow down (a 503 SlowDown or another throttling answer, even one botocore's retries
then got through). A cap bounds it: each upload in flight holds a connection of the client's pool, an open file
and its read buffer, so memory stays bounded whatever the catalog.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Error codes S3 (and S3-compatible stores) answer when a client sends more than they take at the moment.
THROTTLING = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                        "TooManyRequestsException", "RequestThrottled", "RequestThrottledException",
                        "ServiceUnavailable", "503"})
GROWTH = 1.10  # a window counts as faster when its rate beats the best so far by this much


class Stopped(Exception):
    """The run is being stopped (Ctrl-C): an upload still waiting for its turn never starts."""


class Throttles:
    """Counts the throttling answers a client gets (botocore retries them; this only watches)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def watch(self, client) -> None:
        client.meta.events.register("needs-retry.s3", self._seen)

    def _seen(self, response=None, **_kwargs) -> None:
        if response is None:  # a connection error, not an answer: botocore retries it; not a sign of load
            return
        http, parsed = response
        code = str((parsed or {}).get("Error", {}).get("Code", ""))
        if getattr(http, "status_code", None) in (503, 429) or code in THROTTLING:
            with self._lock:
                self.count += 1


class InFlight:
    """A gate that lets `limit` requests through at once, the limit adjusted by what each window of finished
    requests shows. `fixed` keeps it at `start` (the --workers of earlier releases)."""

    def __init__(self, start: int, cap: int, *, fixed: bool = False, throttles: Throttles | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.cap = max(1, cap)
        self.limit = max(1, min(start, self.cap))
        self.fixed = fixed
        self.peak = self.limit  # the highest limit reached
        self.most = 0  # the most requests that were in flight at once
        self.backoffs = 0
        self._throttles = throttles
        self._seen_throttles = throttles.count if throttles else 0
        self._clock = clock
        self._busy = 0
        self._stopped = False
        self._cond = threading.Condition()
        self._window_start = clock()
        self._window_done = 0
        self._best_rate = 0.0
        self._previous = self.limit  # the limit before the last increase: where to step back to
        self._warm = False

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._cond:
            while self._busy >= self.limit and not self._stopped:
                self._cond.wait()
            if self._stopped:
                raise Stopped
            self._busy += 1
            self.most = max(self.most, self._busy)
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._finished()
                self._cond.notify_all()

    def stop(self) -> None:
        """Wake every request waiting for a turn: none of them starts (those in flight finish)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _finished(self) -> None:
        if self.fixed:
            return
        throttled = self._throttles.count if self._throttles else 0
        if throttled > self._seen_throttles:  # the bucket asked us to slow down: halve, and start measuring again
            self._seen_throttles = throttled
            self.limit = max(1, self.limit // 2)
            self._previous = self.limit
            self.backoffs += 1
            self._new_window(reset_best=True)
            return
        self._window_done += 1
        if self._window_done < max(4, self.limit):  # a window: about one round of the requests in flight
            return
        elapsed = max(self._clock() - self._window_start, 1e-6)
        rate = self._window_done / elapsed
        if not self._warm:  # the first window also paid for opening connections: it only warms up
            self._warm = True
        elif rate > self._best_rate * GROWTH:  # more in flight paid: keep growing
            self._best_rate = rate
            self._previous = self.limit
            self.limit = min(self.cap, self.limit * 2)
        elif self.limit > self._previous:  # the last increase did not pay: step back to where it stood
            self.limit = self._previous
        self.peak = max(self.peak, self.limit)
        self._new_window()

    def _new_window(self, *, reset_best: bool = False) -> None:
        self._window_start = self._clock()
        self._window_done = 0
        if reset_best:
            self._best_rate = 0.0
