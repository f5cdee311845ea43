"""Secrets never shown: a password in S3_ENDPOINT_URL, a token in S3_CDN_URL, the AWS keys and request
signatures stay out of errors, health output, the settings view, the server's start-up line and the log,
LOG_LEVEL=DEBUG included."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vpm.core.config import (
    AWS_LOGGERS,
    ConfigError,
    SecretFilter,
    configure_logging,
    load_settings,
    mask_secrets,
    redact_url,
)
from vpm.core.storage import S3Storage, StorageError

from conftest import free_port, stop_process

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "s3cr3t"
KEY_ID = "VPMKEYID-distinct-7731"  # not AKIA-shaped: the configured value itself must be masked
SECRET_KEY = "vpm-secret-key-distinct-0b5e7c9a1d"
# What a leaked signature or credential looks like in botocore's output.
SIGNATURE_SHAPES = re.compile(
    r"(?i)(Signature[\"']?\s*[:=]\s*b?[\"']?[0-9a-f%]{16}|Credential=[A-Za-z0-9]|AWS4-HMAC-SHA256 Credential=[^*])"
)


def assert_nothing_secret(text: str) -> None:
    for secret in (PASSWORD, KEY_ID, SECRET_KEY):
        assert secret not in text, f"{secret!r} leaked"
    assert not SIGNATURE_SHAPES.search(text), SIGNATURE_SHAPES.search(text).group(0)


@pytest.fixture
def restore_logging():
    """configure_logging changes process-wide loggers: put them back after the test."""
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in (*AWS_LOGGERS, "vpm")}
    filters = {handler: list(handler.filters) for handler in root.handlers}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    for handler, kept in filters.items():
        handler.filters[:] = kept


# ------------------------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    "url, shown",
    [
        ("http://user:s3cr3t@127.0.0.1:9000", "http://user:***@127.0.0.1:9000"),
        ("https://TOKEN123@minio.example.com/", "https://***@minio.example.com/"),
        ("https://d111.cloudfront.net/img?token=s3cr3t&v=2", "https://d111.cloudfront.net/img?token=***&v=***"),
        ("https://cdn.example.com/?s3cr3t", "https://cdn.example.com/?***"),
        ("https://cdn.example.com/#s3cr3t", "https://cdn.example.com/#***"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("http://[::1:9000", "http://***"),
        (None, None),
    ],
)
def test_redact_url_hides_userinfo_query_values_and_fragments(url, shown):
    assert redact_url(url) == shown


def test_masked_settings_redact_the_endpoint_password_and_the_cdn_token(monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://user:{PASSWORD}@127.0.0.1:9000")
    monkeypatch.setenv("S3_CDN_URL", f"https://cdn.example.com?token={PASSWORD}")
    masked = load_settings().masked()
    assert masked["S3_ENDPOINT_URL"] == "http://user:***@127.0.0.1:9000"
    assert masked["S3_CDN_URL"] == "https://cdn.example.com?token=***"
    assert PASSWORD not in str(masked)


def test_an_invalid_url_setting_is_named_without_its_password(monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT_URL", f"ftp://user:{PASSWORD}@files.example.com")
    with pytest.raises(ConfigError, match="S3_ENDPOINT_URL") as err:
        load_settings()
    assert PASSWORD not in str(err.value)


@pytest.fixture
def no_backoff(monkeypatch):
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0)


def test_s3_description_errors_and_image_links_carry_no_endpoint_password(no_backoff):
    store = S3Storage("vpm-test-bucket", endpoint_url=f"http://user:{PASSWORD}@127.0.0.1:{free_port()}")
    assert store.description.endswith("via http://user:***@127.0.0.1:" + store.endpoint_url.rsplit(":", 1)[1])
    with pytest.raises(StorageError, match="cannot reach S3") as err:  # nothing listens on that port
        store.check_access()
    assert PASSWORD not in str(err.value) and "user:***@" in str(err.value)
    link = store.url("images/a.jpg")
    assert PASSWORD not in link and "@" not in link and "X-Amz-Signature=" in link


# --------------------------------------------------------------------------------------- log masking


def _record(message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("botocore.endpoint", logging.DEBUG, __file__, 1, message, args, exc_info)


@pytest.mark.parametrize(
    "line",
    [
        "headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/s3/"
        "aws4_request, SignedHeaders=host, Signature=0123456789abcdef0123456789abcdef'}",
        "Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/x, Signature=0123456789abcdef01234567",
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F2026&X-Amz-Signature=0123456789abcdef",
        "http://h/k?AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=WNQw58uch%2FMTXI2NqZIL93Cs%2F0Q%3D",
        "Signature:\n0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "'X-Amz-Security-Token': b'IQoJb3JpZ2luX2VjEJr-session-token'",
        "found key AKIAIOSFODNN7EXAMPLE in the environment",
        "Sending http request to http://user:s3cr3t@127.0.0.1:9000/bucket",
    ],
)
def test_credential_shapes_are_masked_whatever_their_value(line):
    masked = mask_secrets(line)
    for secret in ("AKIAIOSFODNN7EXAMPLE", "0123456789abcdef", "WNQw58uch", "IQoJb3JpZ2lu", PASSWORD):
        assert secret not in masked, masked
    assert "***" in masked


def test_the_filter_masks_configured_values_in_messages_arguments_and_tracebacks():
    secret_filter = SecretFilter([SECRET_KEY, KEY_ID, "ab"])  # a 2-letter value would shred every line: kept
    try:
        raise RuntimeError(f"signing with {SECRET_KEY} failed")
    except RuntimeError:
        record = _record("key %s and %s", KEY_ID, "about", exc_info=sys.exc_info())
    assert secret_filter.filter(record)
    formatted = logging.Formatter().format(record)
    assert KEY_ID not in formatted and SECRET_KEY not in formatted
    assert "key *** and about" in formatted and "RuntimeError: signing with *** failed" in formatted


def test_aws_loggers_are_capped_at_info_unless_asked(monkeypatch, restore_logging):
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    configure_logging(load_settings())
    assert logging.getLogger("vpm").getEffectiveLevel() == logging.DEBUG
    assert all(logging.getLogger(name).getEffectiveLevel() == logging.INFO for name in AWS_LOGGERS)

    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    configure_logging(load_settings())
    assert logging.getLogger("botocore").getEffectiveLevel() == logging.WARNING  # never louder than asked

    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("VPM_DEBUG_AWS", "true")
    configure_logging(load_settings())
    assert logging.getLogger("botocore").getEffectiveLevel() == logging.DEBUG


def test_configured_secrets_are_masked_in_any_log_line(monkeypatch, caplog, restore_logging):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("VPM_API_KEY", "api-key-distinct-4411")
    monkeypatch.setenv("S3_CDN_URL", "https://cdn.example.com/?token=cdn-token-distinct-9")
    with caplog.at_level(logging.INFO):
        configure_logging(load_settings())  # installs the filter on the root handlers (caplog's included)
        logging.getLogger("some.library").warning(
            "retrying with %s/%s, api key api-key-distinct-4411, %s",
            KEY_ID, SECRET_KEY, "https://cdn.example.com/x.jpg?token=cdn-token-distinct-9",
        )
    assert "retrying with ***/***, api key ***" in caplog.text
    for secret in (KEY_ID, SECRET_KEY, "api-key-distinct-4411", "cdn-token-distinct-9"):
        assert secret not in caplog.text


# ------------------------------------------------------------------------------- real processes


def vpm_env(endpoint: str, bucket: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("S3_", "AWS_", "VPM_"))}
    env.update(
        S3_ENABLED="true", S3_BUCKET_NAME=bucket,
        S3_ENDPOINT_URL=endpoint.replace("http://", f"http://user:{PASSWORD}@"),
        AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-creds"),
        LOG_LEVEL="DEBUG", VPM_DATA_DIR=str(tmp_path / "data"), VPM_MODEL="efficientnet-lite0", VPM_DEVICE="cpu",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    env.update(extra)
    return env


def vpm(env: dict[str, str], *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpm", *argv], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("argv", [["list"], ["health"]], ids=" ".join)
def test_debug_logs_of_real_commands_show_no_keys_signatures_or_passwords(argv, server_bucket, tmp_path):
    endpoint, bucket = server_bucket
    result = vpm(vpm_env(endpoint, bucket, tmp_path), *argv, cwd=tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert_nothing_secret(output)


def test_asking_for_aws_debug_output_still_masks_what_it_prints(server_bucket, tmp_path):
    endpoint, bucket = server_bucket
    result = vpm(vpm_env(endpoint, bucket, tmp_path, VPM_DEBUG_AWS="true"), "list", cwd=tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "DEBUG botocore.auth" in output and "Authorization" in output  # botocore's request logs are there
    assert_nothing_secret(output)


def test_the_api_start_up_line_shows_the_endpoint_redacted(server_bucket, tmp_path):
    endpoint, bucket = server_bucket
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "vpm", "serve", "--port", str(free_port())],
            env=vpm_env(endpoint, bucket, tmp_path), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120  # a generous wait for start-up, not a speed assertion
        while "VPM API on" not in log_path.read_text() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop_process(server)
    text = log_path.read_text()
    start_up = next((line for line in text.splitlines() if "VPM API on" in line), None)
    assert start_up is not None, text
    assert "user:***@127.0.0.1" in start_up
    assert_nothing_secret(text)


def test_health_page_shows_the_endpoint_redacted(server_bucket, open_page, monkeypatch):
    endpoint, bucket = server_bucket
    monkeypatch.setenv("S3_ENABLED", "true")
    monkeypatch.setenv("S3_BUCKET_NAME", bucket)
    monkeypatch.setenv("S3_ENDPOINT_URL", endpoint.replace("http://", f"http://user:{PASSWORD}@"))

    at = open_page("pages/health.py")

    assert not at.exception
    settings_lines = next(m.value for m in at.markdown if "**S3_ENDPOINT_URL**" in m.value)
    shown = {line.split(" · ")[0].strip("*"): line.split(" · ", 1)[1].strip("` ") for line in settings_lines.split("  \n")}
    assert shown["S3_ENDPOINT_URL"] == endpoint.replace("http://", "http://user:***@")
    every_text = [e.value for kind in ("markdown", "caption", "error", "success", "warning") for e in getattr(at, kind)]
    assert not any(PASSWORD in text for text in every_text)
    assert any("storage reachable** (pass)" in text for text in every_text)
