"""GET /api/health: storage, catalog, model and index state; GET /: where the docs are.

Both answer without the API key (load balancers probe health). When VPM_API_KEY is set, a caller without it gets
the verdict only (no storage names, no server paths, no model details) and cannot ask for a model load.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from vpm import __version__
from vpm.core import health as checks
from vpm.core.catalog import CatalogError
from vpm.core.config import Settings
from vpm.core.matcher import Matcher
from vpm.core.storage import StorageError
from vpm.faces.api.deps import MatcherDep, SettingsDep
from vpm.faces.api.errors import ApiError, client_message
from vpm.faces.api.limits import API_KEY_HEADER, key_refusal

router = APIRouter(prefix="/api", tags=["status"])
root_router = APIRouter(tags=["status"])


@root_router.get("/", summary="where the interactive docs are")
def root() -> dict[str, str]:
    return {"name": "Visual Product Matcher API", "docs": "/docs", "health": "/api/health"}


@router.get("/health", summary="healthy or not (no key needed; with VPM_API_KEY set, details only with the key); "
            "503 when unhealthy")
def health(
    request: Request,
    matcher: MatcherDep,
    settings: SettingsDep,
    load_model: bool = Query(
        False, description="load the model (if not loaded yet) and check it and the index's exact coverage "
        "(walks the catalog); slow the first time; needs the API key when one is set",
    ),
) -> JSONResponse:
    expected = request.app.state.api_key
    trusted = key_refusal(request.headers.get(API_KEY_HEADER), expected) is None
    if load_model and not trusted:  # a model load costs seconds and hundreds of MB: not for anonymous callers
        raise ApiError(401, f"load_model=true needs the API key: send it in the {API_KEY_HEADER} header")
    # A routine probe (a load balancer, every few seconds) reads counts, and checks files for at most
    # health.FILES_CHECK_LIMIT products; load_model=true walks the whole catalog for the exact index coverage.
    report = checks.as_report(checks.checks_for(matcher, load_model=load_model))
    if not trusted:  # the verdict only: no bucket, folder, model or counts for a caller without the key
        healthy = report["status"] != "fail"
        return JSONResponse({"status": report["status"], "healthy": healthy}, status_code=200 if healthy else 503)
    index = _index_state(matcher) if load_model else _index_counts(matcher)
    document = {
        "status": report["status"],
        "healthy": report["status"] != "fail",
        "version": __version__,
        "storage": matcher.files.backend_summary(),
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
