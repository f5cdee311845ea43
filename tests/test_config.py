"""Settings: defaults, precedence, one-line errors, secrets never shown."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from vpm.core.config import ConfigError, configure_logging, load_settings


def test_defaults():
    s = load_settings()
    assert s.s3_enabled is False
    assert s.s3_region == "us-east-1"
    assert s.s3_image_prefix == "images/"
    assert s.s3_metadata_key == "metadata/products.json"
    assert s.embeddings_prefix == "metadata/embeddings/"
    assert s.vpm_data_dir == Path("./data")
    assert s.max_upload_bytes == 20 * 1024 * 1024
    assert s.log_level == "INFO"
    assert s.s3_cdn_url is None


def test_environment_beats_dotenv(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("S3_REGION=eu-west-1\nS3_IMAGE_PREFIX=pics\nLOG_LEVEL=debug\n")
    monkeypatch.setenv("S3_REGION", "ap-southeast-2")
    s = load_settings()
    assert s.s3_region == "ap-southeast-2"  # environment wins
    assert s.s3_image_prefix == "pics/"  # from .env, normalised to a folder
    assert s.log_level == "DEBUG"


def test_streamlit_secrets_configure_the_app(tmp_path):
    """Community Cloud has no shell: its Secrets box (secrets.toml) must be enough, booleans included."""
    import streamlit as st

    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(
        'S3_ENABLED = true\nS3_BUCKET_NAME = "from-secrets"\nS3_REGION = "eu-north-1"\n'
    )
    st.secrets._reset()  # re-read from this test's working directory
    try:
        s = load_settings()
        assert (s.s3_enabled, s.s3_bucket_name, s.s3_region) == (True, "from-secrets", "eu-north-1")
    finally:
        st.secrets._reset()  # also removes what Streamlit copied into os.environ


def test_dotenv_fills_what_the_environment_leaves(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("S3_BUCKET_NAME=from-dotenv\nS3_REGION=eu-west-1\n")
    monkeypatch.setenv("S3_REGION", "us-west-2")
    s = load_settings()
    assert (s.s3_bucket_name, s.s3_region) == ("from-dotenv", "us-west-2")


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("S3_ENABLED", "maybe", "S3_ENABLED"),
        ("S3_REGION", "mars-1", "S3_REGION"),
        ("S3_IMAGE_PREFIX", "../images/", "S3_IMAGE_PREFIX"),
        ("S3_METADATA_KEY", "/etc/products.json", "S3_METADATA_KEY"),
        ("S3_CDN_URL", "ftp://cdn", "S3_CDN_URL"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
        ("VPM_MAX_UPLOAD_MB", "0", "VPM_MAX_UPLOAD_MB"),
        ("S3_SSE", "rot13", "S3_SSE"),
        ("VPM_API_BATCH_QUERIES", "maybe", "VPM_API_BATCH_QUERIES: expected true, false or auto"),
    ],
)
def test_invalid_values_fail_with_one_line_naming_the_variable(monkeypatch, name, value, words):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert words in message
    assert "\n" not in message


def test_bucket_required_when_s3_enabled(monkeypatch):
    monkeypatch.setenv("S3_ENABLED", "true")
    with pytest.raises(ConfigError, match="S3_BUCKET_NAME is required"):
        load_settings()


def test_half_a_key_pair_is_named(monkeypatch):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY is not set"):
        load_settings()


def test_blank_optional_values_mean_unset(monkeypatch):
    monkeypatch.setenv("S3_CDN_URL", "")
    monkeypatch.setenv("S3_ENDPOINT_URL", "  ")
    s = load_settings()
    assert s.s3_cdn_url is None and s.s3_endpoint_url is None


def test_secrets_never_appear_in_repr_logs_or_masked_view(monkeypatch, caplog):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-very-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY123")
    monkeypatch.setenv("VPM_API_KEY", "api-key-secret")
    s = load_settings()
    configure_logging(s)
    with caplog.at_level(logging.INFO):
        logging.getLogger("vpm.test").info("settings: %s / %r", s, s)
    shown = repr(s) + str(s) + str(s.masked()) + caplog.text
    for secret in ("wJalrXUtnFEMI-very-secret", "AKIAEXAMPLEKEY123", "api-key-secret"):
        assert secret not in shown
    assert s.masked()["AWS_SECRET_ACCESS_KEY"] == "•••••• (set)"
    assert s.aws_secret_access_key.get_secret_value() == "wJalrXUtnFEMI-very-secret"


def test_invalid_secret_value_is_not_echoed(monkeypatch):
    monkeypatch.setenv("S3_ENABLED", "true")
    monkeypatch.setenv("S3_BUCKET_NAME", "b")
    monkeypatch.setenv("S3_URL_EXPIRY_SECONDS", "5")
    with pytest.raises(ConfigError, match="S3_URL_EXPIRY_SECONDS"):
        load_settings()


def test_env_example_lists_every_setting():
    from vpm.core.config import Settings

    example = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"{name.upper()}=" in example, f"{name.upper()} missing from .env.example"
