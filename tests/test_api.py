"""The REST API (vpm.faces.api) on both backends: what a team calling it from its own service sees."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from vpm.core.catalog import Photo, Product
from vpm.core.config import load_settings
from vpm.core.matcher import Matcher
from vpm.faces.api import MAX_PHOTOS_PER_REQUEST, MULTIPART_OVERHEAD_BYTES, create_app

from conftest import free_port, make_product_photo, stop_process
from fakes import ColourMeanEmbedder

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def jpeg(color: str = "red", size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def stored_keys(matcher: Matcher) -> set[str]:
    return {o.key for o in matcher.storage.iter_objects("")}


def photo_files(matcher: Matcher) -> set[str]:
    """The photos and thumbnails in storage (a first read creates the empty catalog table: not a photo)."""
    settings = matcher.settings
    return {k for k in stored_keys(matcher) if k.startswith((settings.s3_image_prefix, settings.s3_thumbnail_prefix))}


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


def png(seed: int) -> bytes:
    """A distinct product photo per seed."""
    return make_product_photo(seed)


def image_parts(photos: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """One multipart `image` part per photo, as curl -F "image=@a.png" -F "image=@b.png" sends them."""
    return [("image", (f"photo{i}.png", data, "image/png")) for i, data in enumerate(photos)]


def upload_photos(client: TestClient, photos: list[bytes], **fields):
    form = {"name": "Red Mug", "category": "Kitchen", **fields}
    return client.post("/api/upload", files=image_parts(photos), data=form)


def add_photos(client: TestClient, product_id: str, photos: list[bytes], **fields):
    return client.post(f"/api/products/{product_id}/images", files=image_parts(photos), data=fields)


def search_with(client: TestClient, photo: bytes, **fields) -> list[dict]:
    form = {"top_k": "10", "threshold": "-1", **fields}
    response = client.post("/api/search", files={"image": ("query.png", photo, "image/png")}, data=form)
    assert response.status_code == 200, response.text
    return response.json()["results"]


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
    assert body["storage"]["bucket"] == (matcher.settings.s3_bucket_name if backend == "s3" else None)
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


def test_a_routine_health_probe_reads_counts_and_never_walks_the_catalog(client_and_matcher, monkeypatch):
    client, matcher = client_and_matcher
    assert upload_photos(client, [png(1), png(2)]).status_code == 201

    def walk():
        raise AssertionError("a routine probe walked the catalog")

    monkeypatch.setattr(matcher, "index_status", walk)
    body = client.get("/api/health").json()
    assert body["status"] in ("pass", "warn"), body
    assert body["index"] == {"model_id": matcher.embedder.model_id, "products": 1, "vectors": 2, "exact": False}
    assert {c["name"] for c in body["checks"]} >= {"storage reachable", "catalog readable", "model"}


def test_health_can_be_asked_to_load_and_check_the_model(client_and_matcher):
    client, matcher = client_and_matcher
    body = client.get("/api/health", params={"load_model": "true"}).json()
    assert matcher.model_loaded is True
    checks = {c["name"]: c for c in body["checks"]}
    assert checks["model"]["status"] == "pass"
    assert checks["index"]["status"] == "pass"
    assert body["index"]["products"] == 0
    assert body["index"]["exact"] is True


def test_health_fails_on_a_photo_file_that_is_gone_with_the_storage_browsers_figures(client_and_matcher):
    client, matcher = client_and_matcher
    product = upload(client).json()["product"]
    matcher.storage.delete(product["thumbnail_key"])

    response = client.get("/api/health")

    assert response.status_code == 503
    body = response.json()
    files = next(c for c in body["checks"] if c["name"] == "catalog files")
    assert body["status"] == "fail" and files["status"] == "fail"
    assert f"1 file that products point at is missing: {product['thumbnail_key']} (thumbnail of " in files["detail"]
    assert "restore the missing files" in files["fix"]


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
        bucket = matcher.settings.s3_bucket_name
        assert f"/{bucket}/" in product["image_url"] or f"//{bucket}." in product["image_url"]


def test_upload_with_a_chosen_id_keeps_it(client):
    response = upload(client, id="sku-42")
    assert response.status_code == 201
    assert response.json()["product"]["id"] == "sku-42"
    assert client.get("/api/products/sku-42").json()["product"]["name"] == "Red Mug"


def test_upload_on_s3_with_a_cdn_returns_the_cdn_url(server_bucket, tmp_path, tiny_clip_dir):
    endpoint, bucket = server_bucket
    settings = load_settings(
        s3_enabled=True, s3_bucket_name=bucket, s3_endpoint_url=endpoint, s3_cdn_url="https://cdn.example.com/",
        vpm_data_dir=tmp_path / "unused", vpm_model=str(tiny_clip_dir), vpm_device="cpu",
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
    assert matcher.count_products() == 0


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
    assert [p.name for p in matcher.page_products().items] == ["Green Mug"]


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


def _run_asgi(app, headers: list[tuple[bytes, bytes]], chunks, path: str = "/api/upload"):
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
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
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


def test_products_are_listed_most_recent_first_a_page_at_a_time(client):
    for i, category in enumerate(["Kitchen", "Kitchen", "Garden", "kitchen", "Toys"]):
        assert upload(client, jpeg(("red", "green", "blue", "white", "black")[i]), id=f"p{i}",
                      category=category).status_code == 201
    page = client.get("/api/products", params={"limit": 2, "offset": 1}).json()
    assert page["success"] is True
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)
    assert [p["id"] for p in page["items"]] == ["p3", "p2"]
    assert all(p["image_url"] and len(p["images"]) == 1 for p in page["items"])
    kitchen = client.get("/api/products", params={"category": "KITCHEN"}).json()
    assert kitchen["total"] == 3
    assert {p["id"] for p in kitchen["items"]} == {"p0", "p1", "p3"}
    assert client.get("/api/products", params={"offset": 10}).json()["items"] == []
    assert_error(client.get("/api/products", params={"limit": 0}), 422, "limit")
    assert_error(client.get("/api/products", params={"limit": 1001}), 422, "limit")
    assert_error(client.get("/api/products", params={"offset": -1}), 422, "offset")


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

    def explode(**options):
        raise RuntimeError("secret internals at /srv/private/path")

    monkeypatch.setattr(matcher, "page_products", explode)
    with caplog.at_level(logging.ERROR, logger="vpm.faces.api"):
        response = client.get("/api/products")
    assert_error(response, 500, "internal server error")
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert any("GET /api/products" in r.getMessage() for r in caplog.records)


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/health", "/api/upload", "/api/search", "/api/products", "/api/categories",
            "/api/products/{product_id}/images", "/api/products/{product_id}/images/{key}"} <= set(paths)


# ------------------------------------------------------------------------------------- several photos


def test_an_upload_with_three_photos_makes_one_product_with_three_images(client_and_matcher, backend):
    client, matcher = client_and_matcher
    photos = [png(1), png(2), png(3)]
    response = upload_photos(client, photos, id="mug")
    assert response.status_code == 201, response.text
    product = response.json()["product"]
    images = product["images"]
    assert [i["sha256"] for i in images] == [hashlib.sha256(p).hexdigest() for p in photos]
    assert all(set(i) == {"key", "url", "thumbnail_url", "sha256", "width", "height"} for i in images)
    assert all((i["width"], i["height"]) == (96, 96) for i in images)
    assert (product["image_key"], product["image_url"]) == (images[0]["key"], images[0]["url"])
    assert product["thumbnail_url"] == images[0]["thumbnail_url"]
    assert client.get("/api/products/mug").json()["product"]["images"] == images
    assert client.get("/api/products").json()["total"] == 1
    assert {i["key"] for i in images} <= stored_keys(matcher)
    if backend == "local":
        for image, photo in zip(images, photos, strict=False):
            assert client.get(image["url"]).content == photo
            assert client.get(image["thumbnail_url"]).headers["content-type"] == "image/webp"


def test_too_many_photos_in_one_request_are_422_and_store_nothing(client_and_matcher):
    client, matcher = client_and_matcher
    before = stored_keys(matcher)
    response = upload_photos(client, [png(i) for i in range(MAX_PHOTOS_PER_REQUEST + 1)])
    assert_error(response, 422, f"at most {MAX_PHOTOS_PER_REQUEST} photos", "/images")
    assert stored_keys(matcher) == before


def test_one_bad_photo_among_several_stores_nothing_and_names_it(client_and_matcher):
    client, matcher = client_and_matcher
    before = stored_keys(matcher)
    response = upload_photos(client, [png(1), b"not a photo", png(2)])
    assert_error(response, 422, "photo1.png")
    assert stored_keys(matcher) == before
    assert matcher.count_products() == 0


def test_added_photos_are_searchable_and_the_product_is_listed_once(client):
    assert upload_photos(client, [png(1)], id="mug", name="Mug").status_code == 201
    assert upload_photos(client, [png(2)], id="pan", name="Pan").status_code == 201
    response = add_photos(client, "mug", [png(3), png(4)])
    assert response.status_code == 201, response.text
    body = response.json()
    product = body["product"]
    assert [i["key"] for i in product["images"]][1:] == body["added"]
    assert len(body["added"]) == 2

    results = search_with(client, png(3))
    ids = [r["id"] for r in results]
    assert len(ids) == len(set(ids)) == 2  # two products, each once, though mug has three photos
    assert results[0]["id"] == "mug"
    assert results[0]["matched_image"] == body["added"][0]
    assert results[0]["photo_count"] == 3
    assert results[0]["signals"]["image"] == pytest.approx(1.0, abs=1e-3)


def test_adding_photos_to_an_unknown_product_is_404_and_stores_nothing(client_and_matcher):
    client, matcher = client_and_matcher
    assert_error(add_photos(client, "nope", [png(1)]), 404, "nope")
    assert photo_files(matcher) == set()
    assert_error(client.post("/api/products/nope/images", data={"x": "y"}), 422, "'image'")


def test_deleting_a_photo_removes_its_files_and_it_no_longer_matches(client_and_matcher, backend):
    client, matcher = client_and_matcher
    product = upload_photos(client, [png(1), png(2)], id="mug").json()["product"]
    kept, gone = product["images"]
    gone_thumbnail = matcher.get_product("mug").photo(gone["key"]).thumbnail_key
    assert search_with(client, png(2))[0]["matched_image"] == gone["key"]

    response = client.delete(f"/api/products/mug/images/{gone['key']}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["removed"] == gone["key"]
    assert [i["key"] for i in body["product"]["images"]] == [kept["key"]]
    assert not {gone["key"], gone_thumbnail} & stored_keys(matcher)
    assert kept["key"] in stored_keys(matcher)
    if backend == "local":
        assert_error(client.get(gone["url"]), 404)
    results = search_with(client, png(2))
    assert [r["matched_image"] for r in results] == [kept["key"]]


def test_removing_the_last_photo_is_422_and_changes_nothing(client_and_matcher):
    client, matcher = client_and_matcher
    product = upload_photos(client, [png(1)], id="mug").json()["product"]
    before = stored_keys(matcher)
    response = client.delete(f"/api/products/mug/images/{product['image_key']}")
    assert_error(response, 422, "only photo", "mug")
    assert stored_keys(matcher) == before
    # Keys, not whole entries: on S3 an entry's presigned URL is signed anew (a second later, another signature).
    assert [i["key"] for i in client.get("/api/products/mug").json()["product"]["images"]] == [
        i["key"] for i in product["images"]]


def test_removing_an_unknown_photo_or_from_an_unknown_product_is_404(client_and_matcher):
    client, matcher = client_and_matcher
    product = upload_photos(client, [png(1), png(2)], id="mug").json()["product"]
    before = stored_keys(matcher)
    assert_error(client.delete("/api/products/mug/images/images/nope.png"), 404, "images/nope.png")
    assert_error(client.delete(f"/api/products/nope/images/{product['image_key']}"), 404, "nope")
    assert_error(client.delete("/api/products/mug/images/metadata/products.lance"), 404)
    assert stored_keys(matcher) == before


def test_a_photo_already_in_the_catalog_is_409_naming_its_product(client_and_matcher):
    client, matcher = client_and_matcher
    photo = png(1)
    assert upload_photos(client, [photo], id="p1", name="Red Mug").status_code == 201
    before = stored_keys(matcher)
    assert_error(upload_photos(client, [png(2), photo], id="p2", name="Copy"), 409, "Red Mug", "p1",
                 "allow_duplicate")
    assert_error(add_photos(client, "p1", [photo]), 409, "Red Mug", "allow_duplicate")
    assert_error(upload_photos(client, [png(3), png(3)], id="p3"), 409, "same photo")
    assert stored_keys(matcher) == before
    assert client.get("/api/products").json()["total"] == 1

    copy = upload_photos(client, [photo], id="p2", name="Copy", allow_duplicate="true")
    assert copy.status_code == 201, copy.text
    again = add_photos(client, "p1", [photo], allow_duplicate="true")
    assert again.status_code == 201, again.text
    shas = {i["sha256"] for i in copy.json()["product"]["images"] + again.json()["product"]["images"]}
    assert shas == {hashlib.sha256(photo).hexdigest()}
    assert_error(upload_photos(client, [png(4)], allow_duplicate="maybe"), 422, "allow_duplicate")


# --------------------------------------------------------------------------------- pages and filters


def seed_products(matcher: Matcher, rows: list[tuple[str, str, str]]) -> None:
    """Products straight into the catalog table (the listing never reads their files, so none are written)."""
    products = [
        Product(id=pid, name=name, category=category, photos=[Photo(
            key=f"images/{pid}.png", thumbnail_key=f"thumbnails/{pid}.webp",
            sha256=hashlib.sha256(pid.encode()).hexdigest(),
        )])
        for pid, name, category in rows
    ]
    assert matcher.catalog.add(products) == []


def test_pages_of_50_walk_120_products_once_each(client_and_matcher):
    client, matcher = client_and_matcher
    seed_products(matcher, [(f"p{i:03d}", f"Product {i}", "Kitchen" if i % 3 else "Toys") for i in range(120)])
    seen: list[str] = []
    sizes = []
    for offset in range(0, 200, 50):
        page = client.get("/api/products", params={"limit": 50, "offset": offset}).json()
        assert (page["total"], page["limit"], page["offset"]) == (120, 50, offset)
        assert all(len(item["images"]) == 1 and item["image_url"] for item in page["items"])
        sizes.append(len(page["items"]))
        seen += [item["id"] for item in page["items"]]
    assert sizes == [50, 50, 20, 0]
    assert len(seen) == len(set(seen)) == 120
    toys = client.get("/api/products", params={"category": "toys", "limit": 50, "offset": 20}).json()
    assert (toys["total"], len(toys["items"])) == (40, 20)


def test_products_filter_by_name_and_by_several_categories(client_and_matcher):
    client, matcher = client_and_matcher
    seed_products(matcher, [
        ("red", "Red Mug", "Kitchen"), ("blue", "blue mug", "Toys"), ("pot", "Teapot", "Kitchen"),
        ("obrien", "O'Brien's Mug", "Garden"), ("rake", "Rake", "Garden"),
    ])

    def ids(**params) -> set[str]:
        response = client.get("/api/products", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == len(body["items"])
        return {item["id"] for item in body["items"]}

    assert ids(q="MUG") == {"red", "blue", "obrien"}
    assert ids(q="o'brien") == {"obrien"}
    assert ids(category=["kitchen", "TOYS"]) == {"red", "blue", "pot"}
    assert ids(q="mug", category=["Garden"]) == {"obrien"}
    assert ids(q="  ") == ids() == {"red", "blue", "pot", "obrien", "rake"}
    assert ids(q="x') OR 1=1 --") == set()  # a filter value, never SQL
    assert ids(category=["Nothing"]) == set()
    assert_error(client.get("/api/products", params={"q": "m" * 201}), 422, "q")


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
        ("/api/images/metadata/products.lance/_versions/1.manifest", 404),
        ("/api/images/images/products.lance/data/x.png", 404),
        ("/api/images/images/does-not-exist.jpg", 404),
    ],
)
def test_image_serving_refuses_traversal_and_anything_but_catalog_images(client, path, status):
    upload(client, id="p1")  # so the catalog tables exist and would leak if served
    response = client.get(path)
    body = assert_error(response, status)
    assert '"products"' not in response.text and body["error"]


def test_no_file_of_the_catalog_tables_is_ever_served(client_and_matcher):
    client, matcher = client_and_matcher
    upload(client, id="p1")
    metadata = matcher.settings.metadata_prefix
    table_files = [o.key for o in matcher.storage.iter_objects(metadata)]
    assert any(".lance/" in key for key in table_files)
    for key in table_files:
        assert_error(client.get(f"/api/images/{key}"), 404)
    # Not even a file with an image's extension that someone put beside the tables.
    matcher.storage.put(f"{metadata}products.lance/peek.png", make_product_photo(1), "image/png")
    assert_error(client.get(f"/api/images/{metadata}products.lance/peek.png"), 404)


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
                         ("DELETE", "/api/products/x"), ("GET", "/api/images/images/x.jpg"),
                         ("DELETE", "/api/products/x/images/images/x.jpg")]:
        assert_error(client.request(method, path, headers=headers), 401, "X-API-Key")
    added = client.post("/api/products/x/images", headers=headers, files={"image": ("p.jpg", jpeg(), "image/jpeg")})
    assert_error(added, 401, "API key")
    response = client.post(
        "/api/upload", headers=headers, files={"image": ("p.jpg", jpeg(), "image/jpeg")},
        data={"name": "Mug", "category": "Kitchen"},
    )
    assert_error(response, 401, "API key")
    assert_error(client.post("/api/search", headers=headers, json={"text": "mug"}), 401)
    assert stored_keys(matcher) == before
    assert client.get("/api/health", headers=headers).status_code == 200


@pytest.mark.parametrize("path", ["/api/upload", "/api/products/p1/images"])
def test_an_upload_without_the_key_is_refused_before_its_body_is_read(api_settings, path):
    settings = api_settings.model_copy(update={"vpm_api_key": SecretStr("k")})
    app = create_app(settings, Matcher(settings))
    headers = [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"65536")]
    status, body, pulled = _run_asgi(app, headers, iter([b"x" * 65536]), path=path)
    assert status == 401
    assert "X-API-Key" in body["error"]
    assert pulled == 0


def test_the_docs_show_which_routes_need_the_key(client):
    document = client.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    paths = document["paths"]
    assert "security" not in paths["/api/health"]["get"]
    for path, method in [("/api/products", "get"), ("/api/upload", "post"), ("/api/search", "post"),
                         ("/api/products/{product_id}/images", "post"), ("/api/images/{key}", "get")]:
        assert paths[path][method]["security"] == [{"APIKeyHeader": []}], path


def test_with_the_right_api_key_requests_succeed(keyed_client):
    client, _ = keyed_client
    key = {"X-API-Key": "s3cret-key"}
    response = client.post(
        "/api/upload", headers=key, files={"image": ("p.jpg", jpeg(), "image/jpeg")},
        data={"name": "Mug", "category": "Kitchen"},
    )
    assert response.status_code == 201
    assert client.get("/api/products", headers=key).json()["total"] == 1


def test_with_a_key_set_health_without_it_says_healthy_or_not_and_nothing_more(keyed_client, backend):
    client, matcher = keyed_client
    body = client.get("/api/health").json()
    assert body == {"status": body["status"], "healthy": True}
    text = client.get("/api/health", headers={"X-API-Key": "wrong"}).text
    assert str(matcher.settings.vpm_data_dir) not in text and "bucket" not in text and "model" not in text
    full = client.get("/api/health", headers={"X-API-Key": "s3cret-key"}).json()
    assert {"storage", "model", "checks", "products"} <= set(full)


def test_with_a_key_set_only_a_caller_with_it_can_make_health_load_the_model(keyed_client):
    client, matcher = keyed_client
    for headers in ({}, {"X-API-Key": "wrong"}):
        assert_error(client.get("/api/health", params={"load_model": "true"}, headers=headers), 401, "X-API-Key")
    assert matcher.model_loaded is False
    answer = client.get("/api/health", params={"load_model": "true"}, headers={"X-API-Key": "s3cret-key"})
    assert answer.status_code == 200 and matcher.model_loaded is True


def test_the_root_points_to_the_docs_with_or_without_a_key(keyed_client):
    client, _ = keyed_client
    response = client.get("/")
    assert response.status_code == 200
    assert response.json()["docs"] == "/docs"


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
    assert body["results"][0]["signals"]["image"] == pytest.approx(1.0, abs=1e-3)
    assert len(body["results"]) == 3
    first = body["results"][0]
    assert set(first) >= {"id", "name", "category", "price", "score", "matched_image", "image_url", "thumbnail_url"}
    green = catalog_client.get("/api/products/green").json()["product"]
    assert first["matched_image"] == green["image_key"]
    if backend == "local":
        assert first["image_url"] == f"http://testserver/api/images/{green['image_key']}"
        assert first["thumbnail_url"] == f"http://testserver/api/images/{green['thumbnail_key']}"
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


def test_text_search_on_an_image_only_model_is_answered_by_words(api_settings):
    matcher = Matcher(api_settings, embedder=ColourMeanEmbedder())
    client = TestClient(create_app(matcher=matcher))
    assert upload(client).status_code == 201
    words = client.post("/api/search", json={"text": "red mugs"})
    assert words.status_code == 200, words.text
    body = words.json()
    assert body["answered_by"] == "words in names and package text"
    assert [r["name"] for r in body["results"]] == ["Red Mug"]
    assert "name" in body["results"][0]["matched_fields"]
    image_search = client.post("/api/search", files={"image": ("q.jpg", jpeg(), "image/jpeg")})
    assert image_search.json()["model"] == "fake-colour"


def test_search_with_a_bad_photo_is_422(catalog_client):
    response = catalog_client.post("/api/search", files={"image": ("q.jpg", b"not a photo", "image/jpeg")})
    assert_error(response, 422, "q.jpg")


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({}, 422, ["image_url", "text"]),
        ({"text": "mug", "text_weight": 0.5}, 422, ["text_weight", "beside a photo"]),
        ({"text": "mug", "threshold": 25}, 422, ["threshold", "between 0 and 1"]),
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


class RunningServer:
    """A `python -m vpm serve` subprocess on a loopback port."""

    def __init__(self, workdir: Path, env: dict[str, str]):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vpm", "serve", "--port", str(self.port)],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )

    def wait_until_healthy(self) -> None:
        _wait_for_health(self.base, self.process, self.log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process, timeout=30)


def server_env(tmp_path: Path, tiny_clip_dir: Path, **variables: str) -> dict[str, str]:
    return {
        **os.environ,
        "VPM_DATA_DIR": str(tmp_path / "data"),
        "VPM_MODEL": str(tiny_clip_dir),
        "VPM_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # two servers and the tests share two cores
        "PYTHONPATH": str(REPO_ROOT),
        **variables,
    }


def test_the_guides_curl_commands_work_against_a_real_server(tmp_path, tiny_clip_dir):
    photo, back = tmp_path / "photo.jpg", tmp_path / "back.jpg"
    photo.write_bytes(jpeg("orange", (120, 90)))
    back.write_bytes(jpeg("purple", (120, 90)))
    server = RunningServer(tmp_path, server_env(tmp_path, tiny_clip_dir))
    port = server.port

    def curl(command: str) -> dict:
        done = subprocess.run(shlex.split(command), capture_output=True, check=True, timeout=120)
        return json.loads(done.stdout)

    try:
        server.wait_until_healthy()
        report = curl(f"curl http://localhost:{port}/api/health")
        assert report["status"] in ("pass", "warn")
        assert report["storage"]["backend"] == "local"

        body = curl(
            f'curl -X POST http://localhost:{port}/api/upload -F "image=@{photo}" '
            '-F "name=Product Name" -F "category=Electronics"'
        )
        assert body["success"] is True
        product = body["product"]
        assert (product["name"], product["category"]) == ("Product Name", "Electronics")
        assert product["image_url"].startswith(f"http://localhost:{port}/api/images/")

        fetched = subprocess.run(["curl", "-sf", product["image_url"]], capture_output=True, check=True, timeout=60)
        assert fetched.stdout == photo.read_bytes()
        assert (tmp_path / "data" / product["image_key"]).read_bytes() == photo.read_bytes()

        added = curl(f'curl -X POST http://localhost:{port}/api/products/{product["id"]}/images -F "image=@{back}"')
        assert len(added["product"]["images"]) == 2
        page = curl(f'curl "http://localhost:{port}/api/products?limit=50&offset=0&q=product&category=Electronics"')
        assert [item["id"] for item in page["items"]] == [product["id"]]
        photo_url = f"http://localhost:{port}/api/products/{product['id']}/images/{added['added'][0]}"
        removed = curl(f"curl -X DELETE {photo_url}")
        assert len(removed["product"]["images"]) == 1
    finally:
        server.stop()


# --------------------------------------------------------------------------- two servers, one bucket

VISIBLE_WITHIN_S = 2.0  # the bound: an upload through one server is searchable through another


@pytest.fixture
def two_servers(server_bucket, tmp_path, tiny_clip_dir):
    """Two `vpm serve` processes on one bucket of moto's HTTP server, as two hosts behind a load balancer."""
    endpoint, bucket = server_bucket
    env = server_env(tmp_path, tiny_clip_dir, S3_ENABLED="true", S3_BUCKET_NAME=bucket, S3_ENDPOINT_URL=endpoint)
    servers = [RunningServer(tmp_path / name, env) for name in ("a", "b")]
    try:
        for server in servers:
            server.wait_until_healthy()
        yield servers
    finally:
        for server in servers:
            server.stop()


def post_product(base: str, photo: bytes, product_id: str) -> httpx.Response:
    return httpx.post(
        f"{base}/api/upload", files={"image": (f"{product_id}.png", photo, "image/png")},
        data={"name": f"Product {product_id}", "category": "Shared", "id": product_id}, timeout=120,
    )


def found_by_search(base: str, photo: bytes, product_id: str) -> bool:
    response = httpx.post(f"{base}/api/search", files={"image": ("q.png", photo, "image/png")},
                          data={"top_k": "5", "threshold": "-1"}, timeout=60)
    assert response.status_code == 200, response.text
    return any(r["id"] == product_id for r in response.json()["results"])


def listed_ids(base: str) -> list[str]:
    response = httpx.get(f"{base}/api/products", params={"limit": 100}, timeout=60)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def poll(check, within_s: float, every_s: float = 0.1) -> bool:
    """True as soon as `check()` is; False if it still is not after `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every_s)


def test_an_upload_through_one_server_is_searchable_through_the_other_within_2_s(two_servers):
    a, b = two_servers
    # B has answered a search before (model loaded, tables open), as a server in service has.
    assert not found_by_search(b.base, png(1), "shared-1")
    response = post_product(a.base, png(1), "shared-1")
    assert response.status_code == 201, response.text
    uploaded_at = time.monotonic()
    assert poll(lambda: found_by_search(b.base, png(1), "shared-1"), VISIBLE_WITHIN_S), (
        f"not searchable through B {time.monotonic() - uploaded_at:.1f} s after the upload through A:\n"
        + b.log()[-3000:]
    )


def test_concurrent_uploads_split_over_two_servers_all_land(two_servers):
    a, b = two_servers
    ids = [f"p{i:02d}" for i in range(20)]
    with ThreadPoolExecutor(10) as pool:  # ten in flight at a time, alternating between the servers
        responses = list(pool.map(lambda i: post_product((a, b)[i % 2].base, png(100 + i), ids[i]), range(20)))
    assert [r.status_code for r in responses] == [201] * 20, [r.text for r in responses if r.status_code != 201]
    for server in (a, b):
        assert poll(lambda server=server: len(listed_ids(server.base)) == 20, VISIBLE_WITHIN_S), server.log()[-3000:]
        listed = listed_ids(server.base)
        assert sorted(listed) == ids
        assert httpx.get(f"{server.base}/api/products", timeout=60).json()["total"] == 20


def test_serve_rejects_a_port_out_of_range(capsys):
    from vpm.faces.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--port", "70000"])
    assert "outside 1-65535" in capsys.readouterr().err
