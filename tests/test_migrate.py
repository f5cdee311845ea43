"""vpm.migrate against moto: check, plan (dry run), execute, verify, resume, conflicts, fault injection."""

from __future__ import annotations

import base64
import hashlib
import json

import boto3
import pytest
from pydantic import SecretStr

from vpm.catalog import Catalog, Product
from vpm.config import ConfigError, load_settings
from vpm.migrate import (
    CONFLICT,
    MISSING,
    SKIP,
    UPLOAD,
    Migration,
    MigrationError,
    merge_products,
)
from vpm.storage import S3Storage, StorageError

from conftest import BUCKET, REGION

WRITE_OPS = {"PutObject", "DeleteObject", "DeleteObjects", "CopyObject", "CreateMultipartUpload", "UploadPart",
             "CompleteMultipartUpload", "PutBucketVersioning", "PutBucketEncryption"}


def s3():
    return boto3.client("s3", region_name=REGION)


def bucket_keys() -> set[str]:
    pages = s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def bucket_products() -> list[dict]:
    return json.loads(s3().get_object(Bucket=BUCKET, Key="metadata/products.json")["Body"].read())["products"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def api_calls(monkeypatch):
    """Every S3 API operation any boto3 client makes, by name."""
    from botocore.client import BaseClient

    calls: list[str] = []
    original = BaseClient._make_api_call

    def spy(self, operation_name, api_params):
        calls.append(operation_name)
        return original(self, operation_name, api_params)

    monkeypatch.setattr(BaseClient, "_make_api_call", spy)
    return calls


@pytest.fixture
def no_backoff(monkeypatch):
    """botocore's retries still happen, without their sleep, so fault-injection tests stay quick."""
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0)


def fresh_migration(**kwargs) -> Migration:
    return Migration(load_settings(), **kwargs)


# ----------------------------------------------------------------------------------------------- check


def by_name(checks):
    return {c.name: c for c in checks}


def test_check_passes_on_a_good_setup_and_removes_its_probe(aws, local_catalog):
    local_catalog.add(3)
    s3().put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3().put_bucket_encryption(Bucket=BUCKET, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})

    checks = fresh_migration().check()

    assert [c for c in checks if c.status != "pass"] == []
    names = set(by_name(checks))
    assert {"credentials", "bucket exists", "bucket region", "list objects", "write probe", "read probe",
            "delete probe", "bucket versioning", "default encryption", "local catalog readable",
            "local catalog consistent"} <= names
    assert "AES256" in by_name(checks)["default encryption"].detail
    assert bucket_keys() == set()  # the probe is gone


def test_check_warns_when_versioning_and_default_encryption_are_off(aws, local_catalog):
    local_catalog.add(1)
    checks = by_name(fresh_migration().check())
    assert checks["bucket versioning"].status == "warn"
    assert "put-bucket-versioning" in checks["bucket versioning"].fix
    assert checks["default encryption"].status == "warn"
    assert "S3_SSE" in checks["default encryption"].fix
    assert all(c.status != "fail" for c in checks.values())


def test_check_counts_s3_sse_as_encryption(aws, local_catalog, monkeypatch):
    local_catalog.add(1)
    monkeypatch.setenv("S3_SSE", "AES256")
    assert by_name(fresh_migration().check())["default encryption"].status == "pass"


def test_check_missing_bucket_fails_with_the_command_that_creates_it(aws, local_catalog, monkeypatch):
    local_catalog.add(1)
    monkeypatch.setenv("S3_BUCKET_NAME", "no-such-bucket-here")
    checks = fresh_migration().check()
    bucket = by_name(checks)["bucket exists"]
    assert bucket.status == "fail"
    assert "not found" in bucket.detail
    assert "aws s3 mb s3://no-such-bucket-here --region us-east-1" in bucket.fix
    assert "write probe" not in by_name(checks)  # no noise after the first failure
    assert by_name(checks)["local catalog readable"].status == "pass"  # the local side is still checked


def test_check_bucket_in_another_region_fails_naming_it(aws, local_catalog, monkeypatch):
    local_catalog.add(1)
    boto3.client("s3", region_name="eu-west-1").create_bucket(
        Bucket="eu-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    monkeypatch.setenv("S3_BUCKET_NAME", "eu-bucket")
    region = by_name(fresh_migration().check())["bucket region"]
    assert region.status == "fail"
    assert "eu-west-1" in region.detail and region.fix == "set S3_REGION=eu-west-1"


def test_check_without_credentials_fails_with_how_to_set_them(local_catalog, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup either
    local_catalog.add(1)
    checks = fresh_migration().check()
    assert checks[0].name == "credentials" and checks[0].status == "fail"
    assert "AWS_ACCESS_KEY_ID" in checks[0].fix
    assert "bucket exists" not in by_name(checks)


def test_check_reports_products_whose_image_is_missing(aws, local_catalog):
    local_catalog.add(3)
    (local_catalog.root / "images" / "p0001.jpg").unlink()
    consistent = by_name(fresh_migration().check())["local catalog consistent"]
    assert consistent.status == "fail"
    assert "p0001" in consistent.detail and "images/p0001.jpg" in consistent.detail
    assert "python -m vpm delete" in consistent.fix


def test_check_reports_an_empty_local_catalog_as_a_warning(aws, local_catalog):
    readable = by_name(fresh_migration().check())["local catalog readable"]
    assert readable.status == "warn" and "nothing to migrate" in readable.fix


def test_migration_requires_a_bucket_name(local_catalog, monkeypatch):
    monkeypatch.delenv("S3_BUCKET_NAME")
    with pytest.raises(MigrationError, match="S3_BUCKET_NAME is not set"):
        fresh_migration()


# ------------------------------------------------------------------------------------------------ plan


def test_dry_run_plans_upload_skip_and_conflict_and_writes_nothing(aws, local_catalog, api_calls):
    products = local_catalog.add(5)
    local = local_catalog.storage
    target = S3Storage(BUCKET, REGION)
    # p0000: identical, stored with a checksum. p0001: identical, stored by another tool without one
    # (the plan falls back to a download). p0002: same size, other bytes. p0003's thumbnail: other size.
    target.put(products[0].image_key, local.get(products[0].image_key), "image/jpeg")
    s3().put_object(Bucket=BUCKET, Key=products[1].image_key, Body=local.get(products[1].image_key))
    other = bytes(b ^ 0xFF for b in local.get(products[2].image_key))
    s3().put_object(Bucket=BUCKET, Key=products[2].image_key, Body=other)
    s3().put_object(Bucket=BUCKET, Key=products[3].thumbnail_key, Body=b"short")
    before_keys, before_local = bucket_keys(), local_catalog.snapshot()
    api_calls.clear()

    plan = fresh_migration().plan()

    actions = {i.key: i.action for i in plan.items}
    assert actions[products[0].image_key] == SKIP
    assert actions[products[1].image_key] == SKIP
    assert actions[products[2].image_key] == CONFLICT
    assert actions[products[3].thumbnail_key] == CONFLICT
    assert actions[products[4].image_key] == UPLOAD
    assert actions["metadata/embeddings/clip-ViT-B-32.npz"] == UPLOAD
    conflict = next(i for i in plan.items if i.key == products[3].thumbnail_key)
    assert "bucket has 5 bytes" in conflict.reason
    totals = plan.totals()
    assert totals["files"] == 11  # 5 images, 5 thumbnails, 1 embedding cache
    assert totals[SKIP]["files"] == 2 and totals[CONFLICT]["files"] == 2 and totals[UPLOAD]["files"] == 7
    assert totals[UPLOAD]["bytes"] == sum(i.size for i in plan.items if i.action == UPLOAD)
    assert plan.metadata.action == "create"
    assert set(plan.metadata.held_back) == {"p0002", "p0003"}  # never point them at the bucket's other bytes
    assert plan.estimate.one_time_total > 0
    text = plan.as_text()
    assert "conflict" in text and "Estimated cost" in text
    json.dumps(plan.as_dict())  # the page and --json render it

    assert not WRITE_OPS & set(api_calls), api_calls
    assert bucket_keys() == before_keys
    assert local_catalog.snapshot() == before_local


def test_plan_blocks_metadata_when_a_local_image_is_missing(aws, local_catalog):
    local_catalog.add(3)
    (local_catalog.root / "images" / "p0001.jpg").unlink()
    plan = fresh_migration().plan()
    missing = [i for i in plan.items if i.action == MISSING]
    assert [i.key for i in missing] == ["images/p0001.jpg"]
    assert plan.metadata.action == "blocked" and "missing locally" in plan.metadata.detail


# --------------------------------------------------------------------------------------------- execute


def test_force_uploads_everything_with_checksums_and_points_the_catalog_at_s3(aws, local_catalog):
    products = local_catalog.add(12)
    before_local = local_catalog.snapshot()
    migration = fresh_migration(workers=4)
    seen = []

    report = migration.execute(migration.plan(), progress=lambda *a: seen.append(a))

    assert report.ok and report.exit_code == 0
    assert len(report.uploaded) == 25 and not report.failed and not report.conflicts
    for p in products:
        for key, ctype in ((p.image_key, "image/jpeg"), (p.thumbnail_key, "image/webp")):
            head = s3().head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
            data = local_catalog.storage.get(key)
            assert head["ContentType"] == ctype
            assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
            assert head["ContentLength"] == len(data)
    assert "metadata/embeddings/clip-ViT-B-32.npz" in bucket_keys()
    listed = Catalog(S3Storage(BUCKET, REGION)).list()
    assert [p.id for p in listed] == [p.id for p in products]
    assert all(p.image_key.startswith("images/") and p.thumbnail_key.startswith("thumbnails/") for p in listed)
    assert report.metadata.status == "written" and len(report.metadata.added) == 12
    assert seen[-1][0] == seen[-1][1] == 25 and seen[-1][2] == seen[-1][3] == report.bytes_uploaded
    assert local_catalog.snapshot() == before_local  # copies, never moves or deletes
    assert [c.status for c in report.verification] == ["pass", "pass"]
    json.dumps(report.as_dict())


def test_products_move_to_the_configured_prefixes(aws, local_catalog, monkeypatch):
    local_catalog.add(2, image_prefix="photos/", thumbnail_prefix="small/")
    report = Migration(load_settings()).execute(Migration(load_settings()).plan())
    assert report.ok
    listed = {p.id: p for p in Catalog(S3Storage(BUCKET, REGION)).list()}
    assert listed["p0000"].image_key == "images/p0000.jpg"
    assert listed["p0001"].thumbnail_key == "thumbnails/p0001.webp"
    assert s3().get_object(Bucket=BUCKET, Key="images/p0000.jpg")["Body"].read() == \
        local_catalog.storage.get("photos/p0000.jpg")


def test_rerun_after_success_uploads_nothing(aws, local_catalog, api_calls):
    local_catalog.add(6)
    fresh_migration().execute(fresh_migration().plan())
    api_calls.clear()

    migration = fresh_migration()
    plan = migration.plan()
    assert plan.nothing_to_do and {i.action for i in plan.items} == {SKIP}
    report = migration.execute(plan)

    assert report.ok and len(report.skipped) == 13 and not report.uploaded
    assert report.metadata.status == "unchanged"
    assert "PutObject" not in api_calls


def test_sse_setting_encrypts_every_uploaded_object(aws, local_catalog, monkeypatch):
    products = local_catalog.add(2)
    monkeypatch.setenv("S3_SSE", "AES256")
    assert fresh_migration().execute(fresh_migration().plan()).ok
    for key in (products[0].image_key, products[1].thumbnail_key, "metadata/products.json"):
        assert s3().head_object(Bucket=BUCKET, Key=key)["ServerSideEncryption"] == "AES256"


def test_bucket_catalog_is_merged_not_replaced(aws, local_catalog):
    local_catalog.add(3)
    target = S3Storage(BUCKET, REGION)
    target.put("images/theirs.jpg", b"their image", "image/jpeg")
    theirs = Product(id="theirs", name="Theirs", category="x", image_key="images/theirs.jpg")
    Catalog(target).add(theirs)

    report = fresh_migration().execute(fresh_migration().plan())

    assert report.ok and report.metadata.kept == 1
    assert [p["id"] for p in bucket_products()] == ["theirs", "p0000", "p0001", "p0002"]


def test_conflicts_are_reported_and_kept_until_overwrite(aws, local_catalog):
    products = local_catalog.add(3)
    target = S3Storage(BUCKET, REGION)
    # The bucket already has p0000 with another image, and p0001's record differs (another name).
    target.put(products[0].image_key, b"someone else's photo", "image/jpeg")
    Catalog(target).add_products([
        products[0].model_copy(update={"name": "Their p0"}),
        products[1].model_copy(update={"name": "Their p1"}),
    ])

    migration = fresh_migration()
    report = migration.execute(migration.plan())

    assert not report.ok and report.exit_code == 1
    assert [r.key for r in report.conflicts] == [products[0].image_key]
    assert report.metadata.conflicts == ("p0001",) and report.metadata.held_back == ("p0000",)
    assert s3().get_object(Bucket=BUCKET, Key=products[0].image_key)["Body"].read() == b"someone else's photo"
    names = {p["id"]: p["name"] for p in bucket_products()}
    assert names == {"p0000": "Their p0", "p0001": "Their p1", "p0002": "Product 2"}
    assert "--overwrite" in report.as_text()

    plan = migration.plan(overwrite=True)
    assert {i.key: i.action for i in plan.items}[products[0].image_key] == "overwrite"
    report = migration.execute(plan)

    assert report.ok, report.as_text()
    assert s3().get_object(Bucket=BUCKET, Key=products[0].image_key)["Body"].read() == \
        local_catalog.storage.get(products[0].image_key)
    names = {p["id"]: p["name"] for p in bucket_products()}
    assert names == {"p0000": "Product 0", "p0001": "Product 1", "p0002": "Product 2"}


def test_missing_local_image_uploads_the_rest_but_never_writes_metadata(aws, local_catalog):
    local_catalog.add(3)
    (local_catalog.root / "images" / "p0001.jpg").unlink()
    report = fresh_migration().execute(fresh_migration().plan())
    assert not report.ok
    assert [r.key for r in report.failed] == ["images/p0001.jpg"]
    assert "missing locally" in report.failed[0].reason
    assert report.metadata.status == "not written"
    assert "metadata/products.json" not in bucket_keys()
    assert "images/p0000.jpg" in bucket_keys()


# ------------------------------------------------------------------------------ interruption and faults


def test_interrupted_run_resumes_uploading_only_what_is_missing(aws, local_catalog, api_calls):
    local_catalog.add(20)
    migration = fresh_migration(workers=2)

    def stop_after_8(done_files, total_files, done_bytes, total_bytes):
        if done_files >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        migration.execute(migration.plan(), progress=stop_after_8)
    arrived = bucket_keys()
    assert 8 <= len(arrived) < 41  # in-flight uploads finish; the rest never started
    assert "metadata/products.json" not in arrived  # never points at objects that are not there

    api_calls.clear()
    plan = fresh_migration().plan()
    assert {i.key for i in plan.items if i.action == SKIP} == arrived
    report = fresh_migration().execute(plan)

    assert report.ok
    assert len(report.uploaded) == 41 - len(arrived) and len(report.skipped) == len(arrived)
    assert api_calls.count("PutObject") == 41 - len(arrived) + 1  # the missing files, then products.json
    assert len(Catalog(S3Storage(BUCKET, REGION)).list()) == 20


def inject_put_faults(storage: S3Storage, *, fail_keys: set[str], every: int):
    """Before each PutObject attempt: a connection error for `fail_keys` always, and for every `every`-th
    attempt otherwise (a transient fault that botocore's retries may hide)."""
    from urllib.parse import unquote, urlsplit

    from botocore.exceptions import EndpointConnectionError

    attempts = {"n": 0}

    def handler(request, **kwargs):
        attempts["n"] += 1
        path = unquote(urlsplit(request.url).path).lstrip("/")
        key = path.removeprefix(f"{BUCKET}/")  # path-style or virtual-hosted URL
        if key in fail_keys or attempts["n"] % every == 0:
            raise EndpointConnectionError(endpoint_url=request.url)

    # First, so it runs before moto's in-process responder answers the request.
    storage.client.meta.events.register_first("before-send.s3.PutObject", handler)
    return attempts


def test_network_faults_fail_only_their_files_and_keep_metadata_unwritten(aws, local_catalog, no_backoff):
    from botocore.config import Config

    local_catalog.add(15)
    client = boto3.client("s3", region_name=REGION,
                          config=Config(retries={"mode": "standard", "max_attempts": 3}))
    target = S3Storage(BUCKET, REGION, client=client)
    broken = {"images/p0003.jpg", "thumbnails/p0011.webp"}
    attempts = inject_put_faults(target, fail_keys=broken, every=5)
    migration = fresh_migration(target=target)

    report = migration.execute(migration.plan())

    assert attempts["n"] > 31  # transient faults were retried
    assert {r.key for r in report.failed} == broken
    assert all("cannot reach S3" in r.reason for r in report.failed)
    assert len(report.uploaded) == 29  # every other image and thumbnail, and the (derived) embedding cache
    assert report.metadata.status == "not written" and "never points at a missing object" in report.metadata.detail
    assert "metadata/products.json" not in bucket_keys()
    assert report.exit_code == 1

    # The network is back: the re-run sends only the two missing files, then the catalog.
    plan = fresh_migration().plan()
    assert {i.key for i in plan.items if i.action == UPLOAD} == broken
    report = fresh_migration().execute(plan)
    assert report.ok and {r.key for r in report.uploaded} == broken
    assert len(bucket_products()) == 15


# ----------------------------------------------------------------------------------------------- merge


def product(pid: str, name: str = "n") -> Product:
    return Product(id=pid, name=name, category="c", image_key=f"images/{pid}.jpg",
                   created_at="2026-01-01T00:00:00+00:00")


def test_merge_keeps_bucket_only_products_and_reports_differences():
    bucket = [product("b"), product("same"), product("differs", "theirs")]
    local = [product("same"), product("differs", "ours"), product("new"), product("held")]
    merge = merge_products(bucket, local, overwrite=False, held_back={"held"})
    assert [p.id for p in merge.products] == ["b", "same", "differs", "new"]
    assert merge.products[2].name == "theirs"
    assert (merge.added, merge.conflicts, merge.held_back, merge.kept, merge.unchanged) == (
        ("new",), ("differs",), ("held",), 1, 1)

    merge = merge_products(bucket, local, overwrite=True)
    assert merge.products[2].name == "ours" and merge.replaced == ("differs",)


def test_a_corrupt_bucket_catalog_stops_the_plan_and_is_left_untouched(aws, local_catalog):
    from vpm.catalog import CatalogCorrupt

    local_catalog.add(1)
    s3().put_object(Bucket=BUCKET, Key="metadata/products.json", Body=b"{not json")
    with pytest.raises(CatalogCorrupt, match="metadata/products.json in s3://vpm-test-bucket .* left untouched"):
        fresh_migration().plan()
    assert s3().get_object(Bucket=BUCKET, Key="metadata/products.json")["Body"].read() == b"{not json"


def test_half_a_key_pair_is_named_instead_of_failing_inside_boto(aws, local_catalog, monkeypatch):
    local_catalog.add(1)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    # Settings refuse it at load time (the page shows that line)...
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID is not set") as err:
        load_settings(aws_access_key_id=None, aws_secret_access_key="typed-secret")
    assert "typed-secret" not in str(err.value)
    # ...and settings built without validation still get a named failure, not a TypeError inside botocore.
    settings = load_settings(aws_access_key_id=None, aws_secret_access_key=None).model_copy(
        update={"aws_access_key_id": None, "aws_secret_access_key": SecretStr("typed-secret")}
    )
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID is not set") as err:
        Migration(settings)
    assert "typed-secret" not in str(err.value)
