"""REST API over the same Matcher the app and the CLI use: `python -m vpm serve`.

One Matcher per app, so the model loads once (lazily, on the first search or upload) and every request
shares its storage, catalog and index (and its model calls: concurrent searches are embedded together); routes get it, and the settings, through `Depends`. The routes are
grouped by concern, one router a module:

  status_routes   GET /api/health, GET / (where the docs are)
  product_routes  /api/products (pages, one product, photos), /api/upload, /api/categories
  search_routes   POST /api/search
  image_routes    GET /api/images/{key} (the local backend's photo files)

`limits` holds what runs before any route (the API key and body size in `RequestGuard`, the body deadline in
`BodyReadDeadline`, the server's `ServerLimits`); `errors` turns every refusal into JSON
`{"success": false, "error": "..."}`; unexpected exceptions are logged and answered with a generic 500.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from vpm import __version__
from vpm.core.config import Settings, load_settings
from vpm.core.matcher import Matcher
from vpm.core.wiring import build_matcher
from vpm.faces.api import image_routes, product_routes, search_routes, status_routes
from vpm.faces.api.errors import ApiError, install_error_handlers
from vpm.faces.api.limits import (
    API_KEY_HEADER,
    MULTIPART_OVERHEAD_BYTES,
    OPEN_PATHS,
    BodyReadDeadline,
    RequestGuard,
    ServerLimits,
    server_limits,
)
from vpm.faces.api.product_routes import MAX_PHOTOS_PER_REQUEST
from vpm.faces.api.search_routes import MAX_TOP_K, SearchQuery

ROUTERS = (status_routes.root_router, status_routes.router, product_routes.router, search_routes.router,
           image_routes.router)


def create_app(settings: Settings | None = None, matcher: Matcher | None = None) -> FastAPI:
    """The API over one Matcher. Tests inject settings and/or a matcher; `serve` passes neither or settings."""
    if settings is None:
        settings = matcher.settings if matcher is not None else load_settings()
    if matcher is None:
        matcher = build_matcher(settings)  # cheap: storage client only; the model loads on first search or upload
    # Requests run on threads of their own: concurrent searches share model calls instead of queueing for the
    # cores one call at a time (vpm/core/batching.py).
    matcher.batch_concurrent_queries(settings.vpm_api_batch_queries)

    app = FastAPI(
        title="Visual Product Matcher API",
        version=__version__,
        description="Find the catalog products that look like a photo. Errors are "
        '`{"success": false, "error": "..."}`. When VPM_API_KEY is set, send it in the X-API-Key header.',
        docs_url="/docs",
    )
    app.state.matcher = matcher
    app.state.settings = settings
    app.state.api_key = settings.vpm_api_key.get_secret_value().encode() if settings.vpm_api_key else None
    _add_middleware(app, settings)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    """Innermost first: the guard, then the body deadline, then CORS outermost, so that refusals from the guard
    carry CORS headers too (a browser can read why it was refused)."""
    upload_limit = settings.max_upload_bytes
    app.add_middleware(
        RequestGuard,
        api_key=app.state.api_key,
        # All photos of one request together: the body cap bounds what one request can make the server hold.
        max_body_bytes=upload_limit + MULTIPART_OVERHEAD_BYTES,
        upload_limit_bytes=upload_limit,
    )
    app.add_middleware(BodyReadDeadline, timeout_s=server_limits(settings).body_timeout_s)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
        )


__all__ = [
    "API_KEY_HEADER",
    "MAX_PHOTOS_PER_REQUEST",
    "MAX_TOP_K",
    "MULTIPART_OVERHEAD_BYTES",
    "OPEN_PATHS",
    "ApiError",
    "BodyReadDeadline",
    "RequestGuard",
    "SearchQuery",
    "ServerLimits",
    "create_app",
    "server_limits",
]
