"""`python -m vpm serve [--host 127.0.0.1] [--port 5001]`: the REST API (vpm.api) under uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001


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


def cmd_serve(args) -> int:
    import uvicorn

    from .api import create_app

    settings = args.settings
    if not _is_loopback(args.host) and settings.vpm_api_key is None:
        # Reachable from other machines with no key: anyone who can reach the port can add and delete products.
        log.warning(
            "serving on %s without VPM_API_KEY: anyone who can reach port %d can add and delete products; "
            "set VPM_API_KEY to require an X-API-Key header", args.host, args.port,
        )
    app = create_app(settings)
    log.info(
        "VPM API on http://%s:%d (docs at /docs); storage: %s; model %s loads on the first search or upload",
        args.host, args.port, app.state.matcher.storage.description, settings.vpm_model,
    )
    # log_config=None keeps the logging vpm.config set up instead of uvicorn's own.
    uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level.lower(), log_config=None)
    return 0


def register(sub, command) -> None:
    """Add `serve` to the parser."""
    p = command("serve", cmd_serve, "start the REST API (docs at /docs)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
