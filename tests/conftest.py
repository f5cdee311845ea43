"""Shared fixtures: every storage-facing test runs against each backend (local folder, S3 through moto)."""

from __future__ import annotations

import os

import pytest

# No test may reach the network: the hub is unreachable here and a test must never depend on a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Settings read the process environment: keep a developer's real AWS/S3 variables out of the tests.
_OURS = ("S3_", "AWS_", "VPM_", "LOG_LEVEL")

BUCKET = "vpm-test-bucket"
REGION = "us-east-1"


@pytest.fixture(scope="session")
def onnx_cache_dir(tmp_path_factory):
    """One ONNX export cache for the whole session (keyed by model file hashes, so every test may share it)."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path, onnx_cache_dir):
    for name in list(os.environ):
        if name.startswith(_OURS):
            monkeypatch.delenv(name, raising=False)
    # Exports land in the session's cache, never in the developer's ~/.cache; one thread each for torch and
    # ONNX Runtime: the test models are tiny, and the machine is shared.
    monkeypatch.setenv("VPM_ONNX_CACHE", str(onnx_cache_dir))
    monkeypatch.setenv("VPM_THREADS", "1")
    # OCR costs ~0.4 s a photo: the tests of package text switch it on (tests/test_package_text_search.py); the
    # rest of the suite adds thousands of synthetic photos that carry no text.
    monkeypatch.setenv("VPM_PACKAGE_TEXT", "false")
    # Fake credentials: moto accepts any, and boto3 must never find a real profile.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's checkout


@pytest.fixture
def aws():
    """moto's in-process S3 with one private bucket."""
    from moto import mock_aws

    with mock_aws():
        import boto3

        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield


@pytest.fixture(params=["local", "s3"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def settings(backend, tmp_path, request, monkeypatch):
    """Settings for the parametrised backend, with the catalog in a fresh folder or bucket.

    S3 is moto's HTTP server (a bucket per test): the catalog tables are written by LanceDB's own HTTP client,
    which an in-process mock cannot intercept.
    """
    from vpm.core.config import load_settings

    monkeypatch.setenv("VPM_DATA_DIR", str(tmp_path / "data"))
    if backend == "s3":
        endpoint, bucket = request.getfixturevalue("server_bucket")
        monkeypatch.setenv("S3_ENABLED", "true")
        monkeypatch.setenv("S3_BUCKET_NAME", bucket)
        monkeypatch.setenv("S3_ENDPOINT_URL", endpoint)
    return load_settings()


@pytest.fixture
def engine_location(settings):
    """Where the parametrised backend keeps its catalog tables (vpm.backends.engine.Location)."""
    from vpm.backends import engine

    yield engine.location(settings)
    engine.forget()


@pytest.fixture
def storage_for_location(settings):
    """(Storage, prefix) holding the tables of `engine_location`, to look at their files."""
    from vpm.core.storage import make_storage

    return make_storage(settings), settings.metadata_prefix


@pytest.fixture
def storage(settings):
    from vpm.core.storage import make_storage

    return make_storage(settings)


def stop_process(process, timeout: float = 15) -> None:
    """Stop a server started by a test: politely, then firmly."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    """moto's real HTTP S3 server on 127.0.0.1, for end-to-end and multi-threaded tests.

    Its endpoint URL is returned; each test creates its own bucket, so tests never see each other's objects.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


RTT_MS = 40  # a bucket in a nearby region, seen from an app hosted in the same cloud


@pytest.fixture(scope="session")
def slow_moto_server(moto_server):
    """moto's server behind tests/slow_link.py: every request pays RTT_MS of round trip, as a real bucket's do."""
    import subprocess
    import sys

    port = moto_server.rpartition(":")[2]
    link = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "slow_link.py"), port,
                             str(RTT_MS)], stdout=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{int(link.stdout.readline())}"
    finally:
        link.terminate()
        link.wait()


@pytest.fixture
def slow_server_bucket(slow_moto_server, server_bucket):
    """server_bucket's bucket, reached through the slow link: (endpoint_url, bucket_name)."""
    return slow_moto_server, server_bucket[1]


@pytest.fixture
def server_bucket(moto_server, request):
    """A fresh private bucket on the moto HTTP server; returns (endpoint_url, bucket_name)."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    boto3.client("s3", region_name=REGION, endpoint_url=moto_server).create_bucket(Bucket=name)
    return moto_server, name


# ---------------------------------------------------------------------------------- Streamlit pages (AppTest)

APP_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "streamlit_app.py")


def make_product_photo(seed: int, size: int = 96, fmt: str = "PNG") -> bytes:
    """A distinct picture for each seed (colour, stripes and a blob differ), so products look different to a model."""
    import io
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    stripe = rng.randrange(4, 24)
    colour = tuple(rng.randrange(256) for _ in range(3))
    for x in range(0, size, stripe * 2):
        box = [x, 0, x + stripe - 1, size] if seed % 2 else [0, x, size, x + stripe - 1]
        draw.rectangle(box, fill=colour)
    r = rng.randrange(size // 6, size // 3)
    cx, cy = rng.randrange(r, size - r), rng.randrange(r, size - r)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def product_photo():
    """`product_photo(seed, size=96, fmt="PNG") -> bytes`: a distinct generated product picture per seed."""
    return make_product_photo


@pytest.fixture
def app_settings(search_settings):
    """Settings for a Streamlit page run: the parametrised backend (local / S3 via moto) and the tiny CLIP."""
    return search_settings


@pytest.fixture
def seed_catalog(app_settings):
    """`seed_catalog([(name, category, seed[, price]), ...]) -> [Product]`: products added through a Matcher."""
    from vpm.core.matcher import Matcher

    def seed(rows):
        matcher = Matcher(app_settings)
        added = []
        for row in rows:
            name, category, photo_seed, *rest = row
            added.append(
                matcher.add_product(
                    make_product_photo(photo_seed), f"{name}.png", name=name, category=category,
                    price=rest[0] if rest else None,
                )
            )
        return added

    return seed


@pytest.fixture
def app_file() -> str:
    """The app's entry point, streamlit_app.py."""
    return APP_FILE


@pytest.fixture
def open_page(app_file):
    """`open_page("pages/search.py") -> AppTest` run through streamlit_app.py, with the app's caches cleared."""
    from streamlit.testing.v1 import AppTest

    from vpm.faces import webapp

    webapp.clear_caches()

    def open_(page: str = "pages/home.py", timeout: float = 120) -> AppTest:
        at = AppTest.from_file(app_file, default_timeout=timeout).run()
        if page != "pages/home.py":
            at.switch_page(page).run()
        return at

    yield open_
    webapp.clear_caches()


# ------------------------------------------------------------------------------------------------------
# Migration fixtures (tests/test_migrate.py, tests/test_cli_migrate.py, tests/test_page_migration.py)


class LocalCatalogBuilder:
    """A local catalog in VPM_DATA_DIR written through the engine, and the bucket it migrates to (on moto's
    HTTP server, since LanceDB's own client writes the bucket's tables).

    `add` is the fast way: random bytes stand in for images (the migration never decodes them) and random unit
    vectors for a model's; `create` adds a product with real photos through a Matcher that embeds with the
    instant ColourMeanEmbedder, for tests that search the bucket afterwards.
    """

    MODEL = "fake-colour"  # ColourMeanEmbedder's model id, so both ways fill one vector table

    def __init__(self, root, endpoint: str, bucket: str):
        from vpm.backends import engine
        from vpm.core.config import load_settings
        from vpm.core.storage import LocalStorage

        self.root, self.endpoint, self.bucket = root, endpoint, bucket
        self.storage = LocalStorage(root)
        self.settings = load_settings(vpm_data_dir=root, s3_enabled=False)
        self.where = engine.location(self.settings)

    def add(self, n: int, *, start: int = 0, size: int = 2000, image_prefix: str = "images/",
            thumbnail_prefix: str = "thumbnails/", vectors: bool = True):
        import hashlib
        import random

        import numpy as np

        from vpm.backends.lance_catalog import LanceCatalogStore
        from vpm.backends.lance_vectors import LanceVectorIndex
        from vpm.core.catalog import Photo, Product
        from vpm.core.vector_index import PhotoVector

        rng = random.Random(start)
        products = []
        for i in range(start, start + n):
            image, thumb = rng.randbytes(size + i), rng.randbytes(size // 10 + i)
            pid = f"p{i:04d}"
            photo = Photo(key=f"{image_prefix}{pid}.jpg", thumbnail_key=f"{thumbnail_prefix}{pid}.webp",
                          sha256=hashlib.sha256(image).hexdigest(), added_at="2026-01-01T00:00:00+00:00")
            self.storage.put(photo.key, image)
            self.storage.put(photo.thumbnail_key, thumb)
            products.append(Product(id=pid, name=f"Product {i}", category="mugs" if i % 2 else "bags",
                                    photos=[photo], created_at="2026-01-01T00:00:00+00:00"))
        assert LanceCatalogStore(self.where).add(products) == []
        if vectors:
            values = np.random.default_rng(start).normal(size=(n, 3)).astype(np.float32)
            values /= np.linalg.norm(values, axis=1, keepdims=True)
            LanceVectorIndex(self.where, self.MODEL, 3).upsert([
                PhotoVector(p.photos[0].key, p.id, p.photos[0].sha256, p.category, v) for p, v in zip(products, values, strict=False)
            ])
        return products

    def create(self, name: str, seeds: list[int], *, category: str = "mugs", product_id: str | None = None):
        """A product with one real photo per seed (make_product_photo), its vectors made by ColourMeanEmbedder."""
        from vpm.core.matcher import Matcher

        from fakes import ColourMeanEmbedder

        matcher = Matcher(self.settings, storage=self.storage, embedder=ColourMeanEmbedder())
        images = [(make_product_photo(seed), f"{name}-{seed}.png") for seed in seeds]
        return matcher.create_product(images, name=name, category=category, product_id=product_id)

    # the bucket

    def s3(self):
        import boto3

        return boto3.client("s3", region_name=REGION, endpoint_url=self.endpoint)

    def bucket_objects(self) -> dict[str, str]:
        """Every object in the bucket with its ETag: proves that nothing (LanceDB included) wrote there."""
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}

    def bucket_keys(self) -> set[str]:
        return set(self.bucket_objects())

    def bucket_settings(self):
        """The settings the app runs with after the migration (S3_ENABLED=true)."""
        from vpm.core.config import load_settings

        return load_settings(s3_enabled=True, s3_bucket_name=self.bucket, s3_endpoint_url=self.endpoint)

    def bucket_catalog(self):
        """The bucket's products table, opened afresh (another process may have written it)."""
        from vpm.backends import engine
        from vpm.backends.lance_catalog import LanceCatalogStore

        where = engine.location(self.bucket_settings())
        engine.forget(where)
        return LanceCatalogStore(where, exists=True)

    def bucket_products(self) -> dict:
        return {p.id: p for batch in self.bucket_catalog().iter_batches() for p in batch}

    def bucket_vectors(self, model_id: str = MODEL):
        from vpm.backends import engine
        from vpm.backends.lance_vectors import LanceVectorIndex

        where = engine.location(self.bucket_settings())
        engine.forget(where)
        return LanceVectorIndex(where, model_id, None, exists=True)

    def snapshot(self) -> dict:
        """Every file under the folder (bookkeeping included) with its bytes and mtime: proves 'untouched'."""
        return {p.relative_to(self.root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
                for p in sorted(self.root.rglob("*")) if p.is_file()}


@pytest.fixture
def local_catalog(tmp_path, monkeypatch, server_bucket):
    """An empty local catalog in VPM_DATA_DIR (S3_ENABLED off), and S3_BUCKET_NAME / S3_ENDPOINT_URL naming a
    fresh bucket on moto's HTTP server: the migration's starting point."""
    from vpm.backends import engine

    endpoint, bucket = server_bucket
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("VPM_DATA_DIR", str(root))
    monkeypatch.setenv("S3_BUCKET_NAME", bucket)
    monkeypatch.setenv("S3_ENDPOINT_URL", endpoint)
    yield LocalCatalogBuilder(root, endpoint, bucket)
    engine.forget()


# ------------------------------------------------------------------------------------------------------
# Search fixtures (tests/test_matcher.py, test_index.py, test_importer.py, test_cli.py)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIP folder (text + image), built once per session; VPM_MODEL can point at it.

    Also pins torch to one thread: the tiny model gains nothing from more, and on a busy 2-core machine
    OpenMP's spinning threads made each tiny embedding ~20x slower (230 ms instead of 10 ms).
    """
    import torch

    from tiny_clip import build_tiny_clip

    torch.set_num_threads(1)
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture
def search_settings(settings, tiny_clip_dir, monkeypatch):
    """`settings` (local or S3) with VPM_MODEL = the tiny CLIP on cpu, also in the environment for CLI runs."""
    from vpm.core.config import load_settings

    monkeypatch.setenv("VPM_MODEL", str(tiny_clip_dir))
    monkeypatch.setenv("VPM_DEVICE", "cpu")
    return load_settings()


@pytest.fixture
def cli(search_settings, capsys):
    """`cli(*args) -> (exit code, stdout, stderr)`: `python -m vpm` in this process, on the search catalog."""
    from vpm.faces.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def tiny_clip(search_settings):
    """The tiny CLIP embedder (loaded once per process by vpm.models.embeddings)."""
    from vpm.models.embeddings import load_embedder

    return load_embedder(search_settings.vpm_model, search_settings.vpm_device)


@pytest.fixture
def matcher(search_settings):
    """A Matcher over the parametrised backend that embeds with the tiny CLIP."""
    from vpm.core.matcher import Matcher

    return Matcher(search_settings)


class CountingEmbedder:
    """Wraps an embedder, counting the images and texts it embeds; optionally posing as another model.

    With `model_id` and `permute`, it is a different model of the same dimension (its vectors are the inner
    model's with the components rolled), which is exactly what must never be mixed with the original's.
    """

    def __init__(self, inner, model_id: str | None = None, permute: int = 0):
        self.inner = inner
        self.model_id = model_id or inner.model_id
        self.display_name = model_id or inner.display_name
        self.dim = inner.dim
        self.supports_text = inner.supports_text
        self.thresholds = inner.thresholds
        self.fallback_reason = inner.fallback_reason
        self.device = inner.device
        self.permute = permute
        self.image_calls: list[int] = []  # images per embed_images call
        self.text_calls: list[int] = []

    @property
    def images_embedded(self) -> int:
        return sum(self.image_calls)

    def _shift(self, vectors):
        import numpy as np

        return np.roll(vectors, self.permute, axis=1) if self.permute else vectors

    def embed_images(self, images, batch_size=32, progress=None):
        self.image_calls.append(len(images))
        return self._shift(self.inner.embed_images(images, batch_size=batch_size, progress=progress))

    def embed_texts(self, texts):
        self.text_calls.append(len(texts))
        return self._shift(self.inner.embed_texts(texts))


@pytest.fixture
def counting_embedder(tiny_clip):
    """`counting_embedder(model_id=None, permute=0) -> CountingEmbedder` around the tiny CLIP."""

    def make(model_id: str | None = None, permute: int = 0) -> CountingEmbedder:
        return CountingEmbedder(tiny_clip, model_id, permute)

    return make


# ------------------------------------------------------------------------------------------------------
# The sample catalog (vpm.core.sample): a small one for page tests, so loading it takes a second


@pytest.fixture
def small_sample(tmp_path, monkeypatch):
    """A three-photo sample (two products, one with two photos) in place of the shipped one."""
    from vpm.core import sample

    folder = tmp_path / "small-sample"
    (folder / "photos").mkdir(parents=True)
    rows = [("photos/mug-1.png", "mug", "Red mug", "Kitchen", 11), ("photos/mug-2.png", "mug", "Red mug", "Kitchen", 12),
            ("photos/lamp.png", "lamp", "Desk lamp", "Lighting", 13)]
    lines = ["image,id,name,category,licence"]
    for image, pid, name, category, seed in rows:
        (folder / image).write_bytes(make_product_photo(seed))
        lines.append(f"{image},{pid},{name},{category},MIT")
    (folder / "products.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(sample, "SAMPLE_DIR", folder)
    return folder


def migrate_killed_after(uploads: int, *options: str) -> str:
    """A `python -c` script: `vpm migrate --force [options]` that SIGKILLs itself once `uploads` files are up (no
    cleanup, no finally: as if the machine lost power)."""
    return f"""
import os, signal, sys
import vpm.faces.cli_migrate as cli_migrate

update = cli_migrate.ProgressBar.files_and_bytes

def update_then_die(self, done_files, total_files, done_bytes, total_bytes):
    update(self, done_files, total_files, done_bytes, total_bytes)
    if self.byte_sizes and done_files >= {uploads}:
        os.kill(os.getpid(), signal.SIGKILL)

cli_migrate.ProgressBar.files_and_bytes = update_then_die
from vpm.faces.cli import main
sys.exit(main(["migrate", "--force", *{list(options)!r}]))
"""


# ------------------------------------------------------------------------------------------------------
# Background table maintenance (vpm/backends/maintenance.py)


@pytest.fixture(autouse=True)
def _maintenance_idle_after():
    """No background maintenance pass started by one test runs on into the next (whose files it could race)."""
    yield
    from vpm.backends import maintenance

    assert maintenance.wait_idle(120), "a background maintenance pass still ran two minutes after the test"


@pytest.fixture
def maintenance_idle():
    """Request it after the fixtures that write, before a test damages table files on purpose: every background
    maintenance pass they started is over by then, so none races the damage."""
    from vpm.backends import maintenance

    assert maintenance.wait_idle(120), "a background maintenance pass still ran after two minutes"
