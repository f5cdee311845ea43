"""The SSRF guard around server-side image fetches: what it refuses, why, and that it connects where it checked.

No internet: every fetch goes to a throwaway server on 127.0.0.1 (reachable only with allow_private=True, the
switch that exists for these tests), or is refused before any connection, or meets a fake socket opener.
"""

from __future__ import annotations

import datetime
import io
import re
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from PIL import Image

from vpm.core import urlfetch
from vpm.core.urlfetch import FetchedImage, URLFetchError, URLRefused, fetch_image_bytes

PUBLIC_IP = "93.184.216.34"  # a public address; nothing ever connects to it in these tests


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


# --- a local test server ------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _TestServer

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Host")))
        path = urlsplit(self.path).path
        query = parse_qs(urlsplit(self.path).query)
        if path == "/cat.png":
            return self._send(PNG, "image/png")
        if path == "/octet":
            return self._send(PNG, "application/octet-stream")
        if path == "/no-type":
            return self._send(PNG, None)
        if path.startswith("/files/"):
            return self._send(PNG, "image/png")
        if path == "/bytes":
            return self._send(b"\x89" * int(query["n"][0]), "image/png")
        if path == "/typed":
            return self._send(b"<html><body>a shop page</body></html>", query["type"][0])
        if path == "/echo-host":
            return self._send(self.headers.get("Host", "").encode(), "application/octet-stream")
        if path == "/redirect":
            return self._redirect(query["to"][0])
        if path.startswith("/hops/"):
            left = int(path.rsplit("/", 1)[1])
            return self._redirect(f"/hops/{left - 1}") if left else self._send(PNG, "image/png")
        if path == "/endless":
            return self._endless()
        if path == "/declared-huge":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            return self.wfile.write(PNG)
        if path == "/slow":
            self.server.release.wait(30)
            return None
        if path == "/trickle-headers":
            self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Padding: ")
            return self._trickle()
        if path == "/trickle-body":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            return self._trickle()
        self.send_error(404)
        return None

    def _send(self, body: bytes, content_type: str | None) -> None:
        self.send_response(200)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _endless(self) -> None:
        """An image/png body that never ends (capped at 1 GiB so a broken client cannot hang the suite)."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        chunk = b"\0" * 65536
        sent = 0
        try:
            while sent < 2**30 and not self.server.release.is_set():
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the client hung up: what we want
        finally:
            self.server.endless_sent = sent
            self.server.endless_done.set()

    def _trickle(self) -> None:
        """One byte every 50 ms for up to 20 s: each read gets data well inside any per-read timeout."""
        try:
            for _ in range(400):
                if self.server.release.wait(0.05):
                    return
                self.wfile.write(b"a")
        except OSError:
            pass


class _TestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str | None]] = []
        self.release = threading.Event()
        self.endless_done = threading.Event()
        self.endless_sent = 0

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _serve(server: ThreadingHTTPServer):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def server():
    srv = _TestServer()
    _serve(srv)
    yield srv
    srv.release.set()  # let slow handlers finish
    srv.shutdown()
    srv.server_close()


def local_fetch(url: str, **kwargs) -> FetchedImage:
    """A fetch that may reach the test server on 127.0.0.1."""
    return fetch_image_bytes(url, allow_private=True, **kwargs)


class Resolver:
    """A DNS stand-in: host -> list of answers, one per lookup (the last answer repeats); records each call."""

    def __init__(self, answers: dict[str, list[list[str]] | list[str]]) -> None:
        self.answers = {
            host: answer if answer and isinstance(answer[0], list) else [answer] for host, answer in answers.items()
        }
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        answers = self.answers[host]
        self.calls.append((host, port))
        return answers[min(len(self.calls), len(answers)) - 1]


def unused_resolver(host: str, port: int) -> list[str]:
    raise AssertionError(f"the resolver should not be asked about {host}")


@pytest.fixture
def connections(monkeypatch):
    """Record every TCP connection attempt and refuse it, so a test can see where a fetch would have gone."""
    attempts: list[tuple[str, int]] = []

    def fake_open(address: str, port: int, timeout: float):
        attempts.append((address, port))
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(urlfetch, "_open_tcp", fake_open)
    return attempts


# --- a good fetch -------------------------------------------------------------------------------------------


def test_fetches_an_image_from_the_local_server(server):
    fetched = local_fetch(server.url("/cat.png"))

    assert fetched.data == PNG
    assert fetched.filename == "cat.png"
    assert fetched.content_type == "image/png"
    assert fetched.final_url == server.url("/cat.png")


def test_the_local_server_is_refused_without_allow_private(server):
    with pytest.raises(URLRefused, match=r"127\.0\.0\.1 is a loopback address"):
        fetch_image_bytes(server.url("/cat.png"))
    assert server.requests == []  # refused before connecting


@pytest.mark.parametrize("path, content_type", [("/no-type", None), ("/octet", "application/octet-stream")])
def test_a_missing_or_generic_binary_content_type_is_accepted(server, path, content_type):
    fetched = local_fetch(server.url(path))

    assert fetched.data == PNG
    assert fetched.content_type == content_type


@pytest.mark.parametrize(
    "path, filename",
    [
        ("/files/Red%20Shoe%20(1).JPG?size=large", "Red_Shoe_1_.JPG"),
        ("/files/", "image"),
        ("/files/%2E%2E%2F%2E%2E%2Fsecret.png", "secret.png"),  # an encoded "../" never becomes a path
    ],
)
def test_the_filename_is_the_sanitised_last_path_segment(server, path, filename):
    assert local_fetch(server.url(path)).filename == filename


# --- refusals by address ------------------------------------------------------------------------------------

BAD_ADDRESSES = [
    ("127.0.0.1", "a loopback address"),
    ("127.8.9.10", "a loopback address"),
    ("::1", "a loopback address"),
    ("10.1.2.3", "a private network address"),
    ("172.16.5.4", "a private network address"),
    ("172.31.255.254", "a private network address"),
    ("192.168.1.1", "a private network address"),
    ("fd12:3456::1", "a private network address"),
    ("169.254.169.254", "a link-local address (cloud metadata service)"),
    ("169.254.10.10", "a link-local address"),
    ("fe80::1", "a link-local address"),
    ("224.0.0.1", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("0.0.0.0", "an unspecified address"),
    ("::", "an unspecified address"),
    ("100.64.0.1", "a carrier-grade NAT (shared) address"),
    ("100.100.100.200", "a carrier-grade NAT (shared) address (cloud metadata service)"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.255", "a reserved address"),
    ("::ffff:127.0.0.1", "an IPv4-mapped IPv6 address for 127.0.0.1, a loopback address"),
    ("::ffff:169.254.169.254", "for 169.254.169.254, a link-local address (cloud metadata service)"),
    ("::ffff:10.0.0.1", "for 10.0.0.1, a private network address"),
    ("2002:7f00:1::", "an IPv6 address that tunnels to 127.0.0.1, a loopback address"),
    ("64:ff9b::a00:1", "tunnels to 10.0.0.1, a private network address"),
    ("192.0.2.10", "not on the public internet"),  # documentation range
]


@pytest.mark.parametrize("address, why", BAD_ADDRESSES)
def test_a_host_resolving_to_an_internal_address_is_refused(address, why, connections):
    resolver = Resolver({"images.example.com": [address]})

    with pytest.raises(URLRefused) as refused:
        fetch_image_bytes("https://images.example.com/shoe.jpg", resolver=resolver)

    assert str(refused.value).startswith(
        f"refused https://images.example.com/shoe.jpg: images.example.com resolves to {address}, "
    )
    assert why in str(refused.value)
    assert connections == []


def test_refusal_messages_read_plainly(connections):
    with pytest.raises(URLRefused) as metadata:
        fetch_image_bytes("http://169.254.169.254/latest/meta-data", resolver=unused_resolver)
    with pytest.raises(URLRefused) as localhost:
        fetch_image_bytes("http://localhost:8080/x.jpg", resolver=Resolver({"localhost": ["127.0.0.1"]}))

    assert str(metadata.value) == (
        "refused http://169.254.169.254/latest/meta-data: 169.254.169.254 is a link-local address "
        "(cloud metadata service)"
    )
    assert str(localhost.value) == (
        "refused http://localhost:8080/x.jpg: localhost resolves to 127.0.0.1, a loopback address"
    )
    assert connections == []


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://127.0.0.1/a.jpg", "127.0.0.1 is a loopback address"),
        ("http://[::1]/a.jpg", "::1 is a loopback address"),
        ("http://10.0.0.1/a.jpg", "10.0.0.1 is a private network address"),
        ("http://192.168.0.10:8080/a.jpg", "192.168.0.10 is a private network address"),
        ("http://[::ffff:127.0.0.1]/a.jpg", "IPv4-mapped IPv6 address for 127.0.0.1, a loopback address"),
        ("http://[fe80::1]/a.jpg", "fe80::1 is a link-local address"),
        ("http://0.0.0.0:8501/", "0.0.0.0 is an unspecified address"),
        ("http://[::]/", ":: is an unspecified address"),
        ("http://100.64.1.1/", "100.64.1.1 is a carrier-grade NAT"),
        ("http://224.0.0.251/", "224.0.0.251 is a multicast address"),
    ],
)
def test_a_literal_internal_ip_is_refused_without_a_lookup(url, why, connections):
    with pytest.raises(URLRefused, match=f"^refused {re.escape(url)}: .*{re.escape(why)}"):
        fetch_image_bytes(url, resolver=unused_resolver)
    assert connections == []


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f.0.0.1", "0177.0.0.1", "127.1", "0x7f000001", "017700000001", "127.0.1", "0x7F.0.0.1"],
)
def test_odd_spellings_of_127_0_0_1_are_refused(host, connections):
    with pytest.raises(URLRefused) as refused:
        fetch_image_bytes(f"http://{host}/a.jpg", resolver=unused_resolver)

    assert "an unusual way to write the IP address 127.0.0.1, a loopback address" in str(refused.value)
    assert connections == []


@pytest.mark.parametrize(
    "host, meaning",
    [
        ("0", "0.0.0.0, an unspecified address"),
        ("010.0.0.1", "8.0.0.1; write it as 8.0.0.1"),  # octal to inet_aton, decimal to other parsers
        ("0x5d.0xb8.0xd8.0x22", f"{PUBLIC_IP}; write it as {PUBLIC_IP}"),  # public, but still ambiguous
    ],
)
def test_every_non_canonical_ip_spelling_is_refused(host, meaning, connections):
    with pytest.raises(URLRefused, match=f"an unusual way to write the IP address {meaning}"):
        fetch_image_bytes(f"http://{host}/a.jpg", resolver=unused_resolver)
    assert connections == []


def test_one_internal_address_among_public_ones_is_enough_to_refuse(connections):
    resolver = Resolver({"cdn.example.com": [PUBLIC_IP, "10.0.0.7", "2606:2800:220:1::1"]})

    with pytest.raises(URLRefused, match=r"cdn\.example\.com resolves to 10\.0\.0\.7, a private network address"):
        fetch_image_bytes("https://cdn.example.com/a.jpg", resolver=resolver)
    assert connections == []


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data", "http://[fd00:ec2::254]/latest/meta-data"]
)
def test_metadata_services_stay_refused_even_with_allow_private(url, connections):
    with pytest.raises(URLRefused, match=r"cloud metadata service"):
        fetch_image_bytes(url, allow_private=True, resolver=unused_resolver)
    assert connections == []


def test_allow_private_does_not_open_link_local_addresses(connections):
    with pytest.raises(URLRefused, match="link-local"):
        resolver = Resolver({"printer.lan": ["fe80::5"]})
        fetch_image_bytes("http://printer.lan/a.jpg", allow_private=True, resolver=resolver)
    assert connections == []


# --- refusals by URL shape ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, why",
    [
        ("file:///etc/passwd", "only http:// and https:// links can be fetched, not file:"),
        ("ftp://example.com/a.jpg", "not ftp:"),
        ("gopher://example.com:70/_GET", "not gopher:"),
        ("data:image/png;base64,iVBORw0KGgo=", "not data:"),
        ("javascript:alert(1)", "not javascript:"),
        ("dict://127.0.0.1:6379/info", "not dict:"),
        ("example.com/a.jpg", "the URL has no scheme; it must start with http:// or https://"),
        ("//example.com/a.jpg", "the URL has no scheme"),
        ("localhost:8080/a.jpg", "the URL has no scheme"),
        ("images.example.com:443/a.jpg", "the URL has no scheme"),
        ("", "the URL is empty"),
    ],
)
def test_only_http_and_https_are_fetched(url, why, connections):
    with pytest.raises(URLRefused) as refused:
        fetch_image_bytes(url, resolver=unused_resolver)

    assert why in str(refused.value)
    assert connections == []


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@example.com/a.jpg",
        "https://hunter2@example.com/a.jpg",
        "http://example.com:hunter2@127.0.0.1/a.jpg",  # the classic "looks like example.com" trick
        "http://@example.com/a.jpg",
    ],
)
def test_urls_with_credentials_are_refused_without_echoing_the_password(url, connections):
    with pytest.raises(URLRefused) as refused:
        fetch_image_bytes(url, resolver=unused_resolver)

    assert "the URL contains a user name or password" in str(refused.value)
    assert "hunter2" not in str(refused.value)
    assert connections == []


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://exa_mple.com/a.jpg", "exa_mple.com is not a valid host name"),
        ("http://-shop-.example/a.jpg", "is not a valid host name"),
        ("http://shop..example/a.jpg", "is not a valid host name"),
        ("http://shop.example%2F@x/a.jpg", "user name or password"),
        ("http://[fe80::1%25eth0]/a.jpg", "names a network interface"),
        ("http://[::1/a.jpg", "the URL is malformed"),
        ("http://ex ample.com/a.jpg", "a space or a control character"),
        ("http://example.com/a.jpg\r\nX-Injected: 1", "a space or a control character"),
        ("http://example.com\\@127.0.0.1/a.jpg", "a backslash"),
        ("http:///a.jpg", "the URL has no host name"),
        ("http://example.com:99999/a.jpg", "the port is not a number between 1 and 65535"),
        ("http://example.com:0/a.jpg", "the port is not a number between 1 and 65535"),
        ("http://example.com/" + "a" * 2048, "the URL is 2067 characters long; the limit is 2048"),
    ],
)
def test_unusual_urls_are_refused_with_the_reason(url, why, connections):
    with pytest.raises(URLRefused) as refused:
        fetch_image_bytes(url, resolver=unused_resolver)

    assert why in str(refused.value)
    assert len(str(refused.value)) < 400  # a 2 KB URL is shortened in the message
    assert connections == []


def test_fullwidth_digits_are_read_as_the_ip_they_spell(connections):
    with pytest.raises(URLRefused, match=r"127\.0\.0\.1 is a loopback address"):
        fetch_image_bytes("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/a.jpg", resolver=unused_resolver)
    assert connections == []


def test_an_international_host_name_is_looked_up_in_its_ascii_form(connections):
    resolver = Resolver({"xn--bcher-kva.example": [PUBLIC_IP]})

    with pytest.raises(URLFetchError, match="refused the connection"):
        fetch_image_bytes("https://bücher.example/a.jpg", resolver=resolver)
    assert resolver.calls == [("xn--bcher-kva.example", 443)]


# --- pinning: the address checked is the address connected to ---------------------------------------------------


def test_dns_rebinding_cannot_switch_the_connection_to_an_internal_address(connections):
    # A rebinding DNS server answers the check with a public address and any later lookup with 127.0.0.1.
    rebinding = Resolver({"images.example.com": [[PUBLIC_IP], ["127.0.0.1"]]})

    with pytest.raises(URLFetchError, match="refused the connection"):
        fetch_image_bytes("http://images.example.com/shoe.jpg", resolver=rebinding)

    assert rebinding.calls == [("images.example.com", 80)]  # looked up once...
    assert connections == [(PUBLIC_IP, 80)]  # ...and the connection went to the address that was checked


def test_the_connection_goes_to_the_pinned_ip_with_the_host_name_in_the_host_header(server):
    resolver = Resolver({"images.example.com": ["127.0.0.1"]})

    fetched = local_fetch(f"http://images.example.com:{server.port}/echo-host", resolver=resolver)

    assert fetched.data == f"images.example.com:{server.port}".encode()
    assert fetched.final_url == f"http://images.example.com:{server.port}/echo-host"


def test_every_redirect_hop_is_looked_up_and_checked_again(server):
    resolver = Resolver({"cdn.example": ["127.0.0.1"]})
    hop = f"http://cdn.example:{server.port}/cat.png"

    fetched = local_fetch(server.url(f"/redirect?to={hop}"), resolver=resolver)

    assert fetched.data == PNG
    assert fetched.final_url == hop
    assert resolver.calls == [("cdn.example", server.port)]


# --- redirects ------------------------------------------------------------------------------------------------


def test_a_redirect_to_the_metadata_service_is_refused(server):
    start = server.url("/redirect?to=http://169.254.169.254/latest/meta-data/iam/")

    with pytest.raises(URLRefused) as refused:
        local_fetch(start)

    assert str(refused.value) == (
        f"refused http://169.254.169.254/latest/meta-data/iam/ (redirected from {start}): "
        "169.254.169.254 is a link-local address (cloud metadata service)"
    )
    assert len(server.requests) == 1


def test_a_redirect_to_a_host_that_resolves_inside_is_refused(server):
    resolver = Resolver({"evil.example": ["::ffff:169.254.169.254"]})

    with pytest.raises(URLRefused, match=r"evil\.example resolves to .*cloud metadata service"):
        local_fetch(server.url("/redirect?to=http://evil.example/x"), resolver=resolver)


@pytest.mark.parametrize("location", ["file:///etc/passwd", "gopher://127.0.0.1:25/", "http://2130706433/"])
def test_a_redirect_to_a_forbidden_url_is_refused(server, location):
    with pytest.raises(URLRefused, match="redirected from"):
        local_fetch(server.url(f"/redirect?to={location}"))


def test_a_relative_redirect_is_followed(server):
    fetched = local_fetch(server.url("/redirect?to=cat.png"))

    assert fetched.data == PNG
    assert fetched.final_url == server.url("/cat.png")


def test_redirects_are_followed_up_to_the_limit(server):
    assert local_fetch(server.url("/hops/2"), max_redirects=2).data == PNG


def test_a_redirect_chain_longer_than_the_limit_is_abandoned(server):
    with pytest.raises(URLFetchError, match="redirected more than 2 times"):
        local_fetch(server.url("/hops/3"), max_redirects=2)

    assert [path for path, _ in server.requests] == ["/hops/3", "/hops/2", "/hops/1"]  # /hops/0 never asked for


# --- size, time, status, type -------------------------------------------------------------------------------


def test_a_body_of_exactly_max_bytes_is_accepted(server):
    assert len(local_fetch(server.url("/bytes?n=5000"), max_bytes=5000).data) == 5000


def test_a_body_one_byte_over_max_bytes_is_refused(server):
    with pytest.raises(URLRefused, match="the image is 5,001 bytes, over the 5,000 bytes limit"):
        local_fetch(server.url("/bytes?n=5001"), max_bytes=5000)


def test_an_endless_body_is_cut_off_at_the_limit(server):
    with pytest.raises(URLRefused, match="the image is larger than the 100,000 bytes limit"):
        local_fetch(server.url("/endless"), max_bytes=100_000)

    # The client hung up, so the server's writes failed long before its 1 GiB cap.
    assert server.endless_done.wait(20)
    assert server.endless_sent < 64 * 2**20


def test_a_declared_size_over_the_limit_is_refused_before_reading(server):
    with pytest.raises(URLRefused, match=r"the image is 931\.3 GB, over the 20 MB limit"):
        local_fetch(server.url("/declared-huge"))


@pytest.mark.parametrize("path", ["/slow", "/trickle-headers", "/trickle-body"])
def test_a_server_that_is_too_slow_is_given_up_on(server, path):
    # /trickle-* send a byte every 50 ms for 20 s: a per-read timeout alone would wait for all of it.
    with pytest.raises(URLFetchError) as failed:
        local_fetch(server.url(path), timeout=0.5)

    assert str(failed.value) == (
        f"gave up on {server.url(path)} after 0.5 s (the time limit): no complete answer in time"
    )


def test_a_404_is_reported_with_its_status(server):
    with pytest.raises(URLFetchError) as failed:
        local_fetch(server.url("/missing.jpg"))

    assert str(failed.value) == f"{server.url('/missing.jpg')} answered HTTP 404 (Not Found)"


@pytest.mark.parametrize(
    "content_type", ["text/html; charset=utf-8", "application/json", "text/plain", "video/mp4", "application/pdf"]
)
def test_a_page_that_is_not_an_image_is_refused(server, content_type):
    url = server.url(f"/typed?type={quote(content_type)}")
    with pytest.raises(URLRefused) as refused:
        local_fetch(url)

    bare_type = content_type.split(";")[0]
    assert f"it is a {bare_type} document, not an image" in str(refused.value)
    assert "Copy image address" in str(refused.value)


def test_a_host_that_does_not_exist_is_reported():
    def no_such_host(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(URLFetchError) as failed:
        fetch_image_bytes("https://no-such-shop.example/a.jpg", resolver=no_such_host)

    assert str(failed.value) == (
        "could not find the host no-such-shop.example for https://no-such-shop.example/a.jpg "
        "(DNS lookup failed: Name or service not known)"
    )


def test_a_closed_port_is_reported():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused

        with pytest.raises(URLFetchError, match=rf"127\.0\.0\.1 \(port {port}\) refused the connection"):
            local_fetch(f"http://127.0.0.1:{port}/a.jpg")


# --- https through a pinned address ---------------------------------------------------------------------------


def _certificates(tmp_path, names: list[str]):
    """A throwaway CA and a server certificate for `names`; returns (ca_pem_path, cert_path, key_path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vpm test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture
def https_server(tmp_path, monkeypatch):
    """An HTTPS test server on 127.0.0.1 whose certificate names images.example.com, and a client trusting its CA."""
    ca, cert, key = _certificates(tmp_path, ["images.example.com"])
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    srv = _TestServer()
    srv.socket = server_context.wrap_socket(srv.socket, server_side=True)
    _serve(srv)

    def trusting_context():
        context = ssl.create_default_context(cafile=str(ca))
        return context

    monkeypatch.setattr(urlfetch, "_tls_context", trusting_context)
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def test_https_to_a_pinned_ip_still_checks_the_certificate_against_the_host_name(https_server):
    resolver = Resolver({"images.example.com": ["127.0.0.1"]})

    fetched = local_fetch(f"https://images.example.com:{https_server.port}/cat.png", resolver=resolver)

    assert fetched.data == PNG
    assert https_server.requests == [("/cat.png", f"images.example.com:{https_server.port}")]


def test_https_with_a_certificate_for_another_name_is_refused(https_server):
    resolver = Resolver({"shop.example.org": ["127.0.0.1"]})

    with pytest.raises(URLFetchError, match="the HTTPS certificate of shop.example.org failed verification"):
        local_fetch(f"https://shop.example.org:{https_server.port}/cat.png", resolver=resolver)
    assert https_server.requests == []
