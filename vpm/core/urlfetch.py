"""Fetch an image from a URL a user typed, without letting that URL reach anything inside our network (SSRF).

The app, the CLI and the REST API all fetch query images server-side, so a URL like
http://169.254.169.254/latest/meta-data or http://localhost:8080/admin must never be fetched. The guard:

1. The URL must be plain http(s) with an ordinary host name or a canonical IP: no credentials, no odd schemes,
   no spellings like http://2130706433/ or http://0x7f.1/ that different parsers read differently.
2. The host is resolved once, and EVERY address it resolves to must be on the public internet.
3. We connect to one of those validated addresses (pinned), never to the name again: a DNS answer that
   changes between the check and the connect (DNS rebinding) cannot switch us to an internal address.
   This uses `http.client` with `connect()` overridden to open the socket to the pinned IP; the Host header
   and, for https, SNI and certificate checking still use the host name. No proxy from the environment is
   used, so the address checked is the address connected to.
4. Redirects are followed by hand, and every hop goes through 1-3 again.
5. One deadline covers the whole fetch (DNS, connect, TLS, headers, body, every redirect); a watchdog shuts the
   socket at the deadline, because a per-read socket timeout alone lets a server trickle one byte at a time
   for ever. The body is read in chunks and abandoned as soon as it passes `max_bytes`.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote, urljoin, urlsplit

from vpm.core.errors import VpmError

MIB = 1024 * 1024
DEFAULT_MAX_BYTES = 20 * MIB
MAX_URL_LENGTH = 2048
USER_AGENT = "VisualProductMatcher/1.0 (+image search)"

# resolver(host, port) -> the addresses (strings) the host name resolves to.
Resolver = Callable[[str, int], Iterable[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_OK_STATUSES = frozenset({200, 203})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_SHOWN_URL_LENGTH = 200

# Addresses of cloud instance-metadata services: refused even when allow_private is set for tests.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# Content types that are certainly not an image. Anything else (image/*, a missing type, octet-stream and other
# binary types) goes on to the decoder, which sniffs the bytes and says clearly what is wrong.
_NOT_IMAGE_MAJOR_TYPES = frozenset({"text", "audio", "video", "font", "multipart", "message", "model"})
_NOT_IMAGE_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/ecmascript",
        "application/pdf",
        "application/x-www-form-urlencoded",
        "application/problem+json",
        "application/xhtml+xml",
    }
)


class URLRefused(VpmError, ValueError):
    """The URL breaks the fetch policy (scheme, host, address, size, content type). The message says why."""


class URLFetchError(VpmError, ValueError):
    """The fetch failed: DNS, connection, TLS, timeout, an HTTP error status. The message says what happened."""


@dataclass(frozen=True)
class FetchedImage:
    data: bytes
    filename: str
    content_type: str | None
    final_url: str


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, via the system resolver (getaddrinfo)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def fetch_image_bytes(
    url: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = 10.0,
    max_redirects: int = 5,
    resolver: Resolver | None = None,
    allow_private: bool = False,
) -> FetchedImage:
    """Download the image at `url`, refusing anything that could reach a private or internal address.

    `timeout` (seconds) bounds the whole fetch, redirects included. `allow_private=True` lets loopback and
    private-network addresses through and exists only so tests can use a server on 127.0.0.1; link-local
    addresses and cloud metadata services stay refused even then. Raises `URLRefused` or `URLFetchError`.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    if max_bytes <= 0 or timeout <= 0 or max_redirects < 0:
        raise ValueError("max_bytes and timeout must be positive and max_redirects not negative")
    resolver = resolver or system_resolver
    target = start = _parse(url)
    watchdog = _Watchdog(timeout)
    try:
        redirects = 0
        while True:
            addresses = _safe_addresses(target, resolver, allow_private, watchdog)
            with _Exchange(target, addresses, watchdog) as response:
                if response.status in _REDIRECT_STATUSES:
                    if redirects >= max_redirects:
                        raise URLFetchError(
                            f"gave up on {_show(start.url)}: it redirected more than {max_redirects} times "
                            f"(the limit); the last hop was {_show(target.url)}"
                        )
                    redirects += 1
                    target = _parse(_redirect_location(target, response), via=target.url)
                    continue
                if response.status not in _OK_STATUSES:
                    reason = f" ({response.reason})" if response.reason else ""
                    raise URLFetchError(f"{_show(target.url)} answered HTTP {response.status}{reason}")
                content_type = _check_content_type(target, response)
                data = _read_capped(target, response, max_bytes, watchdog)
                return FetchedImage(data, _filename(target.path), content_type, target.url)
    finally:
        watchdog.stop()


# --- the URL ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    url: str  # as given, minus the fragment: what messages and final_url show
    scheme: str
    host: str  # lower-case ASCII host name, or the IP in canonical form
    port: int
    path: str  # the request target: path and query, percent-encoded
    ip: IPAddress | None  # set when the URL names an IP directly
    via: str | None  # the URL that redirected here


def _parse(url: str, via: str | None = None) -> _Target:
    url = url.strip()

    def refuse(why: str, shown: str | None = None) -> URLRefused:
        shown = _show(url if shown is None else shown)
        origin = f" (redirected from {_show(via)})" if via else ""
        return URLRefused(f"refused {shown}{origin}: {why}")

    if not url:
        raise refuse("the URL is empty; paste a link that starts with http:// or https://")
    if len(url) > MAX_URL_LENGTH:
        raise refuse(f"the URL is {len(url)} characters long; the limit is {MAX_URL_LENGTH}")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise refuse("the URL contains a space or a control character")
    if "\\" in url:  # browsers read "\" as "/", Python's parser does not: a classic way to confuse two parsers
        raise refuse("the URL contains a backslash")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed "[" of an IPv6 address
        raise refuse(f"the URL is malformed ({exc})") from None
    scheme = parts.scheme.lower()
    after_colon = url[len(scheme) + 1 :]
    # "example.com/a.jpg" has no scheme; "example.com:8080/a.jpg" and "localhost:8080" parse as scheme "example.com"
    # and "localhost": say what is missing rather than "not localhost:".
    if not scheme or ("://" not in url and ("." in scheme or after_colon[:1].isdigit())):
        raise refuse("the URL has no scheme; it must start with http:// or https://")
    if scheme not in _DEFAULT_PORTS:
        raise refuse(f"only http:// and https:// links can be fetched, not {scheme}:")
    if "@" in parts.netloc:  # user:password@host; never echo the password back
        redacted = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
        raise refuse("the URL contains a user name or password; links with credentials are not fetched", redacted)
    try:
        port = _DEFAULT_PORTS[scheme] if parts.port is None else parts.port
    except ValueError:
        raise refuse("the port is not a number between 1 and 65535") from None
    if not 0 < port < 65536:
        raise refuse("the port is not a number between 1 and 65535")
    raw_host = parts.hostname or ""  # lower-cased, brackets of an IPv6 literal removed
    if not raw_host:
        raise refuse("the URL has no host name")
    host, ip = _check_host(raw_host, parts.netloc, refuse)

    path = quote(parts.path or "/", safe="/%!$&'()*+,;=:@-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/?%!$&'()*+,;=:@-._~")
    # Messages and final_url show the URL as the user gave it (minus any #fragment, which is never sent).
    return _Target(parts._replace(fragment="").geturl(), scheme, host, port, path, ip, via)


def _check_host(raw_host: str, netloc: str, refuse: Callable[[str], URLRefused]) -> tuple[str, IPAddress | None]:
    """(host, ip): the canonical host, and the IP when the URL names one. Refuses anything unusual."""
    if "[" in netloc:  # an IPv6 literal
        if "%" in raw_host:
            raise refuse(f"{raw_host} names a network interface (IPv6 zone); only plain addresses are fetched")
        try:
            ip = ipaddress.IPv6Address(raw_host)
        except ValueError:
            raise refuse(f"[{raw_host}] is not a valid IPv6 address") from None
        return str(ip), ip

    host = raw_host[:-1] if raw_host.endswith(".") else raw_host
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise refuse(f"{raw_host} is not a valid international host name") from None
    if re.fullmatch(r"[0-9a-fx.]+", host):
        # The system resolver reads anything inet_aton accepts as an IPv4 address: "2130706433", "0x7f.1",
        # "0177.0.0.1" are all 127.0.0.1, and "010.0.0.1" is 8.0.0.1 to some parsers and 10.0.0.1 to others.
        try:
            packed = socket.inet_aton(host)
        except OSError:
            packed = None
        if packed is not None:
            ip = ipaddress.IPv4Address(packed)
            if host != str(ip):
                verdict = _classify(ip)
                meaning = f", {verdict[0]}" if verdict else f"; write it as {ip}"
                raise refuse(f"{raw_host} is an unusual way to write the IP address {ip}{meaning}")
            return host, ip
    labels = host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise refuse(f"{raw_host} is not a valid host name")
    return host, None


def _redirect_location(target: _Target, response: http.client.HTTPResponse) -> str:
    location = (response.getheader("Location") or "").strip()
    if not location:
        raise URLFetchError(f"{_show(target.url)} answered HTTP {response.status} (a redirect) without a Location")
    return urljoin(target.url, location)


# --- the addresses --------------------------------------------------------------------------------------


def _safe_addresses(
    target: _Target, resolver: Resolver, allow_private: bool, watchdog: _Watchdog
) -> list[IPAddress]:
    """The addresses to connect to; refuses if ANY address the host resolves to is not public."""
    if target.ip is not None:
        addresses, resolved = [target.ip], False
    else:
        addresses, resolved = _resolve(target, resolver, watchdog), True
    for ip in addresses:
        verdict = _classify(ip)
        if verdict is None:
            continue
        description, relaxable = verdict
        if allow_private and relaxable:
            continue
        origin = f" (redirected from {_show(target.via)})" if target.via else ""
        subject = f"{target.host} resolves to {_ip_text(ip)}, " if resolved else f"{_ip_text(ip)} is "
        raise URLRefused(f"refused {_show(target.url)}{origin}: {subject}{description}")
    return addresses


def _resolve(target: _Target, resolver: Resolver, watchdog: _Watchdog) -> list[IPAddress]:
    # getaddrinfo has no timeout of its own: run it in a thread so the fetch deadline still holds.
    outcome: dict[str, object] = {}

    def lookup() -> None:
        try:
            outcome["addresses"] = list(resolver(target.host, target.port))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread and raised there
            outcome["error"] = exc

    thread = threading.Thread(target=lookup, name=f"resolve {target.host}", daemon=True)
    thread.start()
    thread.join(watchdog.remaining())
    if thread.is_alive():
        raise watchdog.timed_out(target)
    error = outcome.get("error")
    if isinstance(error, socket.gaierror):
        raise URLFetchError(
            f"could not find the host {target.host} for {_show(target.url)} (DNS lookup failed: {error.strerror})"
        ) from error
    if isinstance(error, BaseException):
        raise URLFetchError(f"could not look up the host {target.host} for {_show(target.url)}: {error}") from error
    addresses: list[IPAddress] = []
    for text in outcome["addresses"]:  # type: ignore[union-attr]
        try:
            ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
        except ValueError:
            raise URLRefused(
                f"refused {_show(target.url)}: {target.host} resolves to {text!r}, which is not an IP address"
            ) from None
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise URLFetchError(f"could not find the host {target.host} for {_show(target.url)} (no addresses)")
    return addresses


def _ip_text(ip: IPAddress) -> str:
    """An address as people write it: ::ffff:127.0.0.1 rather than Python 3.11's ::ffff:7f00:1."""
    mapped = getattr(ip, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(ip)


def _classify(ip: IPAddress) -> tuple[str, bool] | None:
    """None for a public address; else (what it is, whether allow_private lets it through)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            inner = _classify(ip.ipv4_mapped)
            return None if inner is None else (f"an IPv4-mapped IPv6 address for {ip.ipv4_mapped}, {inner[0]}",
                                               inner[1])
        embedded = ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None:
            inner = _classify(embedded)
            if inner is not None:
                return f"an IPv6 address that tunnels to {embedded}, {inner[0]}", inner[1]
    metadata = " (cloud metadata service)" if ip in _METADATA_ADDRESSES else ""
    relaxable = not metadata
    if ip.is_unspecified:
        return "an unspecified address (it means this very machine)", False
    if ip.is_loopback:
        return "a loopback address", relaxable
    if ip.is_link_local:
        return f"a link-local address{metadata}", False
    if ip.is_multicast:
        return "a multicast address", False
    if ip in _CGNAT:
        return f"a carrier-grade NAT (shared) address{metadata}", False
    if any(ip in network for network in _PRIVATE_NETWORKS):
        return f"a private network address{metadata}", relaxable
    if ip.is_reserved:
        return "a reserved address", False
    if not ip.is_global:
        return "a special-purpose address, not on the public internet", False
    return None


# --- the connection -------------------------------------------------------------------------------------


def _open_tcp(address: str, port: int, timeout: float) -> socket.socket:
    """Open a TCP connection to an already validated IP (a seam for tests)."""
    return socket.create_connection((address, port), timeout=timeout)


def _connect_pinned(addresses: list[IPAddress], port: int, watchdog: _Watchdog) -> socket.socket:
    error: OSError | None = None
    for ip in addresses:  # all validated; try each like a browser would
        try:
            sock = _open_tcp(str(ip), port, watchdog.remaining())
        except OSError as exc:
            error = exc
            continue
        watchdog.watch(sock)
        return sock
    assert error is not None
    raise error


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to `host` (in the Host header) over a socket opened to a validated address."""

    def __init__(self, host: str, port: int, addresses: list[IPAddress], watchdog: _Watchdog) -> None:
        super().__init__(host, port, timeout=watchdog.remaining())
        self._addresses = addresses
        self._watchdog = watchdog

    def connect(self) -> None:
        self.sock = _connect_pinned(self._addresses, self.port, self._watchdog)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to `host` (Host header, SNI, certificate name) over a socket opened to a validated address."""

    def __init__(self, host: str, port: int, addresses: list[IPAddress], watchdog: _Watchdog) -> None:
        self._tls = _tls_context()
        super().__init__(host, port, timeout=watchdog.remaining(), context=self._tls)
        self._addresses = addresses
        self._watchdog = watchdog

    def connect(self) -> None:
        sock = _connect_pinned(self._addresses, self.port, self._watchdog)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def _tls_context() -> ssl.SSLContext:
    """Certificate and host-name checking on (a seam for tests, which trust their own CA)."""
    return ssl.create_default_context()


class _Exchange:
    """One request and its response; turns every network failure into a URLFetchError that says what happened."""

    def __init__(self, target: _Target, addresses: list[IPAddress], watchdog: _Watchdog) -> None:
        self.target = target
        self.addresses = addresses
        self.watchdog = watchdog
        self.connection: http.client.HTTPConnection | None = None

    def __enter__(self) -> http.client.HTTPResponse:
        target = self.target
        kind = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
        try:
            self.connection = kind(target.host, target.port, self.addresses, self.watchdog)
            self.connection.request(
                "GET",
                target.path,
                headers={
                    "User-Agent": USER_AGENT,
                    "Accept": "image/*",
                    "Accept-Encoding": "identity",  # count and cap the bytes that arrive, not a decompression
                    "Connection": "close",
                },
            )
            return self.connection.getresponse()
        except Exception as exc:
            self._close()
            translated = _network_error(target, exc, self.watchdog)
            if translated is None:
                raise
            raise translated from exc

    def __exit__(self, kind, exc, tb) -> None:
        self._close()
        if isinstance(exc, Exception) and not isinstance(exc, (URLRefused, URLFetchError)):
            translated = _network_error(self.target, exc, self.watchdog)
            if translated is not None:
                raise translated from exc

    def _close(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.watchdog.unwatch()


def _network_error(target: _Target, exc: Exception, watchdog: _Watchdog) -> URLFetchError | None:
    """The plain-words URLFetchError for a low-level failure; None for anything else (a bug: let it show)."""
    where = f"{target.host} (port {target.port})"
    if watchdog.fired or isinstance(exc, TimeoutError):
        return watchdog.timed_out(target)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return URLFetchError(
            f"could not fetch {_show(target.url)}: the HTTPS certificate of {target.host} failed verification "
            f"({exc.verify_message or exc.reason})"
        )
    if isinstance(exc, ssl.SSLError):
        return URLFetchError(f"could not fetch {_show(target.url)}: the HTTPS handshake with {where} failed ({exc})")
    if isinstance(exc, ConnectionRefusedError):
        return URLFetchError(f"could not fetch {_show(target.url)}: {where} refused the connection")
    if isinstance(exc, (http.client.HTTPException, ConnectionError)):
        return URLFetchError(f"could not fetch {_show(target.url)}: {where} broke off or sent a malformed answer "
                             f"({type(exc).__name__}: {exc})")
    if isinstance(exc, OSError):
        return URLFetchError(f"could not fetch {_show(target.url)}: cannot reach {where} ({exc.strerror or exc})")
    return None


class _Watchdog:
    """The fetch deadline. Shuts the live socket when time is up, which wakes any read blocked on it.

    It shuts down a duplicate of the socket's descriptor: shutdown acts on the connection, not the descriptor,
    and the duplicate stays valid while `ssl` re-wraps the original during the TLS handshake.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.fired = False
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        # Never 0: a socket timeout of 0 means non-blocking, which would fail with a confusing error.
        return max(0.01, self.deadline - time.monotonic())

    def timed_out(self, target: _Target) -> URLFetchError:
        return URLFetchError(
            f"gave up on {_show(target.url)} after {self.seconds:g} s (the time limit): no complete answer in time"
        )

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socket = sock.dup()
            if self.fired:
                self._shutdown()

    def unwatch(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def stop(self) -> None:
        self._timer.cancel()
        self.unwatch()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the other side


# --- the body -------------------------------------------------------------------------------------------


def _check_content_type(target: _Target, response: http.client.HTTPResponse) -> str | None:
    header = response.getheader("Content-Type")
    if not header:
        return None
    content_type = header.split(";", 1)[0].strip().lower()
    major = content_type.partition("/")[0]
    if (
        major in _NOT_IMAGE_MAJOR_TYPES
        or content_type in _NOT_IMAGE_TYPES
        or (content_type.endswith(("+json", "+xml")) and major != "image")
    ):
        raise URLRefused(
            f"refused {_show(target.url)}: it is a {content_type} document, not an image; "
            "link to the image itself (right-click the picture, 'Copy image address')"
        )
    return content_type or None


def _read_capped(
    target: _Target, response: http.client.HTTPResponse, max_bytes: int, watchdog: _Watchdog
) -> bytes:
    declared = response.getheader("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > max_bytes:
        raise URLRefused(
            f"refused {_show(target.url)}: the image is {_size(int(declared))}, over the {_size(max_bytes)} limit"
        )
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = response.read(min(64 * 1024, max_bytes + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:  # stop here: the rest of the body is never read
            raise URLRefused(f"refused {_show(target.url)}: the image is larger than the {_size(max_bytes)} limit")
        chunks.append(chunk)
    if watchdog.fired:  # the watchdog's shutdown looks like the end of the body
        raise watchdog.timed_out(target)
    return b"".join(chunks)


def _filename(path: str) -> str:
    """The last path segment, reduced to safe characters; "image" when there is none."""
    segment = unquote(path.split("?", 1)[0].rpartition("/")[2])
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", segment).strip("._-")
    if len(name) > 100:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 99 - len(ext)] + dot + ext) if dot and len(ext) <= 10 else name[:100]
    return name or "image"


def _size(n: int) -> str:
    """1,234 bytes / 20 MB / 931.3 GB."""
    for unit, scale in (("GB", 1024 * MIB), ("MB", MIB)):
        if n >= scale:
            return f"{n / scale:,.1f}".removesuffix(".0") + f" {unit}"
    return f"{n:,} bytes"


def _show(url: str) -> str:
    return url if len(url) <= _SHOWN_URL_LENGTH else url[: _SHOWN_URL_LENGTH - 1] + "…"
