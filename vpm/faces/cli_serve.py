"""`python -m vpm serve [--host 127.0.0.1] [--port 5001]`: the REST API (vpm.faces.api) under uvicorn.

uvicorn runs with bounded waits and a cap on concurrency (vpm.faces.api.ServerLimits, VPM_API_* variables), so slow
or lying clients cannot hold connections forever. In production put a reverse proxy in front (docs/rest-api.md).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001
# Request line + headers larger than this are refused with 400 (h11's own default, made explicit).
MAX_HEADER_BYTES = 16 * 1024
# Connections the kernel holds until uvicorn accepts them (uvicorn's default is 2048): a short queue sheds a
# flood sooner; whatever uvicorn accepts past the concurrency cap is answered 503 at once.
BACKLOG = 256


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1-65535")
    return port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _timeout_response(header_timeout_s: float) -> bytes:
    error = f"the request headers did not arrive within {header_timeout_s:g} s (VPM_API_HEADER_TIMEOUT_S)"
    body = json.dumps({"success": False, "error": error}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def h11_protocol_with_header_deadline(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol plus the one wait it leaves unbounded: the request line and headers.

    uvicorn 0.54 arms no timer when a connection opens, and its keep-alive timer is cancelled by the first byte
    of the next request, so a client that sends half a request line and stalls would hold the connection (and
    a concurrency slot) forever. Here each request's headers must arrive within `header_timeout_s` of the
    connection opening or of the previous response; then the connection is closed. Built on demand because
    importing uvicorn costs the other commands ~80 ms.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    timeout_response = _timeout_response(header_timeout_s)

    class H11WithHeaderDeadline(H11Protocol):
        header_deadline = None  # the TimerHandle, while a request's headers are awaited
        awaited_after = None  # the request cycle that was current when the deadline was armed

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not self.awaited_after:  # a new request's headers are in (its body has a deadline too)
                self._cancel_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.cycle.response_complete:
                self._arm_header_deadline()  # waiting for the next request (or the unread rest of this one)

        def connection_lost(self, exc) -> None:
            self._cancel_header_deadline()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            self._cancel_header_deadline()
            self.awaited_after = self.cycle
            self.header_deadline = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _cancel_header_deadline(self) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
                self.header_deadline = None

        def _headers_too_slow(self) -> None:
            self.header_deadline = None
            if self.transport.is_closing():
                return
            partial, _ = self.conn.trailing_data
            if partial and self.conn.their_state is h11.IDLE:  # half a request: say why; an idle one just closes
                self.logger.info("%s: the request headers did not arrive within %g s", self.client, header_timeout_s)
                self.transport.write(timeout_response)
            self.transport.close()

    return H11WithHeaderDeadline


def cmd_serve(args) -> int:
    import uvicorn

    from vpm.faces.api import create_app, server_limits

    settings = args.settings
    if not _is_loopback(args.host) and settings.vpm_api_key is None:
        # Reachable from other machines with no key: anyone who can reach the port can add and delete products.
        log.warning(
            "serving on %s without VPM_API_KEY: anyone who can reach port %d can add and delete products; "
            "set VPM_API_KEY to require an X-API-Key header", args.host, args.port,
        )
    limits = server_limits(settings)
    app = create_app(settings)
    from vpm.backends.warm_start import warm_up

    warm_up(app.state.matcher)  # the first search's reads, side by side, while uvicorn starts and the model loads
    log.info(
        "VPM API on http://%s:%d (docs at /docs); storage: %s; model %s loads on the first search or upload",
        args.host, args.port, app.state.matcher.files.storage_description, settings.vpm_model,
    )
    log.info(
        "limits: %d concurrent connections/requests (then 503), headers within %g s, body within %g s, "
        "keep-alive %d s, shutdown grace %d s",
        limits.max_concurrency, limits.header_timeout_s, limits.body_timeout_s, limits.keep_alive_s,
        limits.shutdown_timeout_s,
    )
    uvicorn.run(
        app, host=args.host, port=args.port,
        log_level=settings.log_level.lower(), log_config=None,  # keep the logging vpm.core.config set up
        # Always h11 (even if httptools is installed): the header deadline is added to its protocol.
        http=h11_protocol_with_header_deadline(limits.header_timeout_s),
        ws="none",  # no websocket routes; an upgrade would also escape the header deadline
        limit_concurrency=limits.max_concurrency,
        timeout_keep_alive=limits.keep_alive_s,
        timeout_graceful_shutdown=limits.shutdown_timeout_s,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        backlog=BACKLOG,
    )
    return 0


def register(sub, command) -> None:
    """Add `serve` to the parser."""
    p = command("serve", cmd_serve, "start the REST API (docs at /docs)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
