"""The REST API (vpm.api) on both backends: what a team calling it from its own service sees."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from fakes import ColourMeanEmbedder
from conftest import BUCKET, free_port, stop_process
from vpm.api import MULTIPART_OVERHEAD_BYTES, create_app
from vpm.config import load_settings
from vpm.matcher import Matcher

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def jpeg(color: str = "red", size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def stored_keys(matcher: Matcher) -> set[str]:
    return {o.key for o in matcher.storage.iter_objects("")}


@pytest.fixture
def api_settings(search_settings):
    """The parametrised backend with the tiny offline CLIP model (uploads embed; nothing may download)."""
    return search_settings


def make_client(settings, **overrides) -> tuple[TestClient, Matcher]:
    if overrides:
        settings = settings.model_copy(update=overrides)
    matcher = Matcher(settings)
    return TestClient(create_app(settings, matcher), raise_server_exceptions=False), matcher


@pytest.fixture
def client_and_matcher(api_settings):
    return make_client(api_settings)


@pytest.fixture
def client(client_and_matcher):
    return client_and_matcher[0]


def upload(client: TestClient, data: bytes | None = None, filename: str = "photo.jpg", **fields):
    form = {"name": "Red Mug", "category": "Kitchen", **fields}
    form = {k: v for k, v in form.items() if v is not None}
    files = {"image": (filename, jpeg() if data is None else data, "image/jpeg")}
    return client.post("/api/upload", files=files, data=form)


def assert_error(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert "Traceback" not in body["error"]
    for word in words:
        assert word.lower() in body["error"].lower(), body["error"]
    return body


# ------------------------------------------------------------------------------------------------ health


def test_health_reports_storage_catalog_and_model_without_loading_the_model(client_and_matcher, backend):
    client, matcher = client_and_matcher
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] in ("pass", "warn")
    assert body["storage"]["backend"] == backend
    assert body["storage"]["bucket"] == (BUCKET if backend == "s3" else None)
    assert body["products"] == 0
    assert body["model"]["configured"] == matcher.settings.vpm_model
    assert body["model"]["loaded"] is False
    assert body["version"]
    assert {c["name"] for c in body["checks"]} >= {"storage reachable", "catalog readable"}
    assert matcher.model_loaded is False


def test_health_is_503_when_the_storage_cannot_be_reached(api_settings, backend, tmp_path):
    if backend == "s3":
        broken = {"s3_bucket_name": "no-such-bucket-here"}
    else:
        (tmp_path / "a-file").write_text("not a folder")
        broken = {"vpm_data_dir": tmp_path / "a-file"}
    client, _ = make_client(api_settings, **broken)
    response = client.get("/api/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["healthy"] is False
    assert any(c["status"] == "fail" and c["fix"] for c in body["checks"])


def test_health_after_an_upload_shows_the_loaded_model_and_the_count(client_and_matcher):
    client, matcher = client_and_matcher
    assert upload(client).status_code == 201
    body = client.get("/api/health").json()
    assert body["products"] == 1
    assert body["model"]["loaded"] is True
    assert body["model"]["model_id"] == matcher.embedder.model_id


def test_health_can_be_asked_to_load_and_check_the_model(client_and_matcher):
    client, matcher = client_and_matcher
    body = client.get("/api/health", params={"load_model": "true"}).json()
    assert matcher.model_loaded is True
    checks = {c["name"]: c for c in body["checks"]}
    assert checks["model"]["status"] == "pass"
    assert checks["index"]["status"] == "pass"
    assert body["index"]["products"] == 0


# ------------------------------------------------------------------------------------------------ upload


def test_upload_stores_the_product_and_answers_201_with_its_urls(client_and_matcher, backend):
    client, matcher = client_and_matcher
    photo = jpeg("blue")
    response = upload(client, photo, name="Blue Mug", category="Kitchen", price="12.5", description="350 ml")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] is True
    product = body["product"]
    assert (product["name"], product["category"], product["price"], product["description"]) == (
        "Blue Mug", "Kitchen", 12.5, "350 ml",
    )
    assert matcher.get_product(product["id"]).name == "Blue Mug"
    assert {product["image_key"], product["thumbnail_key"]} <= stored_keys(matcher)
    if backend == "local":
        assert product["image_url"] == f"http://testserver/api/images/{product['image_key']}"
        served = client.get(product["image_url"])
        assert served.status_code == 200
        assert served.headers["content-type"] == "image/jpeg"
        assert served.content == photo
        thumb = client.get(product["thumbnail_url"])
        assert thumb.headers["content-type"] == "image/webp"
    else:
        assert "X-Amz-Signature=" in product["image_url"]
        assert f"/{BUCKET}/" in product["image_url"] or f"//{BUCKET}." in product["image_url"]


def test_upload_with_a_chosen_id_keeps_it(client):
    response = upload(client, id="sku-42")
    assert response.status_code == 201
    assert response.json()["product"]["id"] == "sku-42"
    assert client.get("/api/products/sku-42").json()["product"]["name"] == "Red Mug"


def test_upload_on_s3_with_a_cdn_returns_the_cdn_url(aws, tmp_path, tiny_clip_dir):
    settings = load_settings(
        s3_enabled=True, s3_bucket_name=BUCKET, s3_cdn_url="https://cdn.example.com/",
        vpm_data_dir=tmp_path / "unused", vpm_model=str(tiny_clip_dir),
    )
    client, _ = make_client(settings)
    product = upload(client).json()["product"]
    assert product["image_url"] == f"https://cdn.example.com/{product['image_key']}"
    assert product["thumbnail_url"] == f"https://cdn.example.com/{product['thumbnail_key']}"


def test_a_file_that_is_not_an_image_is_422_and_stores_nothing(client_and_matcher):
    client, matcher = client_and_matcher
    before = stored_keys(matcher)
    response = upload(client, b"just some text, not a photo", filename="notes.jpg")
    assert_error(response, 422, "notes.jpg", "not an image")
    assert stored_keys(matcher) == before
    assert matcher.list_products() == []


@pytest.mark.parametrize("missing", ["image", "name", "category"])
def test_a_missing_field_is_named_and_nothing_is_stored(client_and_matcher, missing):
    client, matcher = client_and_matcher
    before = stored_keys(matcher)
    form = {"name": "Red Mug", "category": "Kitchen"}
    form.pop(missing, None)
    files = {} if missing == "image" else {"image": ("photo.jpg", jpeg(), "image/jpeg")}
    if missing == "image":  # still multipart, as curl -F sends it, just without the file
        files = {"unrelated": ("x.txt", b"x", "text/plain")}
    response = client.post("/api/upload", files=files, data=form)
    assert_error(response, 422, f"'{missing}'")
    assert stored_keys(matcher) == before


def test_an_image_sent_as_text_says_to_send_a_file(client):
    response = client.post("/api/upload", data={"image": "path/to/image.jpg", "name": "Mug", "category": "Kitchen"})
    assert_error(response, 422, "'image' must be a file", "@")


@pytest.mark.parametrize(
    ("fields", "words"),
    [({"name": "   "}, ["name"]), ({"price": "cheap"}, ["price"]), ({"price": "-3"}, ["price"]),
     ({"id": "../../etc"}, ["id"])],
)
def test_invalid_fields_are_422_naming_the_field(client_and_matcher, fields, words):
    client, matcher = client_and_matcher
    before = stored_keys(matcher)
    assert_error(upload(client, **fields), 422, *words)
    assert stored_keys(matcher) == before


def test_a_duplicate_id_is_409_and_the_original_is_untouched(client_and_matcher):
    client, matcher = client_and_matcher
    original = jpeg("green")
    assert upload(client, original, id="sku-1", name="Green Mug").status_code == 201
    before = {k: matcher.storage.get(k) for k in stored_keys(matcher) if not k.startswith("metadata/")}
    response = upload(client, jpeg("black"), id="sku-1", name="Black Mug")
    assert_error(response, 409, "sku-1", "already exists")
    after = {k: matcher.storage.get(k) for k in stored_keys(matcher) if not k.startswith("metadata/")}
    assert after == before
    assert [p.name for p in matcher.list_products()] == ["Green Mug"]


# ----------------------------------------------------------------------------------------- size limit


def test_an_upload_over_the_limit_is_413_and_stores_nothing(api_settings):
    client, matcher = make_client(api_settings, vpm_max_upload_mb=1)
    before = stored_keys(matcher)
    too_big = jpeg() + b"\0" * (2 * MIB)  # trailing bytes after a JPEG still decode: only the size is wrong
    response = upload(client, too_big)
    assert_error(response, 413, "1 MB", "VPM_MAX_UPLOAD_MB")
    assert stored_keys(matcher) == before


def test_an_image_just_over_the_limit_is_413_from_the_size_check(api_settings):
    # Inside the multipart allowance, so the body is read; the image itself is over the limit.
    client, matcher = make_client(api_settings, vpm_max_upload_mb=1)
    before = stored_keys(matcher)
    response = upload(client, jpeg() + b"\0" * MIB)
    assert_error(response, 413, "photo.jpg", "VPM_MAX_UPLOAD_MB")
    assert stored_keys(matcher) == before


def test_a_chunked_upload_without_content_length_is_cut_off(api_settings):
    client, matcher = make_client(api_settings, vpm_max_upload_mb=1)
    before = stored_keys(matcher)
    boundary = "vpmboundary"
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nMug\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\nKitchen\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def body():
        yield head + jpeg()
        for _ in range(40):  # 2.5 MB in 64 KiB chunks
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/api/upload", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert_error(response, 413, "VPM_MAX_UPLOAD_MB")
    assert stored_keys(matcher) == before


def _run_asgi(app, headers: list[tuple[bytes, bytes]], chunks):
    """Drive the app directly, counting how much of the request body it pulled."""
    pulled = 0
    sent: list[dict] = []

    async def receive():
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/upload", "raw_path": b"/api/upload", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver"), *headers], "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), pulled


def test_a_long_upload_is_refused_after_reading_about_the_limit(api_settings):
    settings = api_settings.model_copy(update={"vpm_max_upload_mb": 1})
    app = create_app(settings, Matcher(settings))
    head = (
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="endless.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n"
    )

    def long_body():  # 8 MB with no Content-Length, against a 1 MB limit
        yield head
        for _ in range(128):
            yield b"\0" * 65536

    status, body, pulled = _run_asgi(app, [(b"content-type", b"multipart/form-data; boundary=b")], long_body())
    assert status == 413
    assert body["success"] is False
    assert pulled <= settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES + 65536


def test_a_declared_content_length_over_the_limit_is_refused_before_reading(api_settings):
    settings = api_settings.model_copy(update={"vpm_max_upload_mb": 1})
    app = create_app(settings, Matcher(settings))
    headers = [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", str(50 * MIB).encode())]
    status, body, pulled = _run_asgi(app, headers, iter([b"x" * 65536] * 1000))
    assert status == 413
    assert "VPM_MAX_UPLOAD_MB" in body["error"]
    assert pulled == 0


# ------------------------------------------------------------------------------------ products & more


def test_products_are_paginated_and_filtered_by_category(client):
    for i, category in enumerate(["Kitchen", "Kitchen", "Garden", "kitchen", "Toys"]):
        assert upload(client, jpeg(("red", "green", "blue", "white", "black")[i]), id=f"p{i}",
                      category=category).status_code == 201
    page = client.get("/api/products", params={"limit": 2, "offset": 1}).json()
    assert page["success"] is True
    assert page["total"] == 5
    assert [p["id"] for p in page["items"]] == ["p1", "p2"]
    assert all(p["image_url"] for p in page["items"])
    kitchen = client.get("/api/products", params={"category": "KITCHEN"}).json()
    assert kitchen["total"] == 3
    assert {p["id"] for p in kitchen["items"]} == {"p0", "p1", "p3"}
    assert client.get("/api/products", params={"offset": 10}).json()["items"] == []
    assert_error(client.get("/api/products", params={"limit": 0}), 422, "limit")


def test_categories_are_listed_with_counts(client):
    for i, category in enumerate(["Toys", "Garden", "Toys"]):
        upload(client, jpeg(("red", "green", "blue")[i]), category=category)
    body = client.get("/api/categories").json()
    assert body["categories"] == ["Garden", "Toys"]
    assert body["counts"] == {"Garden": 1, "Toys": 2}


def test_a_missing_product_is_a_404_json_error(client):
    assert_error(client.get("/api/products/nope"), 404, "nope")
    assert_error(client.delete("/api/products/nope"), 404, "nope")


def test_delete_removes_the_product_and_its_files(client_and_matcher):
    client, matcher = client_and_matcher
    product = upload(client, id="gone").json()["product"]
    response = client.delete("/api/products/gone")
    assert response.status_code == 200
    assert response.json() == {"success": True, "deleted": "gone"}
    assert_error(client.get("/api/products/gone"), 404)
    keys = stored_keys(matcher)
    assert product["image_key"] not in keys and product["thumbnail_key"] not in keys


def test_unknown_routes_and_methods_answer_in_json(client):
    assert_error(client.get("/api/nothing-here"), 404, "/api/nothing-here")
    assert_error(client.put("/api/products"), 405, "PUT")


def test_an_unexpected_error_is_a_generic_500_and_a_log_line(client_and_matcher, monkeypatch, caplog):
    client, matcher = client_and_matcher

    def explode():
        raise RuntimeError("secret internals at /srv/private/path")

    monkeypatch.setattr(matcher, "list_products", explode)
    with caplog.at_level(logging.ERROR, logger="vpm.api"):
        response = client.get("/api/products")
    assert_error(response, 500, "internal server error")
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert any("GET /api/products" in r.getMessage() for r in caplog.records)


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/health", "/api/upload", "/api/search", "/api/products", "/api/categories"} <= set(paths)


# ---------------------------------------------------------------------------------------- image serving


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/images/%2e%2e/metadata/products.json", 400),
        ("/api/images/images/%2E%2E/metadata/products.json", 400),
        ("/api/images/images/..%2f..%2fmetadata%2fproducts.json", 400),
        ("/api/images/%2Fetc%2Fpasswd", 400),
        ("/api/images/images\\..\\metadata\\products.json", 400),
        ("/api/images/metadata/products.json", 404),
        ("/api/images/images/does-not-exist.jpg", 404),
    ],
)
def test_image_serving_refuses_traversal_and_anything_but_catalog_images(client, path, status):
    upload(client, id="p1")  # so products.json exists and would leak if served
    response = client.get(path)
    body = assert_error(response, status)
    assert '"products"' not in response.text and body["error"]


def test_image_serving_refuses_a_non_image_under_the_image_prefix(client_and_matcher):
    client, matcher = client_and_matcher
    matcher.storage.put("images/readme.txt", b"hello", "text/plain")
    assert_error(client.get("/api/images/images/readme.txt"), 404)


# ------------------------------------------------------------------------------------------------ auth


@pytest.fixture
def keyed_client(api_settings):
    return make_client(api_settings, vpm_api_key=SecretStr("s3cret-key"))


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": "s3cret-ke"}])
def test_with_an_api_key_set_every_route_but_health_needs_it(keyed_client, headers):
    client, matcher = keyed_client
    before = stored_keys(matcher)
    for method, path in [("GET", "/api/products"), ("GET", "/api/categories"), ("GET", "/api/products/x"),
                         ("DELETE", "/api/products/x"), ("GET", "/api/images/images/x.jpg")]:
        assert_error(client.request(method, path, headers=headers), 401, "X-API-Key")
    response = client.post(
        "/api/upload", headers=headers, files={"image": ("p.jpg", jpeg(), "image/jpeg")},
        data={"name": "Mug", "category": "Kitchen"},
    )
    assert_error(response, 401, "API key")
    assert_error(client.post("/api/search", headers=headers, json={"text": "mug"}), 401)
    assert stored_keys(matcher) == before
    assert client.get("/api/health", headers=headers).status_code == 200


def test_with_the_right_api_key_requests_succeed(keyed_client):
    client, _ = keyed_client
    key = {"X-API-Key": "s3cret-key"}
    response = client.post(
        "/api/upload", headers=key, files={"image": ("p.jpg", jpeg(), "image/jpeg")},
        data={"name": "Mug", "category": "Kitchen"},
    )
    assert response.status_code == 201
    assert client.get("/api/products", headers=key).json()["total"] == 1


# ------------------------------------------------------------------------------------------------ CORS


def test_cors_headers_only_for_configured_origins(api_settings):
    client, _ = make_client(api_settings, vpm_cors_origins="https://shop.example, https://admin.example")
    allowed = client.get("/api/health", headers={"Origin": "https://shop.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
    other = client.get("/api/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    preflight = client.options(
        "/api/upload",
        headers={"Origin": "https://admin.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "x-api-key"},
    )
    assert preflight.status_code == 200
    assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()


def test_no_cors_headers_by_default(client):
    response = client.get("/api/health", headers={"Origin": "https://shop.example"})
    assert "access-control-allow-origin" not in response.headers


def test_an_auth_refusal_still_carries_cors_headers_so_the_browser_can_read_it(api_settings):
    client, _ = make_client(api_settings, vpm_cors_origins="https://shop.example", vpm_api_key=SecretStr("k"))
    response = client.get("/api/products", headers={"Origin": "https://shop.example"})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == "https://shop.example"


# ---------------------------------------------------------------------------------------------- search


@pytest.fixture
def catalog_client(client):
    """Three products with clearly different photos."""
    for pid, color, category in [("red", "red", "Kitchen"), ("green", "green", "Garden"), ("blue", "blue", "Toys")]:
        assert upload(client, jpeg(color), id=pid, name=f"{color} thing", category=category).status_code == 201
    return client


def test_search_by_file_finds_the_same_photo_first(catalog_client, backend):
    response = catalog_client.post(
        "/api/search", files={"image": ("q.jpg", jpeg("green"), "image/jpeg")}, data={"top_k": "3", "threshold": "-1"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"model", "took_ms", "results"}
    assert body["results"][0]["id"] == "green"
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert len(body["results"]) == 3
    first = body["results"][0]
    assert set(first) >= {"id", "name", "category", "price", "score", "image_url", "thumbnail_url"}
    if backend == "local":
        assert first["image_url"].startswith("http://testserver/api/images/")
        assert catalog_client.get(first["image_url"]).status_code == 200
    else:
        assert "X-Amz-Signature=" in first["image_url"]


def test_search_by_file_with_a_category_filter(catalog_client):
    response = catalog_client.post(
        "/api/search", files={"image": ("q.jpg", jpeg("green"), "image/jpeg")},
        data={"category": "Toys", "threshold": "-1"},
    )
    assert [r["id"] for r in response.json()["results"]] == ["blue"]


def test_search_by_text_returns_results_in_the_same_shape(catalog_client):
    response = catalog_client.post("/api/search", json={"text": "a red thing", "top_k": 2, "threshold": -1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["results"]) == 2
    assert body["model"]
    assert all(-1.0 <= r["score"] <= 1.0 for r in body["results"])


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:5001/api/images/x.jpg", "http://169.254.169.254/latest/meta-data", "file:///etc/passwd"]
)
def test_search_by_url_refuses_internal_addresses(catalog_client, url):
    assert_error(catalog_client.post("/api/search", json={"image_url": url}), 400)


def test_search_by_url_fetches_through_the_matcher_and_ranks(catalog_client, client_and_matcher, monkeypatch):
    _, matcher = client_and_matcher
    fetched = []

    def fetch(url):  # the SSRF-guarded fetch is tested in test_urlfetch; here only the API's use of it
        fetched.append(url)
        return jpeg("blue"), "blue.jpg"

    monkeypatch.setattr(matcher, "fetch_url_image", fetch)
    url = "https://images.example.com/blue.jpg"
    body = catalog_client.post("/api/search", json={"image_url": url, "top_k": 1, "threshold": -1}).json()
    assert fetched == [url]
    assert body["query"] == url
    assert [r["id"] for r in body["results"]] == ["blue"]


def test_text_search_on_an_image_only_model_is_400_saying_why(api_settings):
    matcher = Matcher(api_settings, embedder=ColourMeanEmbedder())
    client = TestClient(create_app(matcher=matcher))
    assert upload(client).status_code == 201
    assert_error(client.post("/api/search", json={"text": "red mug"}), 400, "text search is not available")
    image_search = client.post("/api/search", files={"image": ("q.jpg", jpeg(), "image/jpeg")})
    assert image_search.json()["model"] == "fake-colour"


def test_search_with_a_bad_photo_is_422(catalog_client):
    response = catalog_client.post("/api/search", files={"image": ("q.jpg", b"not a photo", "image/jpeg")})
    assert_error(response, 422, "q.jpg")


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({}, 422, ["image_url", "text"]),
        ({"text": "mug", "image_url": "https://example.com/a.jpg"}, 422, ["exactly one"]),
        ({"text": "mug", "threshold": 25}, 422, ["threshold", "between -1 and 1"]),
        ({"text": "mug", "top_k": 0}, 422, ["top_k"]),
        ({"text": "mug", "topk": 3}, 422, ["topk"]),
        (["mug"], 422, ["JSON object"]),
    ],
)
def test_search_rejects_bad_queries_with_a_clear_message(client, body, status, words):
    assert_error(client.post("/api/search", json=body), status, *words)


def test_search_with_malformed_json_or_an_odd_content_type(client):
    bad_json = client.post("/api/search", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(bad_json, 400, "not valid JSON")
    assert_error(client.post("/api/search", content=b"text=mug", headers={"Content-Type": "text/plain"}), 415)
    assert_error(client.post("/api/search", files={"other": ("q.txt", b"x", "text/plain")}), 422, "'image'")


# ------------------------------------------------------------------------------------------ real server


def _wait_for_health(base: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 90  # a generous wait for start-up, not a speed assertion
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"server exited with {server.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server did not answer /api/health:\n{log_path.read_text()}")


def test_the_guides_curl_commands_work_against_a_real_server(tmp_path, tiny_clip_dir):
    port = free_port()
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg("orange", (120, 90)))
    env = {
        **os.environ,
        "VPM_DATA_DIR": str(tmp_path / "data"),
        "VPM_MODEL": str(tiny_clip_dir),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "vpm", "serve", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_health(f"http://127.0.0.1:{port}", server, log_path)

        health = subprocess.run(
            shlex.split(f"curl http://localhost:{port}/api/health"), capture_output=True, check=True, timeout=60
        )
        report = json.loads(health.stdout)
        assert report["status"] in ("pass", "warn")
        assert report["storage"]["backend"] == "local"

        command = (
            f'curl -X POST http://localhost:{port}/api/upload -F "image=@{photo}" '
            '-F "name=Product Name" -F "category=Electronics"'
        )
        added = subprocess.run(shlex.split(command), capture_output=True, check=True, timeout=120)
        body = json.loads(added.stdout)
        assert body["success"] is True
        product = body["product"]
        assert (product["name"], product["category"]) == ("Product Name", "Electronics")
        assert product["image_url"].startswith(f"http://localhost:{port}/api/images/")

        fetched = subprocess.run(["curl", "-sf", product["image_url"]], capture_output=True, check=True, timeout=60)
        assert fetched.stdout == photo.read_bytes()
        assert (tmp_path / "data" / product["image_key"]).read_bytes() == photo.read_bytes()
    finally:
        stop_process(server, timeout=30)


def test_serve_rejects_a_port_out_of_range(capsys):
    from vpm.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--port", "70000"])
    assert "outside 1-65535" in capsys.readouterr().err
