"""The REST API against hostile clients: slow or lying connections, absurd JSON, non-finite numbers, leaks.

The connection tests run a real `python -m vpm serve` and talk to it over raw sockets, because the limits
they check live in uvicorn's protocol, which TestClient never goes through. Their time bounds catch a hang;
they are not speed tests, so they are generous.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vpm.core.config import ConfigError, load_settings
from vpm.core.matcher import Matcher
from vpm.faces.api import ServerLimits, create_app, server_limits

from conftest import free_port, make_product_photo, stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]
HANG_BOUND_S = 15  # a server that has not answered or closed by then is hanging
SHORT_TIMEOUT_S = "2"  # the header and body deadlines of the test server
_OUR_ENV_PREFIXES = ("S3_", "AWS_", "VPM_", "LOG_LEVEL")


@pytest.fixture
def backend() -> str:
    """The in-process tests here are about the API, not storage: the local folder is enough."""
    return "local"


def jpeg() -> bytes:
    return jpeg_of(0)


def jpeg_of(shade: int) -> bytes:
    """A small JPEG; a different one for each shade."""
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 20 * shade % 256, 0)).save(buffer, "JPEG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------- a real server


class Server:
    def __init__(self, port: int, data_dir: Path, log_path: Path):
        self.port, self.data_dir, self.log_path = port, data_dir, log_path
        self.base = f"http://127.0.0.1:{port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_server(workdir: Path, tiny_clip_dir: Path, **limits: str):
    """`python -m vpm serve` on a free port with the given VPM_API_* limits; stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OUR_ENV_PREFIXES)}
    env.update(
        VPM_DATA_DIR=str(workdir / "data"), VPM_MODEL=str(tiny_clip_dir), HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO_ROOT), **{f"VPM_API_{name.upper()}": value for name, value in limits.items()},
    )
    server = Server(free_port(), workdir / "data", workdir / "server.log")
    with open(server.log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "vpm", "serve", "--port", str(server.port)],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        wait_until_healthy(server, process)
        yield server
    finally:
        stop_process(process, timeout=30)


def wait_until_healthy(server: Server, process: subprocess.Popen | None = None, wait_s: float = 90) -> None:
    deadline = time.monotonic() + wait_s  # a generous wait for start-up (or recovery), not a speed assertion
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base}/api/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server did not answer /api/health:\n{server.log()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_clip_dir):
    """One server for the module, with 2 s header and body deadlines."""
    workdir = tmp_path_factory.mktemp("hostile-server")
    with running_server(workdir, tiny_clip_dir, header_timeout_s=SHORT_TIMEOUT_S,
                        body_timeout_s=SHORT_TIMEOUT_S) as running:
        yield running


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=HANG_BOUND_S)


def read_until_closed(sock: socket.socket, server: Server) -> bytes:
    """Everything the server sends until it closes the connection; fails if it neither answers nor closes."""
    deadline = time.monotonic() + HANG_BOUND_S
    received = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"the server held the connection for {HANG_BOUND_S} s; got {received[:200]!r}\n"
                        f"{server.log()[-3000:]}")
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def status_and_json(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


# ------------------------------------------------------------------------------------- slow clients


def multipart_start(boundary: str) -> bytes:
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nMug\r\n').encode()


@pytest.mark.parametrize(
    ("path", "content_type", "first_bytes"),
    [
        ("/api/search", "application/json", b'{"text": "a'),
        ("/api/upload", "multipart/form-data; boundary=vpm", multipart_start("vpm")),
    ],
)
def test_a_body_shorter_than_its_content_length_gets_408_and_the_server_carries_on(
    server, path, content_type, first_bytes
):
    with connect(server) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 1000000\r\n\r\n".encode() + first_bytes
        )
        status, body = status_and_json(read_until_closed(sock, server))
    assert status == 408
    assert body["success"] is False
    assert "VPM_API_BODY_TIMEOUT_S" in body["error"]
    assert httpx.get(f"{server.base}/api/health", timeout=HANG_BOUND_S).status_code == 200


@pytest.mark.parametrize(
    "stalled_at",
    [
        b"POST /api/sea",  # half a request line
        b"POST /api/search HTTP/1.1\r\nHost: test\r\nContent-Ty",  # half the headers
        b"GET /api/health HTTP/1.1\r\nHost: test\r\n\r\nGET /api/hea",  # half the second request on keep-alive
    ],
)
def test_a_client_that_stalls_inside_the_headers_is_disconnected(server, stalled_at):
    with connect(server) as sock:
        sock.sendall(stalled_at)
        received = read_until_closed(sock, server)
    status, body = status_and_json(b"HTTP/1.1 " + received.rpartition(b"HTTP/1.1 ")[2])  # the last response
    assert status == 408, received
    assert body["success"] is False and "VPM_API_HEADER_TIMEOUT_S" in body["error"]
    assert httpx.get(f"{server.base}/api/health", timeout=HANG_BOUND_S).status_code == 200


def test_a_connection_that_sends_nothing_is_closed(server):
    with connect(server) as sock:
        assert read_until_closed(sock, server) == b""


def test_more_slow_connections_than_the_cap_get_a_prompt_503_not_a_hang(tmp_path, tiny_clip_dir):
    # A long header deadline, so the slow connections stay while the normal request arrives.
    with running_server(tmp_path, tiny_clip_dir, max_concurrency="4", header_timeout_s="120") as server:
        slow = [connect(server) for _ in range(6)]
        try:
            for sock in slow:
                sock.sendall(b"GET /api/hea")
            with connect(server) as sock:
                sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                answer = read_until_closed(sock, server)
            assert answer.startswith(b"HTTP/1.1 503 "), answer
        finally:
            for sock in slow:
                sock.close()
        wait_until_healthy(server, wait_s=HANG_BOUND_S)  # the slots come back once the slow clients leave


# ----------------------------------------------------------------------------------- absurd bodies


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"text": ' + b"[" * 100_000,
        b'{"text": "mug", "top_k": ' + b"9" * 5000 + b"}",  # past Python's int conversion limit
    ],
    ids=["nested-array", "nested-in-object", "5000-digit-integer"],
)
def test_absurd_json_is_400_with_a_json_error(server, body):
    response = httpx.post(f"{server.base}/api/search", content=body, headers={"Content-Type": "application/json"},
                          timeout=HANG_BOUND_S)
    assert response.status_code == 400, response.text
    assert response.json()["success"] is False
    assert "not valid JSON" in response.json()["error"]


@pytest.mark.parametrize("field", ["threshold", "top_k"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e309"])
def test_non_finite_numbers_in_a_json_search_are_422_naming_the_field(server, field, value):
    body = f'{{"text": "mug", "{field}": {value}}}'.encode()
    response = httpx.post(f"{server.base}/api/search", content=body, headers={"Content-Type": "application/json"},
                          timeout=HANG_BOUND_S)
    assert response.status_code == 422, response.text
    assert f"invalid {field}" in response.json()["error"]


@pytest.mark.parametrize("field", ["threshold", "top_k"])
@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1e309"])
def test_non_finite_numbers_in_a_search_form_are_422_naming_the_field(server, field, value):
    response = httpx.post(f"{server.base}/api/search", files={"image": ("q.jpg", jpeg(), "image/jpeg")},
                          data={field: value}, timeout=HANG_BOUND_S)
    assert response.status_code == 422, response.text
    assert f"invalid {field}" in response.json()["error"]


@pytest.mark.parametrize("price", ["1e309", "inf", "-inf", "nan", "Infinity"])
def test_a_non_finite_price_is_422_and_nothing_is_stored(server, price):
    response = httpx.post(
        f"{server.base}/api/upload", files={"image": ("mug.jpg", jpeg(), "image/jpeg")},
        data={"name": "Mug", "category": "Kitchen", "price": price}, timeout=HANG_BOUND_S,
    )
    assert response.status_code == 422, response.text
    assert "invalid price" in response.json()["error"]
    assert httpx.get(f"{server.base}/api/products", timeout=HANG_BOUND_S).json()["total"] == 0
    images = server.data_dir / "images"
    assert not images.exists() or list(images.iterdir()) == []


# --------------------------------------------------------------------------- the body deadline in-process


def drive(app, path: str, headers: list[tuple[bytes, bytes]], first_chunk: bytes) -> tuple[int, dict, dict]:
    """Send `first_chunk` of a body that never finishes; return the status, headers and JSON body."""
    sent: list[dict] = []
    chunks = [first_chunk]

    async def receive():
        if chunks:
            return {"type": "http.request", "body": chunks.pop(), "more_body": True}
        await anyio.sleep_forever()

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver"), *headers], "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
    }

    async def run():
        with anyio.fail_after(HANG_BOUND_S):  # a bound on a hang, far above the 0.2 s deadline
            await app(scope, receive, send)

    anyio.run(run)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(body)


@pytest.mark.parametrize(
    ("path", "content_type", "first_chunk"),
    [("/api/search", b"application/json", b'{"te'),
     ("/api/upload", b"multipart/form-data; boundary=vpm", multipart_start("vpm")),
     ("/api/products/p1/images", b"multipart/form-data; boundary=vpm", multipart_start("vpm"))],
)
def test_the_app_answers_408_and_closes_when_the_body_stops_coming(
    search_settings, monkeypatch, path, content_type, first_chunk
):
    monkeypatch.setenv("VPM_API_BODY_TIMEOUT_S", "0.2")
    settings = load_settings()  # read again: once Settings has the field, it reads the variable at load
    app = create_app(settings, Matcher(settings))
    status, headers, body = drive(app, path, [(b"content-type", content_type)], first_chunk)
    assert status == 408
    assert headers[b"connection"] == b"close"
    assert set(body) == {"success", "error"} and body["success"] is False
    assert "VPM_API_BODY_TIMEOUT_S" in body["error"]


# ------------------------------------------------------------------------------- photos and listings


@pytest.fixture
def client_and_matcher(search_settings):
    matcher = Matcher(search_settings)
    return TestClient(create_app(search_settings, matcher), raise_server_exceptions=False), matcher


def every_file(matcher: Matcher) -> dict[str, bytes]:
    return {o.key: matcher.storage.get(o.key) for o in matcher.storage.iter_objects("")}


@pytest.mark.parametrize(
    "key",
    ["..%2F..%2Fmetadata%2Fproducts.lance", "images/..%2F..%2Fetc%2Fpasswd", "metadata/products.lance/_versions",
     "%2Fetc%2Fpasswd", "images%5C..%5Cmetadata"],
)
def test_removing_a_photo_by_a_hostile_key_deletes_nothing(client_and_matcher, key):
    client, matcher = client_and_matcher
    files = [("image", (f"{i}.jpg", jpeg_of(i), "image/jpeg")) for i in range(2)]
    assert client.post("/api/upload", files=files, data={"name": "Mug", "category": "K", "id": "p1"}).status_code == 201
    before = every_file(matcher)
    response = client.delete(f"/api/products/p1/images/{key}")
    assert response.status_code in (400, 404), response.text
    assert response.json()["success"] is False
    assert every_file(matcher) == before
    assert len(client.get("/api/products/p1").json()["product"]["images"]) == 2


@pytest.mark.parametrize(("parts", "status", "words"), [(11, 422, "at most 10 photos"), (1001, 400, "Too many files")])
def test_a_flood_of_image_parts_is_refused_in_json_and_stores_nothing(client_and_matcher, parts, status, words):
    client, matcher = client_and_matcher
    files = [("image", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(parts)]
    response = client.post("/api/upload", files=files, data={"name": "Mug", "category": "K"})
    assert response.status_code == status, response.text
    assert response.json()["success"] is False and words in response.json()["error"]
    assert list(matcher.storage.iter_objects(matcher.settings.s3_image_prefix)) == []


@pytest.mark.parametrize(
    "params",
    [{"offset": "9" * 5000}, {"limit": "9" * 5000}, {"offset": "1e3"}, {"limit": "nan"}, {"q": "\x00" * 300}],
    ids=["5000-digit-offset", "5000-digit-limit", "float-offset", "nan-limit", "long-q"],
)
def test_absurd_listing_parameters_are_422_naming_the_parameter(client_and_matcher, params):
    client, _ = client_and_matcher
    response = client.get("/api/products", params=params)
    assert response.status_code == 422, response.text
    (name,) = params
    assert f"invalid {name}" in response.json()["error"]


@pytest.mark.parametrize("q", ["'", "%", "_", "\\", "') OR TRUE --", "\x00", "名前"])
def test_odd_name_filters_are_literal_text_never_sql_or_wildcards(client_and_matcher, q):
    client, _ = client_and_matcher
    files = {"image": ("mug.jpg", jpeg(), "image/jpeg")}
    assert client.post("/api/upload", files=files, data={"name": "Mug", "category": "K"}).status_code == 201
    response = client.get("/api/products", params={"q": q, "category": [q, "K"]})
    assert response.status_code == 200, response.text
    assert response.json()["total"] == 0
    assert client.get("/api/products", params={"q": "mu", "category": [q, "K"]}).json()["total"] == 1


# ------------------------------------------------------------------------------------------- settings


def test_server_limits_have_defaults_and_read_the_environment(search_settings, monkeypatch):
    assert server_limits(search_settings) == ServerLimits()
    monkeypatch.setenv("VPM_API_MAX_CONCURRENCY", "7")
    monkeypatch.setenv("VPM_API_BODY_TIMEOUT_S", "2.5")
    limits = server_limits(load_settings())
    assert (limits.max_concurrency, limits.body_timeout_s) == (7, 2.5)


def test_server_limits_prefer_settings_fields_when_settings_has_them(search_settings, monkeypatch):
    monkeypatch.setenv("VPM_API_MAX_CONCURRENCY", "7")
    settings = search_settings.model_copy(update={"vpm_api_max_concurrency": 9})  # as if config.py had the field
    assert server_limits(settings).max_concurrency == 9


@pytest.mark.parametrize(
    ("name", "value"),
    [("VPM_API_MAX_CONCURRENCY", "lots"), ("VPM_API_MAX_CONCURRENCY", "0"), ("VPM_API_BODY_TIMEOUT_S", "nan"),
     ("VPM_API_HEADER_TIMEOUT_S", "inf"), ("VPM_API_KEEP_ALIVE_S", "-1")],
)
def test_a_bad_limit_is_a_one_line_config_error_naming_the_variable(search_settings, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):  # from load_settings once Settings has the field, else from us
        server_limits(load_settings())


# ------------------------------------------------------------------------------- nothing leaks out


@pytest.mark.parametrize("error_type", ["StorageError", "CatalogError"])
def test_a_storage_or_catalog_error_names_no_server_path(search_settings, monkeypatch, tmp_path, error_type):
    import vpm.core.catalog
    import vpm.core.storage

    error = getattr(vpm.core.storage, error_type, None) or getattr(vpm.core.catalog, error_type)
    matcher = Matcher(search_settings)

    def broken(**options):
        raise error(f"cannot use local folder {tmp_path}/data: Permission denied; check VPM_DATA_DIR")

    monkeypatch.setattr(matcher, "page_products", broken)
    client = TestClient(create_app(search_settings, matcher), raise_server_exceptions=False)
    response = client.get("/api/products")
    assert response.status_code == 503, response.text
    assert response.json()["success"] is False
    assert "Permission denied; check VPM_DATA_DIR" in response.json()["error"]  # the advice stays
    assert str(tmp_path) not in response.text and "/tmp" not in response.text


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_lost_table_file_is_a_503_that_names_no_server_path(search_settings, tmp_path):
    """LanceDB names its files without the leading slash ("tmp/.../products.lance/data/x.lance"): still a path
    of this server, so it must not reach a client either."""
    from vpm.backends import engine

    matcher = Matcher(search_settings)
    matcher.add_product(make_product_photo(1), "mug.png", name="Red mug", category="Kitchen")
    data = search_settings.vpm_data_dir / search_settings.metadata_prefix / "products.lance" / "data"
    for lost in data.iterdir():
        lost.unlink()
    engine.forget()
    client = TestClient(create_app(search_settings, Matcher(search_settings)), raise_server_exceptions=False)

    response = client.get("/api/products")

    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert "cannot read the products table" in error and "<server path>" in error
    assert str(tmp_path).lstrip("/") not in error and "/root/" not in error, error


def test_a_model_error_names_no_server_path(search_settings, monkeypatch):
    from vpm.models.embeddings import EmbeddingError

    matcher = Matcher(search_settings)

    def broken(*args, **kwargs):
        raise EmbeddingError("cannot load the model at /srv/models/clip: config.json is missing")

    monkeypatch.setattr(matcher, "search_text", broken)
    client = TestClient(create_app(search_settings, matcher), raise_server_exceptions=False)
    response = client.post("/api/search", json={"text": "mug"})
    assert response.status_code == 400
    assert "/srv/models" not in response.text
    assert "config.json is missing" in response.json()["error"]


def test_an_error_in_an_outer_middleware_is_a_terse_json_500(search_settings, monkeypatch):
    import vpm.faces.api

    async def explode(self, scope, receive, send):
        raise RuntimeError(f"secret internals at {REPO_ROOT}")

    monkeypatch.setattr(vpm.faces.api.BodyReadDeadline, "__call__", explode)
    client = TestClient(create_app(search_settings, Matcher(search_settings)), raise_server_exceptions=False)
    response = client.get("/api/products")
    assert response.status_code == 500
    body = response.json()
    assert body["success"] is False
    assert re.fullmatch(r"internal server error [0-9a-f]{8}; the server log has the details under that id",
                        body["error"])
    assert "Traceback" not in response.text and str(REPO_ROOT) not in response.text and "secret" not in response.text
