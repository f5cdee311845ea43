"""The faces see the stored files through the facade (`matcher.files`, vpm/core/catalog_files.py) and read products
through its methods, never through the parts the facade is built from: no face touches a matcher's `storage`,
`catalog` or `where` (docs/architecture.md: "a face ... never reaches a table, a file layout or the S3 client").

A matcher is any name or attribute called `matcher` (or ending in `_matcher`: `app.state.matcher`,
`local_matcher`) and any call of `get_matcher()` / `build_matcher(...)`. Deferred code inside functions counts.
The faces that break the rule would be listed in KNOWN (none today): a new use fails, and so
does a listed one that is gone (take it off).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"storage", "catalog", "where"}
MATCHER_CALLS = {"get_matcher", "build_matcher", "Matcher"}

# (face, part): faces allowed to reach past the facade. Empty since issue 25, and it stays so: add a door to
# vpm/core/catalog_files.py (matcher.files) instead.
KNOWN: set[tuple[str, str]] = set()


def faces() -> list[Path]:
    found = [ROOT / "streamlit_app.py", *sorted((ROOT / "pages").glob("*.py"))]
    return found + sorted((ROOT / "vpm" / "faces").rglob("*.py"))


def _is_matcher(node: ast.expr) -> bool:
    """`matcher`, `x.matcher`, `local_matcher`, `get_matcher()`, `webapp.get_matcher()`, `build_matcher(s)`."""
    if isinstance(node, ast.Name):
        return node.id == "matcher" or node.id.endswith("_matcher")
    if isinstance(node, ast.Attribute):
        return node.attr == "matcher" or node.attr.endswith("_matcher")
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name in MATCHER_CALLS
    return False


def reached_parts(source: str, filename: str = "<face>") -> list[tuple[int, str]]:
    """(line, part) for every `<matcher>.storage`, `.catalog` or `.where` in this source."""
    return sorted(
        (node.lineno, node.attr)
        for node in ast.walk(ast.parse(source, filename=filename))
        if isinstance(node, ast.Attribute) and node.attr in PARTS and _is_matcher(node.value)
    )


def violations() -> dict[tuple[str, str], list[int]]:
    found: dict[tuple[str, str], list[int]] = {}
    for face in faces():
        name = face.relative_to(ROOT).as_posix()
        for line, part in reached_parts(face.read_text(encoding="utf-8"), name):
            found.setdefault((name, part), []).append(line)
    return found


def test_the_scan_sees_every_way_a_face_reaches_a_part():
    """The checker itself: names, attributes, calls, deferred code; and what it must let through."""
    source = (
        "matcher.storage.get(key)\n"
        "data = webapp.get_matcher().storage.get(key)\n"
        "def handler(request):\n"
        "    return request.app.state.matcher.where.prefix\n"
        "version = local_matcher.catalog.version()\n"
        "build_matcher(settings).catalog.get_many(ids)\n"
        # Not a matcher's parts: the facade's door, a module named catalog, another object's storage.
        "matcher.files.read(key)\n"
        "from vpm.core import catalog\n"
        "catalog.sort_categories([])\n"
        "settings.storage\n"
        "plan.estimate.catalog\n"
    )
    assert reached_parts(source) == [(1, "storage"), (2, "storage"), (4, "where"), (5, "catalog"), (6, "catalog")]


def test_no_face_reaches_past_the_facade():
    found = violations()
    new = {
        f"{face}: matcher.{part} (line {', '.join(map(str, lines))})"
        for (face, part), lines in found.items()
        if (face, part) not in KNOWN
    }
    assert not new, (
        "faces reach past the facade; use matcher.files (vpm/core/catalog_files.py) or a Matcher method instead:\n"
        + "\n".join(sorted(new))
    )


def test_the_known_list_only_shrinks():
    gone = KNOWN - set(violations())
    assert not gone, f"no longer reached past the facade: take these off KNOWN: {sorted(gone)}"
