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


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(_OURS):
            monkeypatch.delenv(name, raising=False)
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
    """Settings for the parametrised backend, with the catalog in a fresh folder or bucket."""
    from vpm.config import load_settings

    monkeypatch.setenv("VPM_DATA_DIR", str(tmp_path / "data"))
    if backend == "s3":
        request.getfixturevalue("aws")
        monkeypatch.setenv("S3_ENABLED", "true")
        monkeypatch.setenv("S3_BUCKET_NAME", BUCKET)
    return load_settings()


@pytest.fixture
def storage(settings):
    from vpm.storage import make_storage

    return make_storage(settings)


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


@pytest.fixture
def server_bucket(moto_server, request):
    """A fresh private bucket on the moto HTTP server; returns (endpoint_url, bucket_name)."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    boto3.client("s3", region_name=REGION, endpoint_url=moto_server).create_bucket(Bucket=name)
    return moto_server, name
