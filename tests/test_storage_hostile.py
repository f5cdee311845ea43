"""S3_ENDPOINT_URL pointing at something that is not S3 (a website, a proxy's error page): every way in (the
storage methods, `health`, `list`, `migrate --check-only`, the Home and Health pages) says so in one line
naming the endpoint (redacted) and S3_ENDPOINT_URL, never with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vpm.core.storage import EndpointNotS3, S3Storage

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "s3cr3t-in-the-url"
NOT_S3 = "does not answer like S3"


class _WebsiteHandler(BaseHTTPRequestHandler):
    """Answers every method with the same small page, whatever was asked."""

    protocol_version = "HTTP/1.1"  # answers botocore's `Expect: 100-continue` at once instead of after a wait
    status = 200
    content_type = "text/html; charset=utf-8"
    page = b"<!DOCTYPE html>\n<html><head><title>Welcome</title></head><body><h1>It works!</h1></body></html>\n"

    def _answer(self):
        self.seen.append(self.command)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # read the upload so the client sees our answer, not a reset
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.page)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

    def log_message(self, *args):  # keep the test output clean
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client closing its kept-alive connection is fine
        pass


@contextmanager
def website(status: int, content_type: str = _WebsiteHandler.content_type, page: bytes | None = None,
            seen: list[str] | None = None):
    """A local web server answering every request with `status` and a page; yields its host:port.
    The methods of the requests it received are appended to `seen`."""
    attrs = {"status": status, "content_type": content_type, "seen": [] if seen is None else seen}
    if page is not None:
        attrs["page"] = page
    server = _QuietServer(("127.0.0.1", 0), type("Handler", (_WebsiteHandler,), attrs))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def assert_one_clear_line(message: str, host: str) -> None:
    assert NOT_S3 in message, message
    assert host in message and "S3_ENDPOINT_URL" in message, message
    assert PASSWORD not in message
    assert "\n" not in message.strip() and "Traceback" not in message


# ------------------------------------------------------------------------------------------ the storage


ANSWERS = [
    pytest.param(200, "text/html", None, id="html-200"),
    pytest.param(404, "text/html", None, id="html-404"),
    pytest.param(500, "text/html", None, id="html-500"),
    pytest.param(403, "text/html", None, id="html-403"),
    pytest.param(200, "text/plain", b"OK", id="text-200"),
    pytest.param(404, "text/plain", b"Not Found", id="text-404"),
]


@pytest.mark.parametrize("status, content_type, page", ANSWERS)
def test_every_storage_call_fails_with_one_line_naming_the_endpoint(status, content_type, page):
    with website(status, content_type, page) as host:
        store = S3Storage("vpm-test-bucket", endpoint_url=f"http://user:{PASSWORD}@{host}",
                          access_key_id="testing", secret_access_key="testing")
        calls = {
            "check_access": store.check_access,
            "get": lambda: store.get("metadata/products.json"),
            "put": lambda: store.put("images/a.jpg", b"x", "image/jpeg"),
            "conditional put": lambda: store.put("metadata/products.json", b"[]", if_none_match=True),
            "list": lambda: store.list("images/"),
            "iter_objects": lambda: list(store.iter_objects()),
            "delete": lambda: store.delete("images/a.jpg"),
        }
        if status == 200:
            # An answer to HEAD has no body: only a success without an ETag gives a website away.
            calls |= {"head": lambda: store.head("images/a.jpg"), "exists": lambda: store.exists("images/a.jpg")}
        for name, call in calls.items():
            with pytest.raises(EndpointNotS3) as err:
                call()
            assert_one_clear_line(str(err.value), host)
            assert "S3_ENDPOINT_URL" in err.value.fix, name


def test_a_web_page_is_reported_with_the_status_it_came_with_and_not_retried():
    """botocore turns a 200 whose body is not XML into a retried 500 (a cut-off S3 answer); a typical web
    page (not well-formed XML) must be recognised before that, once, as the 200 it was."""
    seen: list[str] = []
    page = b"<!DOCTYPE html><html><head><meta charset=utf-8><title>Shop</title></head><body>Hi<br></body></html>"
    with website(200, page=page, seen=seen) as host:
        store = S3Storage("vpm-test-bucket", endpoint_url=f"http://{host}")
        with pytest.raises(EndpointNotS3, match="an HTML page with HTTP 200"):
            store.list("images/")
    assert seen == ["GET"]


def test_without_an_endpoint_the_advice_is_the_network_not_the_setting():
    store = S3Storage("vpm-test-bucket", access_key_id="testing", secret_access_key="testing")
    error = store._not_s3("images/a.jpg", "an HTML page with HTTP 200")
    assert "AWS S3 in us-east-1" in str(error) and "HTTPS_PROXY" in error.fix
    assert "S3_ENDPOINT_URL" not in str(error)


def test_an_unreadable_answer_of_any_kind_becomes_the_same_error():
    store = S3Storage("vpm-test-bucket", endpoint_url=f"http://user:{PASSWORD}@127.0.0.1:9")

    class Parser(Exception):
        pass

    def broken(**kwargs):
        raise Parser("botocore could not make sense of it")

    store.client.list_objects_v2 = broken
    with pytest.raises(EndpointNotS3, match=r"could not be read \(Parser\).*S3_ENDPOINT_URL") as err:
        store.list()
    assert PASSWORD not in str(err.value) and "127.0.0.1:9" in str(err.value)


# ----------------------------------------------------------------------------------------- the CLI


def vpm(host: str, *argv: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("S3_", "VPM_"))}
    env.update(
        S3_ENABLED="true", S3_BUCKET_NAME="vpm-test-bucket", S3_ENDPOINT_URL=f"http://user:{PASSWORD}@{host}",
        VPM_DATA_DIR=str(tmp_path / "data"), VPM_MODEL="efficientnet-lite0", VPM_DEVICE="cpu",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.run([sys.executable, "-m", "vpm", *argv], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("status", [200, 404])
@pytest.mark.parametrize("argv", [["health"], ["list"], ["migrate", "--check-only"]], ids=" ".join)
def test_cli_says_in_one_line_that_the_endpoint_is_not_s3(status, argv, tmp_path):
    with website(status) as host:
        result = vpm(host, *argv, tmp_path=tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output and "KeyError" not in output, output
    assert PASSWORD not in output
    lines = [line for line in output.splitlines() if NOT_S3 in line]
    assert len(lines) == 1, output
    assert_one_clear_line(lines[0], host)


# ------------------------------------------------------------------------------------------ the app


def _plain(markdown: str) -> str:
    """Text as a person reads it: without the Markdown escapes and word joiners the pages add."""
    return markdown.replace("\\", "").replace("\u2060", "")


@pytest.mark.parametrize("status", [200, 500])
@pytest.mark.parametrize("page", ["pages/home.py", "pages/health.py"])
def test_pages_show_the_message_not_an_exception(status, page, open_page, monkeypatch, tmp_path):
    with website(status) as host:
        monkeypatch.setenv("S3_ENABLED", "true")
        monkeypatch.setenv("S3_BUCKET_NAME", "vpm-test-bucket")
        monkeypatch.setenv("S3_ENDPOINT_URL", f"http://user:{PASSWORD}@{host}")
        monkeypatch.setenv("VPM_DATA_DIR", str(tmp_path / "data"))

        at = open_page(page)

    assert not at.exception
    shown = [_plain(e.value) for kind in ("error", "markdown", "caption") for e in getattr(at, kind)]
    assert any(NOT_S3 in text and host in text and "S3_ENDPOINT_URL" in text for text in shown), shown
    assert not any(PASSWORD in text for text in shown)
