"""Settings: environment > .env file > Streamlit secrets > defaults.

Secrets are `SecretStr`, so they never appear in repr, logs or error messages. Invalid values fail at start
with one line naming the variable (`ConfigError`).
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from vpm.core.errors import VpmError

# AWS region names look like us-east-1, eu-central-2, us-gov-west-1, cn-north-1, ap-southeast-4.
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SECRET_FIELDS = frozenset(
    {"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "vpm_api_key", "vpm_admin_password"}
)
# URLs that may carry a password (user:pw@host) or a token in their query: always shown through redact_url().
URL_FIELDS = frozenset({"s3_endpoint_url", "s3_cdn_url"})
# The storage backends VPM_STORAGE may name; vpm/core/storage_registry.py builds each from its own module.
STORAGE_BACKENDS = ("local", "s3")
# Libraries whose DEBUG output prints request headers (signatures, the access key id): capped at INFO.
AWS_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


class ConfigError(VpmError, ValueError):
    """A setting is missing or invalid. The message is one line naming the variable."""


REDACTED = "***"


def redact_url(url: str | None) -> str | None:
    """`url` safe to show or log: a password in it (user:pw@host) and every query value become ***."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # unparseable (e.g. a broken IPv6 literal): hide everything but the scheme
        return url.partition("://")[0] + "://" + REDACTED
    return urlunsplit((
        parts.scheme,
        _redact_userinfo(parts.netloc),
        parts.path,
        "&".join(_redact_query_pair(pair) for pair in parts.query.split("&")) if parts.query else "",
        REDACTED if parts.fragment else "",
    ))


def _redact_userinfo(netloc: str) -> str:
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        return netloc
    user, colon, _password = userinfo.partition(":")
    # A lone user name may itself be a token (https://TOKEN@host): keep a name only when a password follows.
    return f"{user}:{REDACTED}@{host}" if colon else f"{REDACTED}@{host}"


def _redact_query_pair(pair: str) -> str:
    name, equals, _value = pair.partition("=")
    return f"{name}={REDACTED}" if equals else REDACTED


def _streamlit_secrets() -> dict[str, Any]:
    """Flat top-level values of st.secrets, only when Streamlit is already running this process."""
    if "streamlit" not in sys.modules:
        return {}
    try:
        import streamlit as st

        return {k.lower(): v for k, v in st.secrets.to_dict().items() if not isinstance(v, dict)}
    except Exception:  # noqa: BLE001 - no secrets.toml, or not under Streamlit: nothing to add
        return {}


class _StreamlitSecretsSource(PydanticBaseSettingsSource):
    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        secrets = _streamlit_secrets()
        return {name: secrets[name] for name in self.settings_cls.model_fields if name in secrets}


def _check_prefix(value: str, name: str) -> str:
    if ".." in value.split("/") or value.startswith("/") or "\\" in value:
        raise ValueError(f"{name} must be a relative key prefix without '..', '\\' or a leading '/'")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{name} contains control characters")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    s3_enabled: bool = False
    # Where the catalog lives: local (VPM_DATA_DIR) or s3 (S3_BUCKET_NAME). Unset, S3_ENABLED decides as it always
    # has; set, it wins and S3_ENABLED follows it.
    vpm_storage: str | None = None
    s3_bucket_name: str | None = None
    s3_region: str = "us-east-1"
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    aws_profile: str | None = None
    s3_image_prefix: str = "images/"
    s3_thumbnail_prefix: str = "thumbnails/"
    s3_metadata_key: str = "metadata/products.json"
    s3_cdn_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_sse: Literal["AES256", "aws:kms"] | None = None
    s3_url_expiry_seconds: int = Field(3600, ge=60, le=7 * 24 * 3600)
    log_level: str = "INFO"
    vpm_data_dir: Path = Path("./data")
    vpm_max_upload_mb: int = Field(20, ge=1, le=1024)
    vpm_model: str = "clip-ViT-B-32"
    vpm_device: str = "auto"
    # What runs the model's network: ONNX Runtime where it matches torch (auto), or one of them by name.
    vpm_runtime: Literal["auto", "torch", "onnx-fp32", "onnx-int8"] = "auto"
    # Verify the top candidates of an image search by local features (vpm/core/rerank.py; docs/match-quality.md).
    vpm_rerank: bool = True
    # Read the package text on the photos (OCR, vpm/models/package_text.py) when added, and on a query photo when it can
    # change the first answer; ~0.4 s a photo on 2 cores.
    vpm_package_text: bool = True
    vpm_api_key: SecretStr | None = None
    vpm_cors_origins: str = ""
    # Who may change the catalog from the app (vpm.core.access): nobody (a public demo), or who signed in.
    vpm_read_only: bool = False
    vpm_admin_password: SecretStr | None = None
    vpm_admin_emails: str = ""
    # The REST API's guard against slow or lying clients (vpm.faces.api.ServerLimits; docs/rest-api.md).
    vpm_api_max_concurrency: int = Field(100, ge=1, le=100_000)
    vpm_api_header_timeout_s: float = Field(10.0, gt=0, le=3600, allow_inf_nan=False)
    vpm_api_body_timeout_s: float = Field(60.0, gt=0, le=3600, allow_inf_nan=False)
    vpm_api_keep_alive_s: int = Field(5, ge=1, le=3600)
    vpm_api_shutdown_timeout_s: int = Field(10, ge=1, le=3600)
    # Searches the app embeds and ranks at once (vpm/core/admission.py); 0: one a CPU core. The others wait in line, told
    # how many are ahead of them, for at most VPM_SEARCH_QUEUE_TIMEOUT_S seconds.
    vpm_search_concurrency: int = Field(0, ge=0, le=1024)
    vpm_search_queue_timeout_s: float = Field(60.0, gt=0, le=3600, allow_inf_nan=False)
    # Concurrent one-photo / one-text searches share model calls (vpm/core/batching.py); false: one call each; auto:
    # shared only on torch (ONNX Runtime gives each overlapping call a single-threaded session of its own, which
    # measured ~8% more requests/s than sharing).
    vpm_api_batch_queries: bool | Literal["auto"] = "auto"
    # botocore/urllib3 DEBUG logs print request headers; they stay at INFO unless this asks for them.
    vpm_debug_aws: bool = False

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (init_settings, env_settings, dotenv_settings, _StreamlitSecretsSource(settings_cls))

    @field_validator(
        "s3_bucket_name", "s3_cdn_url", "s3_endpoint_url", "s3_sse", "aws_profile", "aws_access_key_id",
        "aws_secret_access_key", "aws_session_token", "vpm_api_key", "vpm_admin_password", "vpm_storage",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, v):
        # `.env.example` copied as-is leaves `S3_CDN_URL=`; an empty value means "not set".
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("vpm_api_batch_queries", mode="before")
    @classmethod
    def _true_false_or_auto(cls, v):
        # One message naming the three choices, rather than one per member of the bool | "auto" union.
        if isinstance(v, bool):
            return v
        word = str(v).strip().lower()
        if word == "auto":
            return "auto"
        if word in ("true", "1", "yes", "on"):
            return True
        if word in ("false", "0", "no", "off"):
            return False
        raise ValueError("expected true, false or auto")

    @field_validator("vpm_storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().lower()
        if v not in STORAGE_BACKENDS:
            raise ValueError(f"must be one of {', '.join(STORAGE_BACKENDS)}")
        return v

    @field_validator("s3_region")
    @classmethod
    def _region(cls, v: str) -> str:
        v = v.strip()
        if not _REGION_RE.match(v):
            raise ValueError(f"{v!r} is not an AWS region name such as us-east-1")
        return v

    @field_validator("s3_image_prefix", "s3_thumbnail_prefix")
    @classmethod
    def _prefix(cls, v: str, info) -> str:
        v = _check_prefix(v.strip(), info.field_name.upper())
        return v if not v or v.endswith("/") else v + "/"

    @field_validator("s3_metadata_key")
    @classmethod
    def _metadata_key(cls, v: str) -> str:
        v = _check_prefix(v.strip(), "S3_METADATA_KEY")
        if not v or v.endswith("/"):
            raise ValueError("must name an object such as metadata/products.json")
        return v

    @field_validator("s3_cdn_url", "s3_endpoint_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError(f"{redact_url(v)!r} is not an http(s) URL")
        return v.rstrip("/") if v else v

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        v = v.strip().upper()
        if v not in _LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
        return v

    @model_validator(mode="after")
    def _bucket_required(self) -> Settings:
        if self.vpm_storage is not None:  # VPM_STORAGE wins over S3_ENABLED, which then says the same
            self.s3_enabled = self.vpm_storage == "s3"
        if self.s3_enabled and not self.s3_bucket_name:
            chosen = "VPM_STORAGE=s3" if self.vpm_storage else "S3_ENABLED=true"
            raise ValueError(f"S3_BUCKET_NAME is required when {chosen}")
        half = half_set_keys(self.aws_access_key_id, self.aws_secret_access_key)
        if half:
            raise ValueError(half)
        return self

    @property
    def storage_backend(self) -> str:
        """The backend the catalog lives in (a name in STORAGE_BACKENDS). S3_ENABLED follows VPM_STORAGE (see the
        validator above), and a copy made with s3_enabled flipped (the migration's two ends) means what it says,
        so the flag decides between the two."""
        return "s3" if self.s3_enabled else "local"

    # Derived keys: the embedding cache lives beside products.json.
    @property
    def metadata_prefix(self) -> str:
        head, _, _ = self.s3_metadata_key.rpartition("/")
        return head + "/" if head else ""

    @property
    def embeddings_prefix(self) -> str:
        return self.metadata_prefix + "embeddings/"

    @property
    def max_upload_bytes(self) -> int:
        return self.vpm_max_upload_mb * 1024 * 1024

    @property
    def cors_origins(self) -> list[str]:
        return [o.strip() for o in self.vpm_cors_origins.split(",") if o.strip()]

    def masked(self) -> dict[str, str]:
        """Effective settings for display: secrets shown only as set/unset."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                shown = "•••••• (set)"
            elif value is None:
                shown = "(not set)"
            elif name in URL_FIELDS:
                shown = redact_url(value)
            else:
                shown = str(value)
            out[name.upper()] = shown
        return out


def half_set_keys(key_id: object, secret: object) -> str | None:
    """Which half of an AWS key pair is missing, as one line; None when both or neither are given.

    boto3 signs with a half-set pair and fails deep inside botocore; every place that takes keys asks this."""
    if bool(key_id) == bool(secret):
        return None
    missing = "AWS_SECRET_ACCESS_KEY" if key_id else "AWS_ACCESS_KEY_ID"
    return f"{missing} is not set: give both access key variables, or neither (to use a profile or an IAM role)"


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "settings"
    msg = first.get("msg", "invalid").removeprefix("Value error, ")
    if loc == "settings":
        return f"Invalid configuration: {msg}"
    given = first.get("input")
    if loc in URL_FIELDS and isinstance(given, str):
        given = redact_url(given)
    shown = isinstance(given, (str, int, float, bool)) and loc not in SECRET_FIELDS
    detail = f" (got {given!r})" if shown else ""
    return f"Invalid {loc.upper()}: {msg}{detail}"


def load_settings(**overrides: Any) -> Settings:
    """Read settings; raise ConfigError with one line naming the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


def configure_logging(settings: Settings) -> None:
    """Log at LOG_LEVEL to stderr; AWS libraries capped at INFO (unless VPM_DEBUG_AWS); secrets masked."""
    level = getattr(logging, settings.log_level)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("vpm").setLevel(level)
    # Their DEBUG output prints every request's headers: the access key id, signatures, the endpoint URL.
    aws_level = logging.DEBUG if settings.vpm_debug_aws else max(logging.INFO, level)
    for name in AWS_LOGGERS:
        logging.getLogger(name).setLevel(aws_level)
    secret_filter = SecretFilter(secret_values(settings))
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, SecretFilter)]:
            handler.removeFilter(old)
        handler.addFilter(secret_filter)


def secret_values(settings: Settings) -> list[str]:
    """The configured values no log line may show: keys, tokens, and what URLs carry in userinfo or query."""
    values = [
        value.get_secret_value()
        for name in SECRET_FIELDS
        if (value := getattr(settings, name)) is not None
    ]
    for name in URL_FIELDS:
        url = getattr(settings, name)
        if url:
            values += _url_secrets(url)
    return values


def _url_secrets(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [parts.password] if parts.password else []
    found += [pair.partition("=")[2] or pair for pair in parts.query.split("&") if pair]
    return found + [unquote(value) for value in found]  # logged either way, escaped or not


# Shapes of credentials in botocore/urllib3 output, masked whatever their value: SigV4 and SigV2 query and
# header parts, Authorization and token headers, AWS access key ids, and passwords inside URLs.
_SECRET_PATTERNS = (
    (re.compile(r"(?i)\b((?:X-Amz-)?(?:Signature|Credential|Security-Token)['\"]?\s*[:=]\s*b?['\"]?)[^&\s,'\"]+"),
     r"\1" + REDACTED),
    (re.compile(r"(?i)\b(AWSAccessKeyId=)[^&\s,'\"]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)((?:Authorization|X-Amz-Security-Token|X-Api-Key)['\"]?\s*[:=]\s*b?['\"]?)[^'\"\r\n]+"),
     r"\1" + REDACTED),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), REDACTED),
    (re.compile(r"(://[^/\s:@]*:)[^@\s/]+@"), r"\1" + REDACTED + "@"),
)
# Shorter values would shred ordinary words in every line; no real key or token is this short.
_MIN_SECRET_LENGTH = 4


def mask_secrets(text: str, values: list[str] | tuple[str, ...] = ()) -> str:
    """`text` with the given secret values and every credential-shaped part replaced by ***."""
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= _MIN_SECRET_LENGTH:
            text = text.replace(value, REDACTED)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class SecretFilter(logging.Filter):
    """Rewrites every record a handler emits so secrets never reach the log: a second line of defence
    behind SecretStr, redact_url() and the AWS logger cap."""

    def __init__(self, values: list[str]):
        super().__init__()
        self.values = tuple(v for v in values if v)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed call (wrong %-args): logging reports it itself
            return True
        record.msg, record.args = mask_secrets(message, self.values), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text, self.values)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info, self.values)
        return True
