"""VPM_STORAGE picks the storage backend (S3_ENABLED still works as before); bucket facts are S3's alone; small
PUTs go without waiting for "100 Continue"."""

from __future__ import annotations

import pytest

from vpm.core import storage_registry
from vpm.core.config import STORAGE_BACKENDS, ConfigError, load_settings
from vpm.core.storage import BucketFacts, LocalStorage, S3Storage, Storage, make_storage

from conftest import BUCKET, REGION


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VPM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("S3_BUCKET_NAME", BUCKET)
    return tmp_path / "data"


@pytest.mark.parametrize("env, expected", [
    ({}, LocalStorage),  # the default, as before
    ({"S3_ENABLED": "true"}, S3Storage),  # as the seed guide documents it
    ({"VPM_STORAGE": "s3"}, S3Storage),
    ({"VPM_STORAGE": "local"}, LocalStorage),
    ({"VPM_STORAGE": "local", "S3_ENABLED": "true"}, LocalStorage),  # VPM_STORAGE wins when set
    ({"VPM_STORAGE": "s3", "S3_ENABLED": "false"}, S3Storage),
    ({"VPM_STORAGE": " S3 "}, S3Storage),  # as forgiving as the other settings
    ({"VPM_STORAGE": "", "S3_ENABLED": "true"}, S3Storage),  # `.env.example` copied as-is: unset
])
def test_the_settings_pick_the_backend(data_dir, monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()

    storage = make_storage(settings)

    assert type(storage) is expected
    # Whatever picked it, S3_ENABLED says the same afterwards: code that asks it keeps meaning what it did.
    assert settings.s3_enabled == (expected is S3Storage)
    assert settings.storage_backend == storage.backend


def test_an_unknown_backend_is_one_line_naming_the_choices(data_dir, monkeypatch):
    monkeypatch.setenv("VPM_STORAGE", "gcs")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert str(caught.value) == "Invalid VPM_STORAGE: must be one of local, s3 (got 'gcs')"


def test_s3_without_a_bucket_names_the_setting_that_asked_for_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VPM_STORAGE", "s3")

    with pytest.raises(ConfigError, match="S3_BUCKET_NAME is required when VPM_STORAGE=s3"):
        load_settings()


def test_every_backend_the_settings_accept_has_a_module():
    assert set(STORAGE_BACKENDS) == set(storage_registry.BUILT_IN)


def test_a_registered_backend_is_built_by_its_factory(tmp_path, monkeypatch):
    """A new backend is a module with a registered factory: nothing else in the registry changes."""

    class Named:  # a settings object that names a backend the registry has not heard of before
        storage_backend = "memory"

    monkeypatch.setattr(storage_registry, "_factories", dict(storage_registry._factories))
    built = LocalStorage(tmp_path)

    @storage_registry.register("memory")
    def _memory(settings) -> Storage:
        return built

    assert make_storage(Named()) is built


def test_a_backend_no_one_registered_is_refused(tmp_path):
    class Named:
        storage_backend = "ftp"

    with pytest.raises(ConfigError, match="must be one of local, s3"):
        make_storage(Named())


def test_the_migration_ends_follow_their_copies_of_the_settings(data_dir, monkeypatch):
    """The migration reads the local folder and writes the bucket whatever VPM_STORAGE says."""
    from vpm.migration.target import source_settings, target_settings

    for chosen in ("local", "s3"):
        monkeypatch.setenv("VPM_STORAGE", chosen)
        settings = load_settings()
        assert type(make_storage(source_settings(settings))) is LocalStorage
        assert type(make_storage(target_settings(settings))) is S3Storage


def test_only_a_bucket_reports_bucket_facts(aws, tmp_path):
    bucket = S3Storage(BUCKET, REGION)

    assert isinstance(bucket, BucketFacts)
    assert not isinstance(LocalStorage(tmp_path), BucketFacts)
    assert bucket.bucket_region() == REGION
    assert bucket.versioning() is None
    assert bucket.credentials_source()


class _Sent(Exception):
    """Stops a request once its headers are seen, so no network is needed."""


def _headers_of_put(storage: S3Storage, body: bytes, *, upload: bool) -> dict[str, str]:
    seen: dict[str, str] = {}

    def record(request, **_):
        seen.update(request.headers.items())
        raise _Sent

    events = storage.client.meta.events
    events.register_last("before-send.s3.PutObject", record)
    try:
        with pytest.raises(Exception):  # noqa: B017 - _Sent, as S3Storage reports whatever stops a request
            if upload:
                storage.upload("images/p.jpg", body)
            else:
                storage.put("images/p.jpg", body)
    finally:
        events.unregister("before-send.s3.PutObject", record)
    return seen


@pytest.mark.parametrize("upload", [False, True])
def test_a_small_put_goes_without_waiting_for_100_continue(upload):
    storage = S3Storage(BUCKET, REGION, endpoint_url="http://127.0.0.1:9")

    small = _headers_of_put(storage, b"x" * (1 << 20), upload=upload)
    large = _headers_of_put(storage, b"x" * ((1 << 20) + 1), upload=upload)

    assert small and "Expect" not in small
    assert large.get("Expect") == b"100-continue"  # a large body is not sent before S3 says it may
