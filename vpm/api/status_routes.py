"""GET /api/health: storage, catalog, model and index state. Open without the API key: load balancers probe it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from .. import __version__
from .. import health as checks
from ..catalog import CatalogError
from ..config import Settings
from ..matcher import Matcher
from ..storage import StorageError
from .deps import MatcherDep, SettingsDep
from .errors import client_message

router = APIRouter(prefix="/api", tags=["status"])


@router.get("/health", summary="storage, catalog, model and index state (no key needed); 503 when unhealthy")
def health(
    matcher: MatcherDep,
    settings: SettingsDep,
    load_model: bool = Query(
        False, description="load the model (if not loaded yet) and check it and the index's exact coverage "
        "(walks the catalog); slow the first time",
    ),
) -> JSONResponse:
    # A routine probe (a load balancer, every few seconds) reads counts only; load_model=true walks the catalog
    # for the exact index coverage.
    report = checks.as_report(checks.checks_for(matcher, load_model=load_model))
    index = _index_state(matcher) if load_model else _index_counts(matcher)
    storage = matcher.storage
    document = {
        "status": report["status"],
        "healthy": report["status"] != "fail",
        "version": __version__,
        "storage": {
            "backend": storage.backend,
            "bucket": getattr(storage, "bucket", None),
            "region": getattr(storage, "region", None),
        },
        "model": _model_state(matcher, settings),
        "products": _product_count(matcher, index),
        "index": index,
        "checks": report["checks"],
    }
    return JSONResponse(document, status_code=200 if document["healthy"] else 503)


def _product_count(matcher: Matcher, index: dict[str, Any] | None) -> int | None:
    if index and index.get("products") is not None:
        return index["products"]
    try:
        return matcher.count_products()
    except (CatalogError, StorageError):
        return None  # the checks say why


def _model_state(matcher: Matcher, settings: Settings) -> dict[str, Any]:
    """What health reports about the model, without loading it (a load takes seconds and much memory)."""
    loaded = matcher.model_loaded
    state: dict[str, Any] = {"configured": settings.vpm_model, "loaded": loaded}
    if loaded:
        state.update(matcher.embedder.describe())
    return state


def _index_counts(matcher: Matcher) -> dict[str, Any] | None:
    """The active model's index in counts (cheap at any size); None before the model is loaded."""
    if not matcher.model_loaded:
        return None  # the index is per model: before the model is loaded there is no index to describe
    try:
        return {
            "model_id": matcher.embedder.model_id, "products": matcher.count_products(),
            "vectors": matcher.vectors.count(), "exact": False,
        }
    except (CatalogError, StorageError) as err:
        return {"error": client_message(err)}


def _index_state(matcher: Matcher) -> dict[str, Any] | None:
    """The exact coverage of the active model's index (walks the catalog a batch at a time)."""
    if not matcher.model_loaded:
        return None
    try:
        state = matcher.index_status().as_dict()
    except (CatalogError, StorageError) as err:
        return {"error": client_message(err)}
    # A count is enough for a probe; the ids can run to thousands (`python -m vpm index` lists them).
    state["missing_ids"] = state.get("missing_ids", [])[:20]
    return {**state, "exact": True}
