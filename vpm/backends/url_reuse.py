"""Presigned links reused while they have plenty of life left, so a page redrawn shows the same image URLs.

A presigned GET is signed with the current second in it: signing again on every redraw (a slider, a category)
gives every card a new URL, and the browser downloads every thumbnail again and flickers. A link is reused for
half its lifetime, so whoever receives it still has at least half of it to use.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

KEPT = 4096  # links remembered: a few pages of results; each is ~1 KB


class ReusedUrls:
    def __init__(self, lifetime_s: int, kept: int = KEPT, clock: Callable[[], float] = time.monotonic):
        self._reuse_for = lifetime_s / 2
        self._kept = kept
        self._clock = clock
        self._links: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, sign: Callable[[], str]) -> str:
        """The link signed for `key` earlier if it is young enough, else a new one from `sign()`."""
        now = self._clock()
        with self._lock:
            found = self._links.get(key)
            if found is not None and now - found[1] < self._reuse_for:
                self._links.move_to_end(key)
                return found[0]
        url = sign()  # outside the lock: signing is local but not free
        with self._lock:
            self._links[key] = (url, now)
            self._links.move_to_end(key)
            while len(self._links) > self._kept:
                self._links.popitem(last=False)
        return url

    def forget(self, key: str) -> None:
        """A deleted or replaced object's link is not handed out again."""
        with self._lock:
            self._links.pop(key, None)
