"""How the migration's messages name many things on one line: a helper for the plan, the checks, the execution
and the report alike, so none of them imports another just for it."""

from __future__ import annotations

from collections.abc import Iterable


def few(values: Iterable[str], n: int = 5) -> str:
    """The first few of many, for one readable line: 'a, b, c, d, e and 12 more'."""
    values = list(values)
    return ", ".join(values[:n]) + (f" and {len(values) - n} more" if len(values) > n else "")
