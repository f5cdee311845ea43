"""Streamlit Community Cloud: the app starts with nothing but its secrets (no .env, no environment variables of
ours), and the requirements Community Cloud installs are ours with torch's CPU build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from conftest import APP_FILE, free_port, stop_process

REPO = Path(APP_FILE).parent


@pytest.fixture
def cloud_copy(tmp_path, server_bucket, tiny_clip_dir, monkeypatch):
    """The app as Community Cloud checks it out, with `.streamlit/secrets.toml` as typed into its Secrets box:
    an S3 bucket (moto's HTTP server here), keys, a read-only demo; no .env and none of our variables set."""
    endpoint, bucket = server_bucket
    app = tmp_path / "app"
    app.mkdir()
    for name in ("streamlit_app.py", "pages", "vpm", "sample"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(
            source, app / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if source.is_dir() else {}))
    (app / ".streamlit").mkdir()
    shutil.copy2(REPO / ".streamlit" / "config.toml", app / ".streamlit" / "config.toml")
    (app / ".streamlit" / "secrets.toml").write_text(
        f'S3_ENABLED = "true"\nS3_BUCKET_NAME = "{bucket}"\nS3_REGION = "us-east-1"\n'
        f'S3_ENDPOINT_URL = "{endpoint}"\nAWS_ACCESS_KEY_ID = "cloud-key-id"\nAWS_SECRET_ACCESS_KEY = "cloud-secret"\n'
        f'VPM_MODEL = "{tiny_clip_dir}"\nVPM_READ_ONLY = "true"\n'
    )
    for name in list(os.environ):
        if name.startswith(("S3_", "AWS_", "VPM_", "LOG_LEVEL")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.chdir(app)
    assert not (app / ".env").exists()
    return app, bucket


def test_the_app_server_starts_with_only_its_secrets(cloud_copy):
    app, _bucket = cloud_copy
    port = free_port()
    log_path = app.parent / "streamlit.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1"],
            cwd=app, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.3)
        finally:
            stop_process(server)
    output = log_path.read_text()
    assert "Traceback" not in output and "Inotify" not in output


def test_home_draws_from_the_secrets_alone(cloud_copy):
    from streamlit.testing.v1 import AppTest

    from vpm.faces import webapp

    app, bucket = cloud_copy
    webapp.clear_caches()
    at = AppTest.from_file(str(app / "streamlit_app.py"), default_timeout=60)
    for name, value in tomllib.loads((app / ".streamlit" / "secrets.toml").read_text()).items():
        at.secrets[name] = value
    at.run()
    webapp.clear_caches()

    assert not at.exception
    text = "\n".join(m.value for m in at.markdown)
    assert f"S3 bucket `{bucket}` (us-east-1)" in text  # the bucket from the secrets, not a local folder
    assert {m.label: m.value for m in at.metric}["Products"] == "0"  # a fresh, empty bucket
    assert any("read-only" in c.value.replace("\\", "").lower() for c in [*at.caption, *at.sidebar.caption])
    assert "cloud-secret" not in str(at._tree)


def test_the_cloud_requirements_are_ours_with_torchs_cpu_build():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from cloud_requirements import CPU_INDEX, cloud_requirements
    finally:
        sys.path.remove(str(REPO / "tools"))
    ours = (REPO / "requirements.txt").read_text()
    cloud = cloud_requirements(ours).splitlines()
    assert f"--extra-index-url {CPU_INDEX}" in cloud
    torch = [line for line in cloud if line.startswith("torch==")]
    assert len(torch) == 1 and torch[0].endswith("+cpu")
    assert [line for line in cloud if not line.startswith(("torch==", "--extra-index-url", "#"))] == [
        line for line in ours.splitlines() if not line.startswith(("torch==", "#"))
    ]
