"""How the API says no: every error is JSON `{"success": false, "error": "..."}`, one line, no stack trace.

Library errors carry messages written for people (which file, what is wrong, what to do), so they are passed
on with a status that fits; server file paths are scrubbed from them first.
"""

from __future__ import annotations

import functools
import logging
import os
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from vpm.core.catalog import CatalogError, ConcurrentChange, DuplicateProduct, InvalidProduct, ProductNotFound
from vpm.core.errors import InvalidRequest, VpmError, log_unexpected
from vpm.core.images import ImageError, ImageTooLargeError, InvalidBox
from vpm.core.matcher import DuplicatePhoto
from vpm.core.storage import InvalidKey, ObjectNotFound, StorageError

log = logging.getLogger(__name__)

def internal_error(incident: str) -> str:
    return f"internal server error {incident}; the server log has the details under that id"

# First match wins: subclasses before their bases.
STATUS_OF_ERROR: list[tuple[type[Exception], int]] = [
    (ImageTooLargeError, 413),
    (ImageError, 422),
    (InvalidBox, 422),
    (DuplicateProduct, 409),
    (DuplicatePhoto, 409),
    (ConcurrentChange, 409),
    (ProductNotFound, 404),
    (InvalidProduct, 422),
    (CatalogError, 503),
    (InvalidKey, 400),
    (ObjectNotFound, 404),
    (StorageError, 503),
    (InvalidRequest, 422),
    (VpmError, 400),  # every other error a person can act on: its message says what to do
]

# An absolute file path (POSIX, two or more parts; or a Windows drive path) that is not part of a URL.
_SERVER_PATH = re.compile(r"(?<![\w.:/\\-])(?:/[^\s'\"/:;,()]+){2,}/?|\b[A-Za-z]:\\[^\s'\"]*")
_PATH_PARTS = r"(?:/[^\s'\"/:;,()]+){2,}/?"  # after the root folder: at least two more parts


@functools.cache
def _server_paths() -> re.Pattern[str]:
    """_SERVER_PATH, plus absolute paths written without their leading slash, as LanceDB's object store names
    local files ("Not found: srv/catalog/metadata/products.lance/data/x.lance"): a relative path of three or more
    parts whose first part is a folder at the root of this machine (srv, home, tmp...). A storage key
    ("images/a.jpg") starts with a catalog prefix instead, and stays."""
    try:
        roots = sorted(entry.name for entry in os.scandir("/") if entry.is_dir())
    except OSError:
        roots = []
    if not roots:
        return _SERVER_PATH
    stripped = rf"(?<![\w.:/\\-])(?:{'|'.join(re.escape(r) for r in roots)}){_PATH_PARTS}"
    return re.compile(f"{_SERVER_PATH.pattern}|{stripped}")


# Where each route's form is described, for "missing field" messages.
_FORM_HINTS = {
    "/api/upload": "send multipart/form-data with one or more image files, name and category",
    "/images": "send multipart/form-data with one or more image files",
}


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


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status, headers=headers)


def client_message(exc: Exception) -> str:
    """A library error's message for the client, minus server file paths: they tell an attacker our layout."""
    return _server_paths().sub("<server path>", str(exc))


def first_problem(errors: list[dict]) -> str:
    """One line naming the field: "missing required field 'name'" or "invalid top_k: ..."."""
    first = errors[0]
    # Positions in a list (the 2nd `image` part is image.1) tell a client less than the field's name.
    loc = [str(p) for p in first.get("loc", ()) if not isinstance(p, int)]
    loc = [p for p in loc if p not in ("body", "query", "path", "header", "form")]
    field = ".".join(loc) or "request body"
    if first.get("type") == "missing":
        return f"missing required field '{field}'"
    if first.get("type") == "extra_forbidden":
        return f"unknown field '{field}'"
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if "UploadFile" in msg:  # a text field where a file belongs: curl -F "image=photo.jpg" without the @
        return f"'{field}' must be a file, not text (with curl: -F \"{field}=@path/to/photo.jpg\", note the @)"
    return f"invalid {field}: {msg}"


def _form_hint(path: str) -> str | None:
    return next((hint for end, hint in _FORM_HINTS.items() if path.endswith(end)), None)


# ------------------------------------------------------------------------------------------ handlers


def library_error(request: Request, exc: Exception) -> JSONResponse:
    status = next(code for kind, code in STATUS_OF_ERROR if isinstance(exc, kind))
    if status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
    message = client_message(exc)
    if isinstance(exc, DuplicatePhoto):  # the matcher's message is for every face; this is the API's way
        message += " (send allow_duplicate=true to add it anyway)"
    return error_response(status, message)


def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    message = first_problem(list(exc.errors()))
    hint = _form_hint(request.url.path)
    if hint and message.startswith("missing"):
        message += f" ({hint})"
    return error_response(422, message)


def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    if exc.status_code == 404 and not isinstance(exc, ApiError):
        message = f"no such endpoint: {request.method} {request.url.path}; see /docs"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}; see /docs"
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Only what escapes RequestGuard gets here (an error in an outer middleware): still JSON, still terse.
    incident = log_unexpected(log, exc, f"{request.method} {request.url.path}")
    return error_response(500, internal_error(incident))


def install_error_handlers(app: FastAPI) -> None:
    for kind, _status in STATUS_OF_ERROR:
        app.add_exception_handler(kind, library_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
