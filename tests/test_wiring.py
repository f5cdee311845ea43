"""One composition root (vpm/core/wiring.py): storage, the engine's stores and the model loader are built there from the
settings and handed to the facade; every face, the migration and the cluster path get their Matcher from it.

The scans below read every product module (vpm/, pages/, streamlit_app.py, tools/); tests and benches may build a
Matcher themselves (`Matcher(settings)` gets its parts from vpm.core.wiring too). What still breaks the rule is listed
in the KNOWN sets: they may only shrink, so a new violation fails, and so does a listed one that is gone.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import threading
from pathlib import Path

import pytest

from vpm.backends import engine, lance_engine
from vpm.core import wiring
from vpm.core.catalog import Page, Product
from vpm.core.config import load_settings
from vpm.core.matcher import Matcher
from vpm.core.storage import make_storage

ROOT = Path(__file__).resolve().parents[1]
# The modules allowed to build the engine's stores: the root, the engine's own module and the tables themselves.
ENGINE_MODULES = re.compile(r"^vpm/(core/wiring|backends/lance_\w+)\.py$")
LANCE_STORE = re.compile(r"^Lance\w*(Store|Index)$")

# (module, what it builds or imports): to go through vpm.core.wiring (issue 25). Only ever shrinks.
KNOWN_MATCHERS: set[str] = set()  # every product module builds its matcher through vpm.core.wiring
KNOWN_STORE_IMPORTS: set[tuple[str, str]] = set()  # the migration, comparisons and Ray workers too


def product_modules() -> list[Path]:
    found = [ROOT / "streamlit_app.py", *sorted((ROOT / "vpm").rglob("*.py"))]
    return found + sorted((ROOT / "pages").glob("*.py")) + sorted((ROOT / "tools").glob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def builds_a_matcher(path: Path) -> bool:
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "Matcher":
                return True
    return False


def lance_store_imports(path: Path) -> set[str]:
    """The Lance store classes a module imports, deferred and TYPE_CHECKING imports included."""
    return {alias.name for node in ast.walk(_tree(path)) if isinstance(node, ast.ImportFrom)
            for alias in node.names if LANCE_STORE.match(alias.name)}


# ------------------------------------------------------------------------------------------ the scans


def test_the_scans_see_a_matcher_built_and_a_store_imported(tmp_path):
    module = tmp_path / "face.py"
    module.write_text("def page():\n    from vpm.backends.lance_vectors import LanceVectorIndex\n"
                      "    from vpm.core import matcher\n    return matcher.Matcher(settings)\n")

    assert builds_a_matcher(module)
    assert lance_store_imports(module) == {"LanceVectorIndex"}


def test_only_wiring_builds_a_matcher():
    found = {_name(path) for path in product_modules() if builds_a_matcher(path)} - {"vpm/core/wiring.py"}

    assert not found - KNOWN_MATCHERS, f"build the Matcher with vpm.core.wiring.build_matcher in {sorted(found - KNOWN_MATCHERS)}"
    assert not KNOWN_MATCHERS - found, f"no longer builds one, take it off KNOWN_MATCHERS: {KNOWN_MATCHERS - found}"


def test_only_the_engine_imports_its_store_classes():
    found = {(_name(path), name) for path in product_modules() if not ENGINE_MODULES.match(_name(path))
             for name in lance_store_imports(path)}

    new = sorted(found - KNOWN_STORE_IMPORTS)
    assert not new, "get the stores from vpm.core.wiring (the facade's parts) instead: " + ", ".join(map(str, new))
    gone = sorted(KNOWN_STORE_IMPORTS - found)
    assert not gone, "no longer imported, take it off KNOWN_STORE_IMPORTS: " + ", ".join(map(str, gone))


def test_the_facade_imports_no_store_implementation():
    assert not lance_store_imports(ROOT / "vpm" / "core" / "matcher.py")
    assert "lance_engine" not in (ROOT / "vpm" / "core" / "matcher.py").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------ the root


class StandInCatalog:
    """A catalog store that is not LanceDB's: one product, and a note of what the facade asked."""

    description = "the stand-in catalog"

    def __init__(self) -> None:
        self.product = Product.model_validate({"id": "red-mug", "name": "Red mug", "category": "Kitchen"})
        self.asked: list[str] = []

    def get(self, product_id: str) -> Product:
        self.asked.append(f"get {product_id}")
        return self.product

    def page(self, **_filters) -> Page:
        self.asked.append("page")
        return Page([self.product], total=1, offset=0, limit=50)


class CountingStorage:
    """Storage that notes every call made on it."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name):
        value = getattr(self._inner, name)
        if callable(value):
            def counted(*args, **kwargs):
                self.calls.append(name)
                return value(*args, **kwargs)
            return counted
        return value


@pytest.fixture
def local_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("VPM_DATA_DIR", str(tmp_path / "data"))
    yield load_settings()
    engine.forget()


def stand_in_stores(settings, catalog):
    stores = lance_engine.stores(make_storage(settings), engine.location(settings))
    return dataclasses.replace(stores, catalog=catalog)


def test_the_facade_uses_the_catalog_store_wiring_hands_it(local_settings):
    catalog = StandInCatalog()
    matcher = wiring.build_matcher(local_settings, stores=stand_in_stores(local_settings, catalog))

    assert matcher.get_product("red-mug").name == "Red mug"
    assert [p.id for p in matcher.page_products().items] == ["red-mug"]
    assert catalog.asked == ["get red-mug", "page"]


def test_a_second_engine_is_one_entry_in_the_registry(local_settings, monkeypatch):
    catalog = StandInCatalog()
    monkeypatch.setitem(wiring.ENGINES, "stand-in", lambda storage, where: dataclasses.replace(
        lance_engine.stores(storage, where), catalog=catalog))

    matcher = wiring.build_matcher(local_settings, engine_name="stand-in")

    assert matcher.get_product("red-mug").category == "Kitchen"
    assert catalog.asked == ["get red-mug"]


def test_matcher_shorthand_gets_its_parts_from_wiring(local_settings, monkeypatch):
    """`Matcher(settings)`, as tests and scripts write it, is built from the same registry as the faces' matchers."""
    catalog = StandInCatalog()
    monkeypatch.setitem(wiring.ENGINES, wiring.DEFAULT_ENGINE, lambda storage, where: dataclasses.replace(
        lance_engine.stores(storage, where), catalog=catalog))

    assert Matcher(local_settings).get_product("red-mug").name == "Red mug"


def test_building_a_matcher_reads_nothing_and_loads_no_model(local_settings):
    storage = CountingStorage(make_storage(local_settings))
    loads: list[str] = []

    matcher = wiring.build_matcher(local_settings, storage, load_embedder=lambda: loads.append("model"))

    assert storage.calls == []
    assert loads == [] and not matcher.model_loaded
    assert matcher.storage is storage


def test_a_ray_worker_reads_the_table_the_driver_made_through_wiring(local_settings, monkeypatch):
    """cluster_work's catalog comes from wiring, known to be there (a worker never creates the table), one handle per
    worker process; asked on a thread with a deadline, so a lock taken twice fails here instead of hanging a job."""
    from vpm.backends import cluster_work

    monkeypatch.setattr(cluster_work, "_cache", {})
    wiring.build_matcher(local_settings).catalog.count()  # the driver makes the table before the job starts
    handed: list = []
    worker = threading.Thread(target=lambda: handed.append(cluster_work._catalog(local_settings)), daemon=True)
    worker.start()
    worker.join(timeout=60)

    assert handed, "the worker's catalog never came back"
    assert handed[0] is cluster_work._catalog(local_settings)
    assert handed[0].owners_of({"0" * 64}) == {}
