"""The faces talk to the facade, never to a backend (docs/architecture.md: "the arrows point one way").

A face is what a person drives: the Streamlit entry point and pages, the CLI, the REST API and vpm/webapp.py. A
backend is what the facade is built from and a face must not build or reach itself: a storage implementation
(LocalStorage, S3Storage), the LanceDB tables (vpm.lance_*) and the engine that connects them (vpm.engine). The
contracts (vpm.storage's errors and key rules, vpm.catalog, vpm.vector_index) stay open to faces.

Every import counts, deferred ones inside functions included. The faces that still break the rule are listed in
KNOWN: the list may only shrink, so a new violation fails, and so does a listed one that is gone (take it off).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Modules whose import is a backend import, wherever the storage split puts them.
BACKEND_MODULE = re.compile(r"^vpm(\.\w+)*\.(engine|lance_\w+|local_storage|s3_storage)$")
# Names that are backends whatever module they come from.
BACKEND_NAMES = {"LocalStorage", "S3Storage"}

# (face, what it imports): to be removed as the faces move behind the facade (issue 25). Only ever shrinks.
KNOWN: set[tuple[str, str]] = set()


def faces() -> list[Path]:
    found = [ROOT / "streamlit_app.py", ROOT / "vpm" / "webapp.py"]
    found += sorted((ROOT / "pages").glob("*.py"))
    found += sorted((ROOT / "vpm" / "api").rglob("*.py"))
    found += sorted(p for p in (ROOT / "vpm").glob("cli*.py"))
    return found


def _package(path: Path) -> list[str]:
    """The dotted package a file's relative imports start from (vpm/api/deps.py -> ["vpm", "api"])."""
    return list(path.relative_to(ROOT).with_suffix("").parts[:-1])


def imported(path: Path) -> set[str]:
    """Every module and `module.name` a file imports, relative imports made absolute."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                package = _package(path)
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def backend_imports(path: Path) -> set[str]:
    return {name for name in imported(path)
            if BACKEND_MODULE.match(name) or name.rsplit(".", 1)[-1] in BACKEND_NAMES}


def violations() -> set[tuple[str, str]]:
    return {(face.relative_to(ROOT).as_posix(), name) for face in faces() for name in backend_imports(face)}


def test_the_scan_sees_every_kind_of_backend_import(tmp_path, monkeypatch):
    """The checker itself: a top-level, a deferred, a relative and a from-package import are all caught."""
    face = tmp_path / "vpm" / "api" / "routes.py"
    face.parent.mkdir(parents=True)
    face.write_text(
        "from vpm import engine\n"
        "from ..lance_catalog import LanceCatalogStore\n"
        "def handler():\n"
        "    from vpm.storage import S3Storage, StorageError\n"
        "    import vpm.lance_vectors\n"
    )
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)

    assert backend_imports(face) == {"vpm.engine", "vpm.lance_catalog", "vpm.storage.S3Storage", "vpm.lance_vectors"}


def test_no_face_imports_a_backend():
    found = violations()

    new = sorted(found - KNOWN)
    assert not new, (
        "a face imports a backend; go through the facade (vpm.matcher) instead: "
        + ", ".join(f"{face} imports {name}" for face, name in new)
    )
    gone = sorted(KNOWN - found)
    assert not gone, "no longer imported, take it off KNOWN: " + ", ".join(f"{f} -> {n}" for f, n in gone)


def test_no_module_of_the_core_is_over_700_lines():
    """One idea a module: past 700 lines a module holds several, and the next change should split it."""
    too_long = {path.relative_to(ROOT).as_posix(): lines for path in sorted((ROOT / "vpm").rglob("*.py"))
                if (lines := len(path.read_text(encoding="utf-8").splitlines())) > 700}

    assert not too_long, f"split these modules (lines): {too_long}"
