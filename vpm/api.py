"""REST API over the same Matcher the app and the CLI use: `python -m vpm serve`.

One Matcher per app, so the model loads once (lazily, on the first search or upload) and every request
shares its storage, catalog and index. Every error is JSON `{"success": false, "error": "..."}` with a 4xx
or 5xx status; unexpected exceptions are logged and answered with a generic 500, never a stack trace.

Two checks run before any route, in `RequestGuard`: the API key (when VPM_API_KEY is set) and the request
body size, so an unauthenticated or oversized upload is refused before its body is read. `BodyReadDeadline`
bounds how long a request body may take to arrive; the server's other limits (`ServerLimits`: header
deadline, concurrency cap, keep-alive) are applied by `python -m vpm serve`.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import quote

import anyio
from fastapi import FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import Headers
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException

from . import __version__
from . import health as checks_module
from .catalog import CatalogError, DuplicateProduct, InvalidProduct, Product, ProductNotFound
from .config import ConfigError, Settings, load_settings
from .images import SUPPORTED_FORMATS, ImageError, ImageTooLargeError
from .storage import InvalidKey, ObjectNotFound, StorageError, validate_key

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
# Room for the multipart boundaries, part headers and the text fields around the image itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# Paths that answer without the API key: load balancers probe health; the docs describe, they hold no data.
OPEN_PATHS = frozenset({"/api/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
MAX_TOP_K = 200

# Extension -> content type for the files /api/images serves (originals and .webp thumbnails).
IMAGE_TYPES: dict[str, str] = {ext: ctype for ext, ctype in SUPPORTED_FORMATS.values()}
IMAGE_TYPES.update({"jpeg": "image/jpeg", "tif": "image/tiff", "heif": "image/heif"})


# An absolute file path (POSIX, two or more parts; or a Windows drive path) that is not part of a URL.
_SERVER_PATH = re.compile(r"(?<![\w.:/\\-])(?:/[^\s'\"/:;,()]+){2,}/?|\b[A-Za-z]:\\[^\s'\"]*")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status, headers=headers)


def _client_message(exc: Exception) -> str:
    """A library error's message for the client, minus server file paths: they tell an attacker our layout."""
    return _SERVER_PATH.sub("<server path>", str(exc))


class ApiError(HTTPException):
    """A refusal with a status and a message for the client (HTTPException, so FastAPI re-raises it as is)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=message, headers=headers)


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(
            413,
            f"request body is larger than the upload limit of {limit / (1024 * 1024):.0f} MB "
            "(VPM_MAX_UPLOAD_MB); send a smaller image",
        )


class BodyReadTimeout(ApiError):
    def __init__(self, timeout_s: float):
        super().__init__(
            408,
            f"the request body did not arrive within {timeout_s:g} s (VPM_API_BODY_TIMEOUT_S); send it again",
            # uvicorn closes the connection after this response: the rest of the body is never coming.
            headers={"Connection": "close"},
        )


# ------------------------------------------------------------------------------------- server limits


@dataclass(frozen=True)
class ServerLimits:
    """What keeps slow or lying clients from holding the server; each is VPM_API_<NAME> in the environment."""

    max_concurrency: int = 100  # open connections + running requests; past it uvicorn answers 503 at once
    header_timeout_s: float = 10.0  # the request line and headers must arrive within this
    body_timeout_s: float = 60.0  # the whole body must arrive within this of the app asking for it
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this
    shutdown_timeout_s: int = 10  # on SIGTERM, requests still running after this are cancelled


def server_limits(settings: Settings) -> ServerLimits:
    """The limits from Settings fields `vpm_api_<name>` when they exist, else from VPM_API_<NAME>, else defaults."""
    return ServerLimits(**{f.name: _limit(settings, f.name, f.default) for f in fields(ServerLimits)})


def _limit(settings: Settings, name: str, default: float) -> float:
    setting = f"vpm_api_{name}"
    value = getattr(settings, setting, None)
    if value is None:
        value = os.environ.get(setting.upper(), "").strip() or default
    kind = type(default)  # int or float, as the default is
    try:
        number = kind(value)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"Invalid {setting.upper()}: {value!r} is not {what}") from None
    if not 0 < number < 1e6:  # also refuses nan and inf
        raise ConfigError(f"Invalid {setting.upper()}: must be a positive number (got {value!r})")
    return number


# ------------------------------------------------------------------------------------- request guard


class RequestGuard:
    """ASGI middleware: API key first, then the body size, both before the route reads anything.

    Starlette's own body limiter answers in plain text whenever a response starts before the body is read
    (a 401, say), so this one is ours: every refusal stays JSON and passes through CORS.
    """

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, upload_limit_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.upload_limit_bytes = upload_limit_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if self.api_key is not None and scope["method"] != "OPTIONS" and _route_path(scope) not in OPEN_PATHS:
            supplied = headers.get(API_KEY_HEADER, "").encode()
            # Constant time, so the key cannot be guessed a byte at a time from response timings.
            if not hmac.compare_digest(supplied, self.api_key):
                what = "wrong" if supplied else "missing"
                return await _error(401, f"{what} API key: send it in the {API_KEY_HEADER} header")(
                    scope, receive, send
                )
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await _error(413, str(BodyTooLarge(self.upload_limit_bytes).detail))(scope, receive, send)

        received = 0
        started = False

        async def capped_receive():
            # Content-Length may be absent (chunked) or wrong: count what actually arrives.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.upload_limit_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, capped_receive, tracking_send)
        except ApiError as err:  # raised while reading the body: too large, or too slow to arrive
            if started:
                raise
            await _error(err.status_code, str(err.detail), err.headers)(scope, receive, send)
        except Exception:
            # Known errors were turned into JSON by the exception handlers; this is a bug. Log it, say little.
            log.exception("unexpected error on %s %s", scope["method"], scope.get("path"))
            if started:
                raise
            await _error(500, "internal server error; the server log has the details")(scope, receive, send)


class BodyReadDeadline:
    """ASGI middleware: the request body must arrive within `timeout_s` of the app first asking for it.

    uvicorn has no body read timeout: a client that declares Content-Length: 1000000 and sends 10 bytes would
    hold its connection, and a concurrency slot, forever. Past the deadline the answer is 408 and the
    connection is closed.
    """

    def __init__(self, app, *, timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        deadline: float | None = None
        body_done = False
        started = False

        async def receive_in_time():
            nonlocal deadline, body_done
            if body_done:  # only http.disconnect comes after the body: waiting for it is not reading the body
                return await receive()
            if deadline is None:
                deadline = anyio.current_time() + self.timeout_s
            with anyio.move_on_after(deadline - anyio.current_time()) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                log.info("%s %s: the body did not arrive within %g s", scope["method"], scope["path"], self.timeout_s)
                raise BodyReadTimeout(self.timeout_s)
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_in_time, tracking_send)
        except BodyReadTimeout as err:  # only when no route or inner middleware turned it into a response
            if started:
                raise
            await _error(err.status_code, str(err.detail), err.headers)(scope, receive, send)


def _route_path(scope) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


# ---------------------------------------------------------------------------------------- search query


class SearchQuery(BaseModel):
    """The JSON body of POST /api/search (the multipart form takes the same fields beside `image`)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    image_url: str | None = Field(None, max_length=8192, description="http(s) URL of a photo to search with")
    text: str | None = Field(None, max_length=1000, description="a description to search with (CLIP models)")
    top_k: int = Field(10, ge=1, le=MAX_TOP_K, description="at most this many results")
    threshold: float | None = Field(
        None, allow_inf_nan=False,
        description="minimum cosine similarity, -1 to 1 (0.25, not 25); default depends on the query kind",
    )
    category: str | list[str] | None = Field(None, description="only these categories")

    @field_validator("threshold")
    @classmethod
    def _cosine(cls, v: float | None) -> float | None:
        if v is not None and not -1.0 <= v <= 1.0:
            raise ValueError("must be a cosine similarity between -1 and 1 (e.g. 0.25 for 25%)")
        return v

    def categories(self) -> list[str] | None:
        if self.category is None:
            return None
        wanted = [self.category] if isinstance(self.category, str) else self.category
        return [c.strip() for c in wanted if c and c.strip()] or None

    def options(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "threshold": self.threshold, "categories": self.categories()}


def _first_problem(errors: list[dict]) -> str:
    """One line naming the field: "missing required field 'name'" or "invalid top_k: ..."."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header", "form")]
    field = ".".join(loc) or "request body"
    if first.get("type") == "missing":
        return f"missing required field '{field}'"
    if first.get("type") == "extra_forbidden":
        return f"unknown field '{field}'"
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if "UploadFile" in msg:  # a text field where a file belongs: curl -F "image=photo.jpg" without the @
        return f"'{field}' must be a file, not text (with curl: -F \"{field}=@path/to/photo.jpg\", note the @)"
    return f"invalid {field}: {msg}"


_SEARCH_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "top_k": {"type": "integer", "default": 10},
                        "threshold": {"type": "number"},
                        "category": {"type": "string"},
                    },
                }
            },
            "application/json": {"schema": SearchQuery.model_json_schema()},
        },
    }
}


# ------------------------------------------------------------------------------------------------ app


def create_app(settings: Settings | None = None, matcher=None) -> FastAPI:
    """The API over one Matcher. Tests inject settings and/or a matcher; `serve` passes neither or settings."""
    if settings is None:
        settings = matcher.settings if matcher is not None else load_settings()
    if matcher is None:
        from .matcher import Matcher

        matcher = Matcher(settings)  # cheap: storage client only; the model loads on first search or upload

    app = FastAPI(
        title="Visual Product Matcher API",
        version=__version__,
        description="Find the catalog products that look like a photo. Errors are "
        '`{"success": false, "error": "..."}`. When VPM_API_KEY is set, send it in the X-API-Key header.',
        docs_url="/docs",
    )
    app.state.matcher = matcher
    app.state.settings = settings
    api_key = settings.vpm_api_key.get_secret_value() if settings.vpm_api_key else None
    upload_limit = settings.max_upload_bytes
    app.add_middleware(
        RequestGuard,
        api_key=api_key,
        max_body_bytes=upload_limit + MULTIPART_OVERHEAD_BYTES,
        upload_limit_bytes=upload_limit,
    )
    app.add_middleware(BodyReadDeadline, timeout_s=server_limits(settings).body_timeout_s)
    if settings.cors_origins:  # added last: outermost, so refusals from the guard carry CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
        )
    _install_error_handlers(app)
    _install_routes(app, matcher, settings)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    # Library errors carry messages written for people (which file, what is wrong, what to do): pass them on.
    statuses: list[tuple[type[Exception], int]] = [
        (ImageTooLargeError, 413),
        (ImageError, 422),
        (DuplicateProduct, 409),
        (ProductNotFound, 404),
        (InvalidProduct, 422),
        (CatalogError, 503),
        (InvalidKey, 400),
        (ObjectNotFound, 404),
        (StorageError, 503),
    ]
    for exc_type, status in statuses:

        def handler(request: Request, exc: Exception, status: int = status) -> JSONResponse:
            if status >= 500:
                log.warning("%s %s: %s", request.method, request.url.path, exc)
            return _error(status, _client_message(exc))

        app.add_exception_handler(exc_type, handler)

    @app.exception_handler(RequestValidationError)
    def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = _first_problem(list(exc.errors()))
        if request.url.path.endswith("/api/upload") and message.startswith("missing"):
            message += " (send multipart/form-data with image, name and category)"
        return _error(422, message)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and not isinstance(exc, ApiError):
            message = f"no such endpoint: {request.method} {request.url.path}; see /docs"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs"
        return _error(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Only what escapes RequestGuard gets here (an error in an outer middleware): still JSON, still terse.
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal server error; the server log has the details")


def _install_routes(app: FastAPI, matcher, settings: Settings) -> None:
    # Declared for the docs' "Authorize" button only; RequestGuard enforces the key before any route runs.
    key_doc = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="required when VPM_API_KEY is set")
    secured = [Security(key_doc)]

    def image_url(request: Request, key: str | None) -> str | None:
        """CDN or presigned URL on S3; on the local backend a URL served by this API (GET /api/images/...)."""
        if not key:
            return None
        storage = matcher.storage
        if storage.backend == "local" and not getattr(storage, "public_base_url", None):
            return str(request.base_url).rstrip("/") + "/api/images/" + quote(key)
        return matcher.url_for(key)

    def product_json(request: Request, product: Product) -> dict[str, Any]:
        return {
            **product.model_dump(mode="json"),
            "image_url": image_url(request, product.image_key),
            "thumbnail_url": image_url(request, product.thumbnail_key),
        }

    def match_json(request: Request, match) -> dict[str, Any]:
        return {
            **match.as_dict(),
            "image_url": image_url(request, match.product.image_key),
            "thumbnail_url": image_url(request, match.product.thumbnail_key),
        }

    # ------------------------------------------------------------------------------------- health

    @app.get("/api/health", tags=["status"], summary="storage, catalog, model and index state (no key needed)")
    def health(
        request: Request,
        load_model: bool = Query(
            False, description="load the model (if not loaded yet) and check it and the index; slow the first time"
        ),
    ) -> JSONResponse:
        report = checks_module.as_report(_health_checks(matcher, load_model))
        storage = matcher.storage
        index = _index_state(matcher)
        products = index.get("products") if index else None
        if products is None:
            try:
                products = len(matcher.list_products())
            except (CatalogError, StorageError):
                products = None  # the checks say why
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
            "products": products,
            "index": index,
            "checks": report["checks"],
        }
        return JSONResponse(document, status_code=200 if document["healthy"] else 503)

    # ------------------------------------------------------------------------------------- upload

    @app.post(
        "/api/upload", status_code=201, tags=["products"], dependencies=secured,
        summary="add a product from a photo (multipart: image, name, category[, price, description, id])",
    )
    def upload(
        request: Request,
        image: UploadFile = File(..., description="the product photo (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC)"),
        name: str = Form(..., description="product name"),
        category: str = Form(..., description="product category"),
        price: float | None = Form(None, ge=0, allow_inf_nan=False, description="price, optional"),
        description: str | None = Form(None, description="optional"),
        id: str | None = Form(None, description="product id (letters, digits, - and _); generated when omitted"),
    ) -> JSONResponse:
        data = image.file.read(_read_limit(settings))
        product = matcher.add_product(
            data, image.filename or "upload", name=name, category=category, price=price,
            description=description, product_id=id or None,
        )
        return JSONResponse({"success": True, "product": product_json(request, product)}, status_code=201)

    # ------------------------------------------------------------------------------------- search

    @app.post(
        "/api/search", tags=["search"], dependencies=secured, openapi_extra=_SEARCH_BODY_DOC,
        summary="search by photo (multipart `image`) or by JSON {image_url | text, top_k, threshold, category}",
    )
    async def search(request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            async with request.form(max_files=1, max_fields=50) as form:
                upload = form.get("image")
                if not isinstance(upload, StarletteUploadFile):
                    raise ApiError(422, "missing required field 'image' (a file part in multipart/form-data)")
                fields = {k: v for k, v in form.multi_items() if k != "image" and k != "category"}
                if form.getlist("category"):
                    fields["category"] = [str(c) for c in form.getlist("category")]
                query = _parse_query(fields)
                data = await upload.read(_read_limit(settings))
                filename = upload.filename or "query"
            if query.image_url or query.text:
                raise ApiError(422, "send either an image file or image_url/text, not both")
            response = await run_in_threadpool(matcher.search_image, data, filename, **query.options())
        elif content_type in ("application/json", ""):
            body = _parse_json_body(await request.body())
            if not isinstance(body, dict):
                raise ApiError(422, 'send a JSON object such as {"text": "red running shoes", "top_k": 5}')
            query = _parse_query(body)
            if bool(query.image_url) == bool(query.text):
                raise ApiError(422, "send exactly one of 'image_url' or 'text' (or a multipart 'image' file)")
            if query.image_url:
                response = await run_in_threadpool(_search_url, matcher, query)
            else:
                response = await run_in_threadpool(_search_text, matcher, query)
        else:
            raise ApiError(
                415, "send multipart/form-data with an 'image' file, or JSON with 'image_url' or 'text'"
            )
        document = response.as_dict()
        document["results"] = [match_json(request, m) for m in response.results]
        return JSONResponse({"success": True, **document})

    # ----------------------------------------------------------------------------------- products

    @app.get("/api/products", tags=["products"], dependencies=secured, summary="list products, paginated")
    def list_products(
        request: Request,
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0),
        category: str | None = Query(None, description="only this category (case-insensitive)"),
    ) -> dict[str, Any]:
        products = matcher.list_products()
        if category and category.strip():
            wanted = category.strip().casefold()
            products = [p for p in products if p.category.casefold() == wanted]
        page = products[offset : offset + limit]
        return {
            "success": True,
            "total": len(products),
            "limit": limit,
            "offset": offset,
            "items": [product_json(request, p) for p in page],
        }

    @app.get("/api/products/{product_id}", tags=["products"], dependencies=secured, summary="one product")
    def get_product(request: Request, product_id: str) -> dict[str, Any]:
        return {"success": True, "product": product_json(request, matcher.get_product(product_id))}

    @app.delete(
        "/api/products/{product_id}", tags=["products"], dependencies=secured,
        summary="delete a product and its images",
    )
    def delete_product(product_id: str) -> dict[str, Any]:
        product = matcher.delete_product(product_id)
        return {"success": True, "deleted": product.id}

    @app.get("/api/categories", tags=["products"], dependencies=secured, summary="the catalog's categories")
    def categories() -> dict[str, Any]:
        products = matcher.list_products()
        counts: dict[str, int] = {}
        for p in products:
            counts[p.category] = counts.get(p.category, 0) + 1
        names = sorted(counts, key=str.casefold)
        return {"success": True, "categories": names, "counts": counts}

    # ------------------------------------------------------------------------------------- images

    image_prefixes = tuple(p for p in (settings.s3_image_prefix, settings.s3_thumbnail_prefix) if p)

    @app.get(
        "/api/images/{key:path}", tags=["products"], dependencies=secured,
        summary="a product image or thumbnail (the local backend's image_url points here)",
        response_class=Response,
    )
    def get_image(key: str) -> Response:
        try:
            validate_key(key)  # no '..', no leading '/', no backslash, no control characters
        except InvalidKey as err:
            raise ApiError(400, str(err)) from None
        extension = key.rpartition(".")[2].lower() if "." in key.rpartition("/")[2] else ""
        under_prefix = any(key.startswith(p) for p in image_prefixes) if image_prefixes else "/" not in key
        if not under_prefix or extension not in IMAGE_TYPES or key.startswith(settings.metadata_prefix or "\0"):
            # Only catalog images: never products.json, the embedding cache or anything else in storage.
            raise ApiError(404, f"no image at {key!r}")
        try:
            data = matcher.storage.get(key)
        except ObjectNotFound:
            raise ApiError(404, f"no image at {key!r}") from None
        return Response(
            data,
            media_type=IMAGE_TYPES[extension],
            headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )


def _read_limit(settings: Settings) -> int:
    """Read at most one byte past the limit: enough for decode_image to say 'too large' without more memory."""
    return settings.max_upload_bytes + 1


def _parse_json_body(raw: bytes) -> Any:
    """The JSON document, or a 400 saying what is wrong with it; never a 500, whatever the bytes."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except RecursionError:  # e.g. 100000 nested '[': the parser gives up before the stack does
        raise ApiError(400, "the body is not valid JSON: it is nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"the body is not valid JSON ({err})") from None
    except ValueError:  # an integer of thousands of digits (Python's int conversion limit)
        raise ApiError(400, "the body is not valid JSON: it has a number too long to read") from None


def _parse_query(fields: dict[str, Any]) -> SearchQuery:
    try:
        return SearchQuery.model_validate(fields)
    except ValidationError as err:
        raise ApiError(422, _first_problem(err.errors())) from None


def _search_url(matcher, query: SearchQuery):
    from .urlfetch import URLFetchError, URLRefused

    try:
        return matcher.search_url(query.image_url, **query.options())
    except (URLRefused, URLFetchError) as err:  # the SSRF guard's refusal or a failed fetch: the reason is safe
        raise ApiError(400, _client_message(err)) from None


def _search_text(matcher, query: SearchQuery):
    from .embeddings import EmbeddingError

    try:
        return matcher.search_text(query.text, **query.options())
    except EmbeddingError as err:  # e.g. the active model embeds images only
        raise ApiError(400, _client_message(err)) from None


def _health_checks(matcher, load_model: bool) -> list:
    """Storage and catalog always; model and index only once the model is loaded (or when asked to load it):
    a load balancer probing every few seconds must not pull a model of hundreds of MB into memory."""
    if load_model or matcher.model_loaded:
        return checks_module.full_checks(matcher)
    checks = checks_module.storage_checks(matcher)
    checks.append(
        checks_module.Check(
            "model", "pass",
            f"{matcher.settings.vpm_model} is not loaded yet: it loads on the first search or upload "
            "(GET /api/health?load_model=true loads and checks it now)",
        )
    )
    return checks


def _model_state(matcher, settings: Settings) -> dict[str, Any]:
    """What health reports about the model, without loading it (a load takes seconds and much memory)."""
    loaded = matcher.model_loaded
    state: dict[str, Any] = {"configured": settings.vpm_model, "loaded": loaded}
    if loaded:
        state.update(matcher.embedder.describe())
    return state


def _index_state(matcher) -> dict[str, Any] | None:
    if not matcher.model_loaded:
        return None  # the index is per model: before the model is loaded there is no index to describe
    try:
        state = matcher.index_status().as_dict()
    except (CatalogError, StorageError) as err:
        return {"error": str(err)}
    # A count is enough for a probe; the ids can run to thousands (`python -m vpm index` lists them).
    state["missing_ids"] = state.get("missing_ids", [])[:20]
    return state
