"""The faces talk to the facade, never to a backend (docs/architecture.md: "the arrows point one way").

A face is what a person drives: the Streamlit entry point and pages, the CLI, the REST API and vpm/faces/webapp.py. A
backend is what the facade is built from and a face must not build or reach itself: a storage implementation
(LocalStorage, S3Storage), the LanceDB tables (vpm.backends.lance_*) and the engine that connects them (vpm.backends.engine). The
contracts (vpm.core.storage's errors and key rules, vpm.core.catalog, vpm.core.vector_index) stay open to faces.

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
    found = [ROOT / "streamlit_app.py", *sorted((ROOT / "pages").glob("*.py"))]
    return found + sorted((ROOT / "vpm" / "faces").rglob("*.py"))


def _package(path: Path) -> list[str]:
    """The dotted package a file's relative imports start from (vpm/faces/api/deps.py -> ["vpm", "faces", "api"])."""
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
    face = tmp_path / "vpm" / "faces" / "api" / "routes.py"
    face.parent.mkdir(parents=True)
    face.write_text(
        "from vpm.backends import engine\n"
        "from ...backends.lance_catalog import LanceCatalogStore\n"
        "def handler():\n"
        "    from vpm.core.storage import S3Storage, StorageError\n"
        "    import vpm.backends.lance_vectors\n"
    )
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)

    assert backend_imports(face) == {"vpm.backends.engine", "vpm.backends.lance_catalog", "vpm.core.storage.S3Storage", "vpm.backends.lance_vectors"}


def test_no_face_imports_a_backend():
    found = violations()

    new = sorted(found - KNOWN)
    assert not new, (
        "a face imports a backend; go through the facade (vpm.core.matcher) instead: "
        + ", ".join(f"{face} imports {name}" for face, name in new)
    )
    gone = sorted(KNOWN - found)
    assert not gone, "no longer imported, take it off KNOWN: " + ", ".join(f"{f} -> {n}" for f, n in gone)


def test_no_module_of_the_core_is_over_700_lines():
    """One idea a module: past 700 lines a module holds several, and the next change should split it."""
    too_long = {path.relative_to(ROOT).as_posix(): lines for path in sorted((ROOT / "vpm").rglob("*.py"))
                if (lines := len(path.read_text(encoding="utf-8").splitlines())) > 700}

    assert not too_long, f"split these modules (lines): {too_long}"


def faces_importers() -> set[tuple[str, str]]:
    """(module, face module) for every module under vpm/ outside vpm/faces that imports a face."""
    found = set()
    for path in sorted((ROOT / "vpm").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("vpm/faces/") or rel == "vpm/__main__.py":  # `python -m vpm` is the CLI's own door
            continue
        found |= {(rel, name) for name in imported(path) if name == "vpm.faces" or name.startswith("vpm.faces.")}
    return found


def test_no_lower_layer_imports_a_face(tmp_path, monkeypatch):
    """The arrows point one way: the core, the models, the backends and the migration never import a face."""
    assert not faces_importers(), f"a lower layer imports a face: {sorted(faces_importers())}"

    planted = tmp_path / "vpm" / "core" / "health.py"  # the scan itself catches a deferred relative import
    planted.parent.mkdir(parents=True)
    planted.write_text("def look():\n    from ..faces import presentation\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert faces_importers() == {("vpm/core/health.py", "vpm.faces"), ("vpm/core/health.py", "vpm.faces.presentation")}
