"""The storage contract, run against every backend (local folder and S3 through moto)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import boto3
import pytest

from vpm.core.storage import (
    LOCK_STRIPES,
    MULTIPART_PART_SIZE,
    MULTIPART_THRESHOLD,
    InvalidKey,
    LocalStorage,
    ObjectNotFound,
    PreconditionFailed,
    S3Storage,
    StorageError,
    expected_etag,
    md5_etag,
    validate_key,
)

from conftest import BUCKET, REGION


def test_put_get_head_roundtrip(storage):
    etag = storage.put("images/p1.jpg", b"\xff\xd8jpeg bytes", "image/jpeg")
    assert storage.get("images/p1.jpg") == b"\xff\xd8jpeg bytes"
    info = storage.head("images/p1.jpg")
    assert info.size == 12
    assert info.etag == etag == md5_etag(b"\xff\xd8jpeg bytes")
    assert info.content_type == "image/jpeg"
    assert info.last_modified.tzinfo is not None
    assert info.sha256 == hashlib.sha256(b"\xff\xd8jpeg bytes").hexdigest()
    assert storage.exists("images/p1.jpg")
    assert not storage.exists("images/p2.jpg")


def test_overwrite_replaces_content(storage):
    storage.put("a/b.txt", b"one", "text/plain")
    assert storage.head("a/b.txt").etag == md5_etag(b"one")
    storage.put("a/b.txt", b"two", "text/plain")  # same size: the ETag must still change
    assert storage.get("a/b.txt") == b"two"
    assert storage.head("a/b.txt").etag == md5_etag(b"two")
    assert [o.etag for o in storage.iter_objects("a/")] == [md5_etag(b"two")]


def test_missing_object_raises_not_found(storage):
    with pytest.raises(ObjectNotFound, match=r"nothing\.jpg"):
        storage.get("images/nothing.jpg")
    with pytest.raises(ObjectNotFound):
        storage.head("images/nothing.jpg")


def test_delete_removes_and_missing_delete_is_quiet(storage):
    storage.put("images/x.png", b"png", "image/png")
    storage.delete("images/x.png")
    assert not storage.exists("images/x.png")
    storage.delete("images/x.png")  # as on S3: deleting what is gone is not an error


def test_list_with_delimiter_gives_folders(storage):
    for key in ["images/a.jpg", "images/b.jpg", "thumbnails/a.webp", "metadata/products.json", "top.txt"]:
        storage.put(key, b"x")
    page = storage.list("", delimiter="/")
    assert page.prefixes == ["images/", "metadata/", "thumbnails/"]
    assert [o.key for o in page.objects] == ["top.txt"]
    assert page.next_token is None
    inside = storage.list("images/", delimiter="/")
    assert [o.key for o in inside.objects] == ["images/a.jpg", "images/b.jpg"]
    assert inside.prefixes == []


def test_list_paginates_completely_over_2500_objects(storage):
    keys = {f"images/p{i:05d}.jpg" for i in range(2500)}
    for key in keys:
        storage.put(key, b"")
    storage.put("other/z.txt", b"")
    first = storage.list("images/", page_size=1000)
    assert len(first.objects) == 1000 and first.next_token
    listed = [o.key for o in storage.iter_objects("images/")]
    assert len(listed) == 2500
    assert set(listed) == keys
    assert listed == sorted(listed)


def test_conditional_put_if_absent(storage):
    storage.put("metadata/products.json", b"{}", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        storage.put("metadata/products.json", b"{\"x\": 1}", if_none_match=True)
    assert storage.get("metadata/products.json") == b"{}"


def test_conditional_put_if_match(storage):
    etag = storage.put("metadata/products.json", b"v1")
    _, read_etag = storage.get_with_etag("metadata/products.json")
    assert read_etag == etag
    new_etag = storage.put("metadata/products.json", b"v2", if_match=read_etag)
    with pytest.raises(PreconditionFailed):
        storage.put("metadata/products.json", b"v3", if_match=read_etag)  # stale ETag loses
    assert storage.get("metadata/products.json") == b"v2"
    storage.put("metadata/products.json", b"v3", if_match=new_etag)
    assert storage.get("metadata/products.json") == b"v3"


# ------------------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("how", ["bytes", "path", "file"])
def test_upload_streams_and_returns_the_sha256_it_stored(storage, how, tmp_path):
    data = bytes(range(256)) * 300
    source = tmp_path / "photo.jpg"
    source.write_bytes(data)
    with open(source, "rb") as fh:
        given = {"bytes": data, "path": source, "file": fh}[how]
        stored = storage.upload("images/s.jpg", given, "image/jpeg", metadata={"sha256": "x" * 64})

    assert stored.sha256 == hashlib.sha256(data).hexdigest()  # confirmed by the backend, no HEAD needed
    assert stored.size == len(data) and stored.etag == md5_etag(data) and stored.parts == 1
    assert storage.get("images/s.jpg") == data
    info = storage.head("images/s.jpg")
    assert info.etag == stored.etag and info.content_type == "image/jpeg"


def test_upload_is_conditional_like_put(storage):
    first = storage.upload("images/c.jpg", b"one", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        storage.upload("images/c.jpg", b"two", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        storage.upload("images/c.jpg", b"two", if_match=md5_etag(b"stale"))
    storage.upload("images/c.jpg", b"three", if_match=first.etag)
    assert storage.get("images/c.jpg") == b"three"


def test_upload_above_the_multipart_threshold_goes_in_parts_and_is_verified(storage, backend, monkeypatch):
    import random

    data = random.Random(8).randbytes(MULTIPART_THRESHOLD + MULTIPART_PART_SIZE // 2)
    sent: list[tuple[str, int]] = []
    if backend == "s3":
        from botocore.client import BaseClient

        original = BaseClient._make_api_call

        def spy(self, operation, params):
            body = params.get("Body")
            sent.append((operation, len(body) if isinstance(body, bytes) else -1))
            return original(self, operation, params)

        monkeypatch.setattr(BaseClient, "_make_api_call", spy)

    stored = storage.upload("images/big.tiff", data, "image/tiff", if_none_match=True)

    assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert storage.get("images/big.tiff") == data
    if backend == "s3":
        with storage.open("images/big.tiff") as stream:
            assert expected_etag(stream, len(data)) == stored.etag  # what a migration compares listings with
        assert stored.parts == 2 and stored.etag.endswith('-2"')
        parts = [size for op, size in sent if op == "UploadPart"]
        assert parts == [MULTIPART_PART_SIZE, len(data) - MULTIPART_PART_SIZE]  # never more than a part held
        assert "PutObject" not in [op for op, _ in sent]
        assert [o.etag for o in storage.iter_objects("images/")] == [stored.etag]
        with pytest.raises(PreconditionFailed):  # the condition holds for a multipart upload too
            storage.upload("images/big.tiff", data, if_none_match=True)


def test_open_streams_an_object(storage):
    storage.put("images/o.jpg", b"streamed bytes")
    with storage.open("images/o.jpg") as stream:
        assert stream.read(8) + stream.read() == b"streamed bytes"
    with pytest.raises(ObjectNotFound):
        storage.open("images/none.jpg")


def test_an_s3_listing_says_which_checksum_each_object_carries(storage, backend):
    storage.upload("images/l.jpg", b"listed")
    (info,) = list(storage.iter_objects("images/"))
    assert info.etag == md5_etag(b"listed")  # one listing shows the ETag an upload of these bytes gets
    if backend == "s3":
        assert info.checksum_algorithm in ("SHA256", None)  # S3 lists it; moto may not


@pytest.mark.parametrize(
    "key",
    ["../etc/passwd", "images/../../x", "/abs/key", "images\\x.jpg", "a\x00b", "line\nbreak", "", "a//b",
     "./x", ".vpm/locks/x"],
)
def test_hostile_keys_are_rejected_before_any_io(storage, key):
    with pytest.raises(InvalidKey):
        storage.put(key, b"x")
    with pytest.raises(InvalidKey):
        storage.get(key)
    with pytest.raises(InvalidKey):
        storage.delete(key)


def test_validate_key_accepts_ordinary_keys():
    assert validate_key("images/product_1.jpg") == "images/product_1.jpg"
    assert validate_key("metadata/embeddings/clip-ViT-B-32.npz")


def test_check_access_passes_on_a_reachable_backend(storage):
    storage.check_access()


# ------------------------------------------------------------------------------ backend-specific URLs


def test_a_local_url_is_a_file_uri_only_this_machine_can_open(tmp_path):
    plain = LocalStorage(tmp_path)
    plain.put("images/a b.jpg", b"x")
    assert plain.url("images/a b.jpg") == (tmp_path / "images" / "a b.jpg").resolve().as_uri()
    assert plain.web_urls is False  # the API serves local files itself; the app shows them inline


def test_sizes_are_those_a_listing_gives_without_reading_the_files(storage, monkeypatch):
    for key, data in (("images/a.jpg", b"one"), ("images/b.jpg", b"three"), ("metadata/x.json", b"{}")):
        storage.put(key, data)
    listed = [(o.key, o.size) for o in storage.iter_objects()]
    if isinstance(storage, LocalStorage):  # a new process's view (no digests remembered) must not read the files
        storage = LocalStorage(storage.root)
        monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} was read"))
    assert list(storage.iter_sizes()) == listed == [("images/a.jpg", 3), ("images/b.jpg", 5), ("metadata/x.json", 2)]
    assert list(storage.iter_sizes("images/")) == listed[:2]


def test_local_files_stay_inside_the_root_and_locks_are_hidden(tmp_path):
    store = LocalStorage(tmp_path / "data")
    store.put("images/a.jpg", b"x")
    assert (tmp_path / "data" / "images" / "a.jpg").read_bytes() == b"x"
    assert [o.key for o in store.iter_objects()] == ["images/a.jpg"]  # no .vpm/ bookkeeping listed


def test_lock_files_stay_bounded_however_many_keys_are_written(tmp_path):
    store = LocalStorage(tmp_path)
    for i in range(2000):
        store.put(f"images/p{i:05d}.jpg", b"x", if_none_match=True)  # conditional: takes the key's lock
    store.delete("images/p00000.jpg")
    locks = list((tmp_path / ".vpm" / "locks").iterdir())
    assert 0 < len(locks) <= LOCK_STRIPES
    assert len(list(store.iter_objects("images/"))) == 1999


def test_a_failed_put_leaves_no_temp_file_behind(tmp_path):
    store = LocalStorage(tmp_path)
    store.put("images/a.jpg", b"x")
    with pytest.raises(OSError):
        store.put("images", b"a file where a folder is")  # the rename onto the folder fails
    assert [p.name for p in (tmp_path / ".vpm").iterdir()] == ["locks"]
    assert store.get("images/a.jpg") == b"x"


def test_leftovers_of_dead_writers_and_old_versions_are_removed_but_not_ones_in_use(tmp_path):
    import os
    import time

    locks = tmp_path / ".vpm" / "locks"
    locks.mkdir(parents=True)
    dead, writing = tmp_path / ".vpm" / "put-dead123", tmp_path / ".vpm" / "put-live456"
    per_key_lock, recent_per_key_lock = locks / ("a" * 40 + ".lock"), locks / ("b" * 40 + ".lock")
    stripe = locks / "stripe-007.lock"
    for path in (dead, writing, per_key_lock, recent_per_key_lock, stripe):
        path.write_bytes(b"")
    two_hours_ago = time.time() - 7200
    for path in (dead, per_key_lock, stripe):
        os.utime(path, (two_hours_ago, two_hours_ago))

    LocalStorage(tmp_path)

    assert not dead.exists() and not per_key_lock.exists()
    assert writing.exists() and recent_per_key_lock.exists()  # maybe in use right now
    assert stripe.exists()  # the stripes are the locks in use: never removed


def test_s3_url_is_presigned_and_expires(aws):
    store = S3Storage(BUCKET, REGION)
    store.put("images/a.jpg", b"x", "image/jpeg")
    url = store.url("images/a.jpg", expires=600)
    query = parse_qs(urlparse(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["600"]
    assert "images/a.jpg" in urlparse(url).path


def test_s3_url_uses_cdn_when_configured(aws):
    store = S3Storage(BUCKET, REGION, cdn_url="https://d111.cloudfront.net/")
    assert store.url("images/a b.jpg") == "https://d111.cloudfront.net/images/a%20b.jpg"


def test_s3_put_sends_sha256_checksum_and_user_metadata(aws):
    store = S3Storage(BUCKET, REGION)
    store.put("images/a.jpg", b"hello", "image/jpeg", metadata={"sha256": hashlib.sha256(b"hello").hexdigest()})
    raw = boto3.client("s3", region_name=REGION).head_object(Bucket=BUCKET, Key="images/a.jpg", ChecksumMode="ENABLED")
    assert raw["Metadata"]["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert raw.get("ChecksumSHA256")
    info = store.head("images/a.jpg")
    assert info.metadata["sha256"] == info.sha256 == hashlib.sha256(b"hello").hexdigest()


def test_s3_server_side_encryption_flag(aws):
    store = S3Storage(BUCKET, REGION, sse="AES256")
    store.put("images/a.jpg", b"x")
    raw = boto3.client("s3", region_name=REGION).head_object(Bucket=BUCKET, Key="images/a.jpg")
    assert raw["ServerSideEncryption"] == "AES256"


def test_s3_bucket_stays_private(aws):
    store = S3Storage(BUCKET, REGION)
    store.put("images/a.jpg", b"x")
    acl = boto3.client("s3", region_name=REGION).get_object_acl(Bucket=BUCKET, Key="images/a.jpg")
    assert all("AllUsers" not in str(g.get("Grantee", {})) for g in acl["Grants"])


def test_missing_bucket_is_one_clear_message(aws):
    store = S3Storage("no-such-bucket-here", REGION)
    with pytest.raises(StorageError, match=r"bucket 'no-such-bucket-here' does not exist.*S3_BUCKET_NAME"):
        store.check_access()
    with pytest.raises(StorageError, match="does not exist"):
        store.put("images/a.jpg", b"x")


def test_bad_credentials_are_one_clear_message_without_the_secret(aws):
    from botocore.exceptions import ClientError

    store = S3Storage(BUCKET, REGION, access_key_id="AKIAWRONG", secret_access_key="s3cr3t-value")
    error = ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "no"},
                        "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadBucket")
    message = str(store._error(error))
    assert "rejected the credentials" in message and "AWS_ACCESS_KEY_ID" in message
    assert "s3cr3t-value" not in message and "s3cr3t-value" not in repr(store.__dict__.get("description"))


def test_access_denied_names_the_permissions(aws):
    from botocore.exceptions import ClientError

    store = S3Storage(BUCKET, REGION)
    error = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"},
                        "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")
    message = str(store._error(error, "images/a.jpg"))
    assert "access denied to s3://vpm-test-bucket/images/a.jpg" in message
    assert "s3:PutObject" in message


def test_no_credentials_at_all(monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    # Point at a closed local port so boto3 never tries the instance-metadata service or the internet.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Storage(BUCKET, REGION, endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StorageError, match="no AWS credentials found"):
        store.check_access()


def test_half_a_key_pair_is_a_clear_error(aws):
    with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY is not set"):
        S3Storage(BUCKET, REGION, access_key_id="AKIAONLYHALF")


def test_a_check_reports_what_it_knows_about_where_objects_live(storage, backend):
    from vpm.core.storage import BucketFacts

    storage.check_access()
    # Only a bucket reports bucket facts: they are not part of the contract a local folder keeps.
    assert isinstance(storage, BucketFacts) == (backend == "s3")
    if backend == "s3":
        assert storage.credentials_source()  # moto takes the fake keys the tests set
        assert storage.bucket_region() == "us-east-1"
        assert storage.versioning() in (None, "Suspended")
        assert storage.default_encryption() in (None, "AES256")


@pytest.mark.parametrize("backend", ["s3"], indirect=True)  # a local folder is created on first use
def test_a_missing_bucket_is_its_own_error(settings):
    from vpm.core.storage import BucketNotFound, make_storage

    with pytest.raises(BucketNotFound, match="does not exist"):
        make_storage(settings.model_copy(update={"s3_bucket_name": "no-such-bucket-here"})).check_access()
