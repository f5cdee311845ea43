"""Rows of a table kept in memory at the table's version: a search asks for its candidates' rows every time, and
on a bucket each read is round trips. Valid while the version is the one they were read at (a new version drops
them all); bounded, the oldest dropped first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

V = TypeVar("V")
_ABSENT = object()  # read at this version and not there


class VersionedRows(Generic[V]):
    def __init__(self, max_rows: int):
        self.max_rows = max_rows
        self._version: int | None = None
        self._rows: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: Iterable[str], version: int, read: Callable[[list[str]], dict[str, V]]) -> dict[str, V]:
        """The rows of `keys` at `version`: kept ones from memory, the rest by one `read(missing)`."""
        wanted = list(dict.fromkeys(keys))
        with self._lock:
            if version != self._version:
                self._version, self._rows = version, OrderedDict()
            found = {k: self._rows[k] for k in wanted if k in self._rows}
            for key in found:
                self._rows.move_to_end(key)
        missing = [k for k in wanted if k not in found]
        if missing:
            fresh = read(missing)
            with self._lock:
                if version == self._version:  # rows read at a newer version are not kept under an older one
                    for key in missing:
                        self._rows[key] = fresh.get(key, _ABSENT)
                    while len(self._rows) > self.max_rows:
                        self._rows.popitem(last=False)
            found.update({k: fresh.get(k, _ABSENT) for k in missing})
        return {k: v for k, v in found.items() if v is not _ABSENT}
