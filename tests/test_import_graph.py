"""The modules of vpm/ import one another one way: no import cycle (docs/architecture.md, "the arrows point one way").

Every import counts: at the top of a module, deferred inside a function, and under TYPE_CHECKING (a type hint
that names the importer is an arrow pointing back, even though Python never runs it). Importing `vpm.a.b` also
runs the package `vpm.a`, so that is an arrow too. A cycle that cannot go yet is listed in KNOWN by the one edge
that closes it, with why: the list may only shrink, so a new cycle fails, and so does a listed edge that no longer
closes one (take it off).
"""

from __future__ import annotations

import ast
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Why each known edge is still there, and what would remove it. Only ever shrinks.
_HINT_ONLY = "names Matcher in type hints only (TYPE_CHECKING): the facade calls this helper, which never imports it"
KNOWN: dict[tuple[str, str], str] = {
    # `Matcher(settings)`, as tests and benches write it, asks the composition root for the parts it is not given:
    # a deferred import in Matcher.__init__, while wiring imports the Matcher to build it.
    ("vpm.core.matcher", "vpm.core.wiring"): "Matcher(settings) shorthand (deferred import in Matcher.__init__)",
    # The facade's helpers, each handed the Matcher and typed with it; each goes when it takes the few parts it uses
    # (a Protocol, or the stores themselves) instead of the whole facade, as bulk_import did.
    ("vpm.core.augmented", "vpm.core.matcher"): _HINT_ONLY,
    ("vpm.core.calibration", "vpm.core.matcher"): _HINT_ONLY,
    ("vpm.core.evaluate", "vpm.core.matcher"): _HINT_ONLY,
    ("vpm.models.model_outlook", "vpm.core.matcher"): _HINT_ONLY,
    ("vpm.core.query_mix", "vpm.core.matcher"): _HINT_ONLY,
    ("vpm.core.searching", "vpm.core.matcher"): _HINT_ONLY,
    ("vpm.backends.warm_start", "vpm.core.matcher"): _HINT_ONLY,
}

Graph = dict[str, dict[str, int]]  # module -> {module it imports: the line of the first such import}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, package: list[str]) -> list[str]:
    """The dotted names an import statement reaches: modules, or `module.name` (which may be a module too)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    module = node.module or ""
    if node.level:
        base = package[: len(package) - node.level + 1]
        module = ".".join([*base, module] if module else base)
    return [module] + [f"{module}.{alias.name}" for alias in node.names]


def import_graph(root: Path, package: str = "vpm") -> Graph:
    """Which module of `package` (under `root`) imports which, every kind of import included."""
    paths = {module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}
    graph: Graph = {name: {} for name in paths}
    for name, path in paths.items():
        here = list(path.relative_to(root).parts[:-1])  # the package relative imports start from
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for dotted in _imported(node, here):
                while dotted and dotted not in paths:  # `module.name`: the module
                    dotted = dotted.rpartition(".")[0]
                # The module, and every package above it that the importer is not inside (it runs first).
                while dotted in paths and dotted != name and not name.startswith(dotted + "."):
                    graph[name].setdefault(dotted, node.lineno)
                    dotted = dotted.rpartition(".")[0]
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle, as the modules around it (the first repeated at the end); None when there is none."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            following = next(stack[-1], None)
            if following is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif following in on_path:
                return [*path[path.index(following) :], following]
            elif following not in done:
                path.append(following)
                on_path.add(following)
                stack.append(iter(sorted(graph.get(following, ()))))
    return None


def reaches(graph: Graph, start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for following in graph.get(todo.pop(), ()):
            if following == goal:
                return True
            if following not in seen:
                seen.add(following)
                todo.append(following)
    return False


def _shown(graph: Graph, cycle: list[str]) -> str:
    return " -> ".join([cycle[0]] + [f"{b} (line {graph[a][b]} of {a})" for a, b in pairwise(cycle)])


# ------------------------------------------------------------------------------------------ the scan


def test_the_scan_sees_top_level_deferred_type_checking_and_package_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def later():\n    from .sub.c import thing\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import A\nimport os\n"
    )

    graph = import_graph(tmp_path, "pkg")

    assert graph["pkg.a"] == {"pkg.b": 1}
    assert graph["pkg.b"] == {"pkg.sub.c": 2, "pkg.sub": 2}  # the package runs before its module
    assert graph["pkg.sub.c"] == {"pkg.a": 3}  # TYPE_CHECKING counts; os is not the package's
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    del graph["pkg.sub.c"]["pkg.a"]
    assert find_cycle(graph) is None


# ------------------------------------------------------------------------------------------ the rule


def test_vpm_has_no_import_cycle_but_the_known_ones():
    graph = import_graph(ROOT)
    allowed = {a: {b: line for b, line in targets.items() if (a, b) not in KNOWN} for a, targets in graph.items()}

    cycle = find_cycle(allowed)

    assert cycle is None, (
        f"import cycle: {_shown(graph, cycle)}; point the arrows one way: move what both need into a lower module, "
        "or hand the lower one plain data (or a Protocol) instead of importing the upper one"
    )


def test_every_known_edge_still_closes_a_cycle():
    graph = import_graph(ROOT)

    gone = sorted((a, b) for a, b in KNOWN if b not in graph.get(a, {}) or not reaches(graph, b, a))

    assert not gone, "no longer part of a cycle, take it off KNOWN: " + ", ".join(f"{a} -> {b}" for a, b in gone)
