"""The composition root: builds storage, the table engine's stores and the model loader from the settings and
hands them to the facade. Every face, the migration and the cluster path get their Matcher here; the Matcher
builds nothing itself. What reads or writes tables without a facade (the migration's bucket, Ray workers, a model
comparison's scratch vectors) gets its stores here too (`stores_for`, `scratch_stores`).

Nothing is opened or loaded here: storage is a client, the stores open their tables on first use, and the model
loads on the first search or upload (drawing a page or answering a listing never imports torch). A second table
engine (Qdrant, S3 Vectors) is one module returning a `vpm.core.stores.Stores` and one line in ENGINES.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vpm.backends import engine, lance_engine
from vpm.core.config import Settings
from vpm.core.matcher import Matcher
from vpm.core.storage import Storage, make_storage
from vpm.core.stores import Stores

if TYPE_CHECKING:
    from vpm.models.embeddings import Embedder

# name -> stores(storage, location, *, known=None): how each table engine opens the catalog's stores (`known`:
# whether the tables are known to be there; see lance_engine.stores).
ENGINES: dict[str, Callable[..., Stores]] = {
    "lance": lance_engine.stores,
}
DEFAULT_ENGINE = "lance"


def configured_model(settings: Settings) -> Callable[[], Embedder]:
    """Loads VPM_MODEL on VPM_DEVICE/VPM_RUNTIME when called (vpm.models.embeddings imports torch lazily itself)."""

    def load() -> Embedder:
        from vpm.models.embeddings import load_embedder

        return load_embedder(settings.vpm_model, settings.vpm_device, settings.vpm_runtime)

    return load


def parts(
    settings: Settings, storage: Storage | None = None, stores: Stores | None = None,
    load_embedder: Callable[[], Embedder] | None = None, *, engine_name: str = DEFAULT_ENGINE,
) -> tuple[Storage, Stores, Callable[[], Embedder]]:
    """What the facade is made of, each given part kept as it is and the others built from the settings."""
    storage = storage if storage is not None else make_storage(settings)
    if stores is None:
        stores = ENGINES[engine_name](storage, engine.location(settings))
    return storage, stores, load_embedder or configured_model(settings)


def stores_for(
    settings: Settings, storage: Storage | None = None, *, known: bool | None = None,
    engine_name: str = DEFAULT_ENGINE,
) -> Stores:
    """The engine's stores over these settings' tables, for what reads or writes them without a facade: the
    migration's bucket and Ray workers (`known=True`: tables another process made; see lance_engine.stores)."""
    storage = storage if storage is not None else make_storage(settings)
    return ENGINES[engine_name](storage, engine.location(settings), known=known)


def scratch_stores(settings: Settings, folder: Path, *, engine_name: str = DEFAULT_ENGINE) -> Stores:
    """Stores of their own in `folder`, empty and apart from the catalog (a model comparison's vectors): tables
    are created there on first use. Call `forget()` on them before the folder is removed."""
    local = settings.model_copy(update={"vpm_data_dir": Path(folder), "s3_enabled": False, "vpm_storage": "local"})
    return stores_for(local, known=False, engine_name=engine_name)


def build_matcher(
    settings: Settings, storage: Storage | None = None, *, embedder: Embedder | None = None,
    load_embedder: Callable[[], Embedder] | None = None, stores: Stores | None = None,
    engine_name: str = DEFAULT_ENGINE,
) -> Matcher:
    """The facade over these settings' catalog. `embedder` is used as given; else `load_embedder()` (VPM_MODEL by
    default) runs on first use."""
    storage, stores, load_embedder = parts(settings, storage, stores, load_embedder, engine_name=engine_name)
    return Matcher(settings, storage, stores=stores, embedder=embedder, load_embedder=load_embedder)
