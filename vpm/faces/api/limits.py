"""What keeps the API alive under hostile clients: the checks made before any route reads a request body.

`RequestGuard` refuses a missing or wrong API key and an oversized body before the body is read;
`BodyReadDeadline` bounds how long a body may take to arrive. The server's own limits (`ServerLimits`: header
deadline, concurrency cap, keep-alive) are applied by `python -m vpm serve`.
"""

from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass, fields

import anyio
from starlette.datastructures import Headers

from vpm.core.config import ConfigError, Settings
from vpm.core.errors import log_unexpected
from vpm.faces.api.errors import ApiError, BodyReadTimeout, BodyTooLarge, error_response, internal_error

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
# Room for the multipart boundaries, part headers and the text fields around the images themselves.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# Paths that answer without the API key: load balancers probe health (which then says healthy or not, nothing
# more); the docs, and / pointing at them, describe and hold no data.
OPEN_PATHS = frozenset({"/", "/api/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


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


# ------------------------------------------------------------------------------------------- API key


def key_refusal(supplied: str | None, expected: bytes | None) -> str | None:
    """Why a request's API key is refused, or None when it may pass (or no key is configured)."""
    if expected is None:
        return None
    # Constant time, so the key cannot be guessed a byte at a time from response timings.
    if hmac.compare_digest((supplied or "").encode(), expected):
        return None
    what = "wrong" if supplied else "missing"
    return f"{what} API key: send it in the {API_KEY_HEADER} header"


def route_path(scope) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def needs_key(scope) -> bool:
    return scope["method"] != "OPTIONS" and route_path(scope) not in OPEN_PATHS


# ------------------------------------------------------------------------------------- request guard


class RequestGuard:
    """ASGI middleware: API key first, then the body size, both before the route reads anything.

    The routes declare the key check too (`require_api_key`, so the docs show it), but FastAPI reads a form
    before it runs dependencies: only here is an unauthenticated upload refused before its body is read.
    Starlette's own body limiter answers in plain text whenever a response starts before the body is read
    (a 401, say), so this one is ours: every refusal stays JSON and passes through CORS.
    """

    def __init__(self, app, *, api_key: bytes | None, max_body_bytes: int, upload_limit_bytes: int):
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.upload_limit_bytes = upload_limit_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)

        received = 0
        response = _ResponseWatch(send)

        async def capped_receive():
            # Content-Length may be absent (chunked) or wrong: count what actually arrives.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.upload_limit_bytes)
            return message

        try:
            await self.app(scope, capped_receive, response.send)
        except ApiError as err:  # raised while reading the body: too large, or too slow to arrive
            if response.started:
                raise
            await error_response(err.status_code, str(err.detail), err.headers)(scope, receive, send)
        except Exception as err:  # known errors became JSON in the handlers: this is a bug
            incident = log_unexpected(log, err, f"{scope['method']} {scope.get('path')}")
            if response.started:
                raise
            await error_response(500, internal_error(incident))(scope, receive, send)

    def _refusal(self, scope):
        """The answer to a request refused on its headers alone, or None."""
        headers = Headers(scope=scope)
        if needs_key(scope):
            why = key_refusal(headers.get(API_KEY_HEADER), self.api_key)
            if why:
                return error_response(401, why)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return error_response(413, str(BodyTooLarge(self.upload_limit_bytes).detail))
        return None


class _ResponseWatch:
    """Passes the app's messages on and notes whether a response has started: once it has, a refusal can no
    longer be sent, and the error must propagate instead."""

    def __init__(self, send):
        self._send = send
        self.started = False

    async def send(self, message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


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
        response = _ResponseWatch(send)

        async def receive_in_time():
            nonlocal deadline, body_done
            if body_done:  # only http.disconnect comes after the body: waiting for it is not reading the body
                return await receive()
            if deadline is None:
                deadline = anyio.current_time() + self.timeout_s
            with anyio.move_on_after(deadline - anyio.current_time()) as waited:
                message = await receive()
            if waited.cancelled_caught:
                log.info("%s %s: the body did not arrive within %g s", scope["method"], scope["path"], self.timeout_s)
                raise BodyReadTimeout(self.timeout_s)
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        try:
            await self.app(scope, receive_in_time, response.send)
        except BodyReadTimeout as err:  # only when no route or inner middleware turned it into a response
            if response.started:
                raise
            await error_response(err.status_code, str(err.detail), err.headers)(scope, receive, send)
