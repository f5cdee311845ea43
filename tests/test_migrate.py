"""vpm.migration against moto's HTTP server: check, plan (dry run), execute, verify, resume, conflicts, faults,
and the catalog in the bucket afterwards (product rows and vectors written through the engine)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import boto3
import pytest
from pydantic import SecretStr

from vpm.backends import engine
from vpm.backends.lance_catalog import LanceCatalogStore
from vpm.core.catalog import Photo, Product
from vpm.core.config import ConfigError, load_settings
from vpm.core.matcher import Matcher
from vpm.core.storage import S3Storage, StorageError
from vpm.migration import (
    CONFLICT,
    MISSING,
    OVERWRITE,
    SKIP,
    UPLOAD,
    Migration,
    MigrationError,
    catalog_size,
    merge_products,
    plan_fingerprint,
)
from vpm.migration import execute as execute_module
from vpm.migration.checks import region_verdict
from vpm.migration.files import bucket_key

from conftest import REGION, CountingEmbedder, make_product_photo
from fakes import ColourMeanEmbedder

WRITE_OPS = {"PutObject", "DeleteObject", "DeleteObjects", "CopyObject", "CreateMultipartUpload", "UploadPart",
             "CompleteMultipartUpload", "PutBucketVersioning", "PutBucketEncryption"}
LEGACY = Path(__file__).parent / "fixtures" / "legacy-catalog"


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


def migrate(**kwargs):
    migration = fresh_migration()
    return migration.execute(migration.plan(**kwargs))


def bucket_storage(lc) -> S3Storage:
    return S3Storage(lc.bucket, REGION, endpoint_url=lc.endpoint)


def put_bucket_products(lc, products) -> None:
    """Products the bucket already has (written through the engine, as the app on S3 would)."""
    where = engine.location(lc.bucket_settings())
    assert LanceCatalogStore(where).add(products) == []


# ----------------------------------------------------------------------------------------------- check


def by_name(checks):
    return {c.name: c for c in checks}


def test_check_passes_on_a_good_setup_and_removes_its_probe(local_catalog):
    local_catalog.add(3)
    s3 = local_catalog.s3()
    s3.put_bucket_versioning(Bucket=local_catalog.bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(Bucket=local_catalog.bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})

    checks = fresh_migration().check()

    assert [c for c in checks if c.status != "pass"] == []
    names = set(by_name(checks))
    assert {"credentials", "bucket exists", "bucket region", "list objects", "write probe", "read probe",
            "delete probe", "bucket versioning", "default encryption", "bucket catalog", "local catalog readable",
            "local catalog consistent", "local vectors"} <= names
    assert "AES256" in by_name(checks)["default encryption"].detail
    assert "no catalog tables in the bucket yet" in by_name(checks)["bucket catalog"].detail
    assert "fake-colour" in by_name(checks)["local vectors"].detail
    assert local_catalog.bucket_keys() == set()  # the probe is gone, and no table was created


def test_check_warns_when_versioning_and_default_encryption_are_off(local_catalog):
    local_catalog.add(1)
    checks = by_name(fresh_migration().check())
    assert checks["bucket versioning"].status == "warn"
    assert "put-bucket-versioning" in checks["bucket versioning"].fix
    assert checks["default encryption"].status == "warn"
    assert "S3_SSE" in checks["default encryption"].fix
    assert all(c.status != "fail" for c in checks.values())


def test_check_counts_s3_sse_as_encryption(local_catalog, monkeypatch):
    local_catalog.add(1)
    monkeypatch.setenv("S3_SSE", "AES256")
    assert by_name(fresh_migration().check())["default encryption"].status == "pass"


def test_check_missing_bucket_fails_with_the_command_that_creates_it(local_catalog, monkeypatch):
    local_catalog.add(1)
    monkeypatch.setenv("S3_BUCKET_NAME", "no-such-bucket-here")
    checks = fresh_migration().check()
    bucket = by_name(checks)["bucket exists"]
    assert bucket.status == "fail"
    assert "does not exist" in bucket.detail
    assert "aws s3 mb s3://no-such-bucket-here --region us-east-1" in bucket.fix
    assert "write probe" not in by_name(checks)  # no noise after the first failure
    assert by_name(checks)["local catalog readable"].status == "pass"  # the local side is still checked


def test_check_bucket_in_another_region_names_it(local_catalog, monkeypatch):
    local_catalog.add(1)
    name = local_catalog.bucket[:40] + "-eu"
    boto3.client("s3", region_name="eu-west-1", endpoint_url=local_catalog.endpoint).create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    monkeypatch.setenv("S3_BUCKET_NAME", name)
    region = by_name(fresh_migration().check())["bucket region"]
    # Behind S3_ENDPOINT_URL (moto here) a region is only a hint; on AWS itself it is a failure.
    assert region.status == "warn"
    assert "eu-west-1" in region.detail and region.fix == "set S3_REGION=eu-west-1"
    assert region_verdict("eu-west-1", "us-east-1", custom_endpoint=False).status == "fail"


def test_check_without_credentials_fails_with_how_to_set_them(local_catalog, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup either
    local_catalog.add(1)
    checks = fresh_migration().check()
    assert checks[0].name == "credentials" and checks[0].status == "fail"
    assert "AWS_ACCESS_KEY_ID" in checks[0].fix
    assert "bucket exists" not in by_name(checks)


def test_check_reports_products_whose_image_is_missing(local_catalog):
    local_catalog.add(3)
    (local_catalog.root / "images" / "p0001.jpg").unlink()
    consistent = by_name(fresh_migration().check())["local catalog consistent"]
    assert consistent.status == "fail"
    assert "p0001" in consistent.detail and "images/p0001.jpg" in consistent.detail
    assert "python -m vpm delete" in consistent.fix


def test_check_reports_an_empty_local_catalog_as_a_warning_and_creates_nothing(local_catalog):
    readable = by_name(fresh_migration().check())["local catalog readable"]
    assert readable.status == "warn" and "nothing to migrate" in readable.fix
    assert local_catalog.snapshot() == {}  # no empty table was made just to be read


def test_check_reports_photos_without_a_local_vector(local_catalog):
    local_catalog.add(2, vectors=False)
    vectors = by_name(fresh_migration().check())["local vectors"]
    assert vectors.status == "warn" and "embeds every photo" in vectors.fix


def test_migration_requires_a_bucket_name(local_catalog, monkeypatch):
    monkeypatch.delenv("S3_BUCKET_NAME")
    with pytest.raises(MigrationError, match="S3_BUCKET_NAME is not set"):
        fresh_migration()


# ------------------------------------------------------------------------------------------------ plan


def test_dry_run_plans_upload_skip_and_conflict_and_writes_nothing(local_catalog, api_calls):
    products = local_catalog.add(5)
    local, s3, bucket = local_catalog.storage, local_catalog.s3(), local_catalog.bucket
    target = bucket_storage(local_catalog)
    image = [p.photos[0].key for p in products]
    # p0000: identical, stored with a checksum. p0001: identical, stored by another tool without one
    # (the plan falls back to a download). p0002: same size, other bytes. p0003's thumbnail: other size.
    target.put(image[0], local.get(image[0]), "image/jpeg")
    s3.put_object(Bucket=bucket, Key=image[1], Body=local.get(image[1]))
    s3.put_object(Bucket=bucket, Key=image[2], Body=bytes(b ^ 0xFF for b in local.get(image[2])))
    s3.put_object(Bucket=bucket, Key=products[3].photos[0].thumbnail_key, Body=b"short")
    before_bucket, before_local = local_catalog.bucket_objects(), local_catalog.snapshot()
    api_calls.clear()

    plan = fresh_migration().plan()

    actions = {i.key: i.action for i in plan.items}
    assert actions[image[0]] == SKIP and actions[image[1]] == SKIP
    assert actions[image[2]] == CONFLICT and actions[products[3].photos[0].thumbnail_key] == CONFLICT
    assert actions[image[4]] == UPLOAD
    conflict = next(i for i in plan.items if i.key == products[3].photos[0].thumbnail_key)
    assert "bucket has 5 bytes" in conflict.reason
    totals = plan.totals()
    assert totals["files"] == 10  # 5 images and 5 thumbnails: never products.json, segments or table files
    assert totals[SKIP]["files"] == 2 and totals[CONFLICT]["files"] == 2 and totals[UPLOAD]["files"] == 6
    assert totals[UPLOAD]["bytes"] == sum(i.size for i in plan.items if i.action == UPLOAD)
    assert plan.products.action == "write"
    assert set(plan.products.added) == {"p0000", "p0001", "p0004"}
    assert set(plan.products.held_back) == {"p0002", "p0003"}  # never point them at the bucket's other bytes
    assert [(m.model_id, len(m.to_copy)) for m in plan.vectors] == [("fake-colour", 3)]
    assert plan.estimate.one_time_total > 0
    text = plan.as_text()
    assert "conflict" in text and "Estimated cost" in text and "fake-colour: 3 to copy" in text
    json.dumps(plan.as_dict())  # the page and --json render it

    assert not WRITE_OPS & set(api_calls), api_calls
    assert local_catalog.bucket_objects() == before_bucket  # no table either: LanceDB wrote nothing
    assert local_catalog.snapshot() == before_local


def test_dry_run_opens_the_bucket_tables_only_to_read_them(local_catalog, api_calls):
    local_catalog.add(3)
    assert migrate().ok
    local_catalog.add(2, start=3)  # new local products: the plan has rows and vectors to write
    before = local_catalog.bucket_objects()
    api_calls.clear()

    plan = fresh_migration().plan()

    assert set(plan.products.added) == {"p0003", "p0004"} and len(plan.products.unchanged) == 3
    assert plan.vectors[0].already_there == 3 and len(plan.vectors[0].to_copy) == 2
    assert not WRITE_OPS & set(api_calls), api_calls
    assert local_catalog.bucket_objects() == before  # every table file as it was: nothing committed


def without_credentials(monkeypatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup either


def test_without_credentials_the_plan_is_the_local_catalogs_alone_and_cannot_run(local_catalog, monkeypatch,
                                                                                 api_calls):
    """A person deciding whether to move to S3 sees every file, its bytes and the cost before any AWS account."""
    products = local_catalog.add(3)
    without_credentials(monkeypatch)
    api_calls.clear()

    migration = fresh_migration()
    plan = migration.plan()

    assert not plan.compared
    assert api_calls == []  # the bucket was not asked anything
    keys = {i.key for i in plan.items}
    assert keys == {k for p in products for k in (p.photos[0].key, p.photos[0].thumbnail_key)}
    assert {i.action for i in plan.items} == {UPLOAD} and all(i.size > 0 for i in plan.items)
    assert plan.upload_bytes == sum(i.size for i in plan.items)
    assert set(plan.products.added) == {"p0000", "p0001", "p0002"}
    assert [(m.model_id, len(m.to_copy)) for m in plan.vectors] == [("fake-colour", 3)]
    assert plan.estimate.one_time_total > 0
    text = plan.as_text()
    assert "upload    images/p0000.jpg" in text and "Estimated cost: migration $" in text
    assert "warning: no AWS credentials found, so this plan is made from the local catalog alone" in text
    assert "conflicts with it, are not checked until credentials are set" in text
    assert plan.as_dict()["compared_with_bucket"] is False
    with pytest.raises(MigrationError, match="no AWS credentials found, so the bucket could not be compared"):
        migration.execute(plan)
    assert local_catalog.bucket_keys() == set()


def test_plan_blocks_the_products_when_a_local_image_is_missing(local_catalog):
    local_catalog.add(3)
    (local_catalog.root / "images" / "p0001.jpg").unlink()
    plan = fresh_migration().plan()
    assert [i.key for i in plan.items if i.action == MISSING] == ["images/p0001.jpg"]
    assert plan.blocked and plan.products.action == "blocked" and "missing locally" in plan.products.detail


def test_the_cost_estimate_measures_the_catalog_the_one_way_costs_does(local_catalog):
    local_catalog.add(4)
    plan = fresh_migration().plan()
    size = catalog_size(local_catalog.storage, load_settings())
    assert plan.estimate.catalog == size
    assert (size.images, size.thumbnails) == (4, 4) and size.metadata_objects > 0  # the local tables


# ------------------------------------------------------------------------------------------ fingerprint


def test_the_fingerprint_follows_every_setting_the_plan_depends_on(local_catalog, monkeypatch):
    local_catalog.add(1)
    settings = load_settings()
    plan = Migration(settings).plan()
    assert plan.fingerprint() == plan_fingerprint(load_settings(), overwrite=False)
    assert plan.fingerprint() != plan_fingerprint(settings, overwrite=True)
    for change in ({"s3_image_prefix": "photos/"}, {"s3_bucket_name": "another-bucket"},
                   {"aws_secret_access_key": SecretStr("another-secret")}, {"s3_region": "eu-west-1"}):
        assert plan_fingerprint(settings.model_copy(update=change), overwrite=False) != plan.fingerprint(), change
    assert "testing" not in json.dumps(plan.as_dict())


def test_execute_refuses_a_plan_made_with_other_settings(local_catalog):
    local_catalog.add(2)
    plan = fresh_migration().plan()
    other = Migration(load_settings(s3_image_prefix="photos/"))
    with pytest.raises(MigrationError, match="preview again"):
        other.execute(plan)
    with pytest.raises(MigrationError, match="preview again"):  # --overwrite is part of what was previewed
        fresh_migration().execute(dataclasses.replace(plan, overwrite=True))
    assert local_catalog.bucket_keys() == set()


# --------------------------------------------------------------------------------------------- execute


def test_force_uploads_everything_with_checksums_and_writes_the_catalog_through_the_engine(local_catalog):
    products = local_catalog.add(12)
    before_local = local_catalog.snapshot()
    migration = fresh_migration(workers=4)
    seen = []

    report = migration.execute(migration.plan(), progress=lambda *a: seen.append(a))

    assert report.ok and report.exit_code == 0, report.as_text()
    assert len(report.uploaded) == 24 and not report.failed and not report.conflicts
    s3 = local_catalog.s3()
    for p in products:
        for key, ctype in ((p.photos[0].key, "image/jpeg"), (p.photos[0].thumbnail_key, "image/webp")):
            head = s3.head_object(Bucket=local_catalog.bucket, Key=key, ChecksumMode="ENABLED")
            data = local_catalog.storage.get(key)
            assert head["ContentType"] == ctype
            assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
            assert head["ContentLength"] == len(data)
    keys = local_catalog.bucket_keys()
    assert not any(k.endswith((".json", ".npz")) for k in keys)  # the catalog is tables, not plain copies
    listed = local_catalog.bucket_products()
    assert sorted(listed) == [p.id for p in products]
    assert all(listed[p.id].model_dump(exclude={"revision", "updated_at"}) ==
               p.model_dump(exclude={"revision", "updated_at"}) for p in products)
    assert report.products.status == "written" and len(report.products.added) == 12
    assert [(v.model_id, v.status, v.copied) for v in report.vectors] == [("fake-colour", "copied", 12)]
    assert local_catalog.bucket_vectors().count() == 12
    assert seen[-1][0] == seen[-1][1] == 24 and seen[-1][2] == seen[-1][3] == report.bytes_uploaded
    after_local = local_catalog.snapshot()
    ledger = [k for k in after_local if k.startswith(".vpm/migrations/")]  # the run's ledger, bookkeeping
    assert len(ledger) == 1
    assert {k: v for k, v in after_local.items() if k not in ledger} == before_local  # copies, never moves
    assert {c.name: c.status for c in report.verification} == {
        "files in bucket": "pass", "bucket catalog complete": "pass", "fake-colour vectors": "pass"}
    json.dumps(report.as_dict())


def test_the_bucket_finds_a_product_by_its_own_photo_without_embedding_anything(local_catalog):
    red = local_catalog.create("red mug", [1], product_id="red-mug")
    local_catalog.create("green bag", [2], category="bags", product_id="green-bag")
    assert migrate().ok

    embedder = CountingEmbedder(ColourMeanEmbedder())
    bucket = Matcher(local_catalog.bucket_settings(), embedder=embedder)
    response = bucket.search_image(make_product_photo(1), "query.png", threshold=0.0)

    assert response.results[0].product.id == "red-mug"
    assert response.results[0].photo_key == red.photos[0].key
    assert response.results[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert embedder.images_embedded == 1  # the query only: the catalog's vectors were copied


def test_a_product_with_three_photos_migrates_with_all_three(local_catalog):
    trio = local_catalog.create("trio", [11, 12, 13], product_id="trio")
    assert len(trio.photos) == 3
    report = migrate()

    assert report.ok and len(report.uploaded) == 6
    stored = local_catalog.bucket_products()["trio"]
    assert [p.key for p in stored.photos] == [p.key for p in trio.photos]
    assert local_catalog.bucket_keys() >= set(trio.file_keys())
    assert local_catalog.bucket_vectors().photo_keys_with_vectors([p.key for p in trio.photos]) == {
        p.key for p in trio.photos}
    embedder = CountingEmbedder(ColourMeanEmbedder())
    bucket = Matcher(local_catalog.bucket_settings(), embedder=embedder)
    hit = bucket.search_image(make_product_photo(12), "second.png", threshold=0.0).results[0]
    assert (hit.product.id, hit.photo_key) == ("trio", trio.photos[1].key)
    assert embedder.images_embedded == 1


def test_products_move_to_the_configured_prefixes(local_catalog):
    local_catalog.add(2, image_prefix="photos/", thumbnail_prefix="small/")
    report = migrate()
    assert report.ok, report.as_text()
    listed = local_catalog.bucket_products()
    assert listed["p0000"].photos[0].key == "images/p0000.jpg"
    assert listed["p0001"].photos[0].thumbnail_key == "thumbnails/p0001.webp"
    body = local_catalog.s3().get_object(Bucket=local_catalog.bucket, Key="images/p0000.jpg")["Body"].read()
    assert body == local_catalog.storage.get("photos/p0000.jpg")
    assert local_catalog.bucket_vectors().photo_keys_with_vectors(["images/p0000.jpg", "images/p0001.jpg"]) == {
        "images/p0000.jpg", "images/p0001.jpg"}


def test_a_remapped_file_keeps_its_name_and_gains_the_product_id_when_needed():
    assert bucket_key("images/a.jpg", "p1", "images/") == "images/a.jpg"
    assert bucket_key("photos/p1-x.jpg", "p1", "images/") == "images/p1-x.jpg"
    assert bucket_key("photos/front.jpg", "p1", "images/") == "images/p1-front.jpg"
    assert bucket_key("photos/p10.jpg", "p1", "images/") == "images/p1-p10.jpg"


def test_an_old_products_json_catalog_is_upgraded_then_migrated_without_copying_its_files(local_catalog):
    for path in sorted(LEGACY.rglob("*")):
        if path.is_file() and path.name != "README.md":
            target = local_catalog.root / path.relative_to(LEGACY)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    old_json = (local_catalog.root / "metadata" / "products.json").read_bytes()

    report = migrate()

    assert report.ok, report.as_text()
    assert sorted(local_catalog.bucket_products()) == ["blue-mug", "desk-lamp", "red-mug", "trail-shoe"]
    assert [(v.model_id, v.copied) for v in report.vectors] == [("efficientnet-lite0", 4)]
    keys = local_catalog.bucket_keys()
    assert not any(k.endswith((".npz", "products.json", ".upgraded")) for k in keys)
    assert (local_catalog.root / "metadata" / "products.json").read_bytes() == old_json  # left as it was


def test_rerun_after_success_writes_nothing(local_catalog, api_calls):
    local_catalog.add(6)
    assert migrate().ok
    before = local_catalog.bucket_objects()
    api_calls.clear()

    migration = fresh_migration()
    plan = migration.plan()
    assert plan.nothing_to_do and {i.action for i in plan.items} == {SKIP}
    report = migration.execute(plan)

    assert report.ok and len(report.skipped) == 12 and not report.uploaded
    assert report.products.status == "unchanged" and report.products.rows_written == 0
    assert report.vectors_copied == 0
    assert "PutObject" not in api_calls
    assert local_catalog.bucket_objects() == before  # no table version either


def test_sse_setting_encrypts_every_uploaded_file(local_catalog, monkeypatch):
    products = local_catalog.add(2)
    monkeypatch.setenv("S3_SSE", "AES256")
    assert migrate().ok
    for key in (products[0].photos[0].key, products[1].photos[0].thumbnail_key):
        head = local_catalog.s3().head_object(Bucket=local_catalog.bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256"


def test_bucket_products_are_kept_never_replaced(local_catalog):
    local_catalog.add(3)
    bucket_storage(local_catalog).put("images/theirs.jpg", b"their image", "image/jpeg")
    theirs = Product(id="theirs", name="Theirs", category="x",
                     photos=[Photo(key="images/theirs.jpg", sha256=hashlib.sha256(b"their image").hexdigest())])
    put_bucket_products(local_catalog, [theirs])

    report = migrate()

    assert report.ok and report.products.kept == 1
    assert sorted(local_catalog.bucket_products()) == ["p0000", "p0001", "p0002", "theirs"]


def test_conflicts_are_reported_and_kept_until_overwrite(local_catalog):
    products = local_catalog.add(3)
    image0 = products[0].photos[0].key
    # The bucket already has p0000 with another image, and p0001's row differs (another name).
    bucket_storage(local_catalog).put(image0, b"someone else's photo", "image/jpeg")
    put_bucket_products(local_catalog, [products[0].model_copy(update={"name": "Their p0"}),
                                        products[1].model_copy(update={"name": "Their p1"})])

    migration = fresh_migration()
    report = migration.execute(migration.plan())

    assert not report.ok and report.exit_code == 1
    assert [r.key for r in report.conflicts] == [image0]
    assert report.products.conflicts == ("p0001",) and report.products.held_back == ("p0000",)
    s3 = local_catalog.s3()
    assert s3.get_object(Bucket=local_catalog.bucket, Key=image0)["Body"].read() == b"someone else's photo"
    names = {pid: p.name for pid, p in local_catalog.bucket_products().items()}
    assert names == {"p0000": "Their p0", "p0001": "Their p1", "p0002": "Product 2"}
    assert "--overwrite" in report.as_text()

    plan = migration.plan(overwrite=True)
    assert {i.key: i.action for i in plan.items}[image0] == OVERWRITE
    report = migration.execute(plan)

    assert report.ok, report.as_text()
    assert s3.get_object(Bucket=local_catalog.bucket, Key=image0)["Body"].read() == local_catalog.storage.get(image0)
    names = {pid: p.name for pid, p in local_catalog.bucket_products().items()}
    assert names == {"p0000": "Product 0", "p0001": "Product 1", "p0002": "Product 2"}
    assert local_catalog.bucket_vectors().count() == 3


def test_missing_local_image_uploads_the_rest_but_never_writes_products(local_catalog):
    local_catalog.add(3)
    (local_catalog.root / "images" / "p0001.jpg").unlink()
    report = migrate()
    assert not report.ok
    assert [r.key for r in report.failed] == ["images/p0001.jpg"]
    assert "missing locally" in report.failed[0].reason
    assert report.products.status == "not written"
    keys = local_catalog.bucket_keys()
    assert "images/p0000.jpg" in keys and not any(k.startswith("metadata/") for k in keys)


# ------------------------------------------------------------------------------ interruption and faults


def test_interrupted_run_resumes_uploading_only_what_is_missing(local_catalog, api_calls):
    local_catalog.add(20)
    migration = fresh_migration(workers=2)

    def stop_after_8(done_files, total_files, done_bytes, total_bytes):
        if done_files >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        migration.execute(migration.plan(), progress=stop_after_8)
    arrived = local_catalog.bucket_keys()
    assert 8 <= len(arrived) < 40  # in-flight uploads finish; the rest never started
    assert not any(k.startswith("metadata/") for k in arrived)  # no row points at what is not there

    api_calls.clear()
    plan = fresh_migration().plan()
    assert {i.key for i in plan.items if i.action == SKIP} == arrived
    report = fresh_migration().execute(plan)

    assert report.ok
    assert len(report.uploaded) == 40 - len(arrived) and len(report.skipped) == len(arrived)
    assert api_calls.count("PutObject") == 40 - len(arrived)  # rows and vectors go through the engine
    assert len(local_catalog.bucket_products()) == 20


def test_a_run_cut_off_between_the_products_and_the_vectors_is_finished_by_a_rerun(local_catalog, monkeypatch):
    local_catalog.create("red mug", [1], product_id="red-mug")
    local_catalog.create("trio", [11, 12, 13], product_id="trio")

    def cut_off(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies right after the product rows were committed

    with monkeypatch.context() as patch:
        patch.setattr(execute_module, "copy_vectors", cut_off)
        with pytest.raises(KeyboardInterrupt):
            migrate()

    engine.forget()  # as a new process: open the bucket's tables afresh
    assert sorted(local_catalog.bucket_products()) == ["red-mug", "trio"]  # the catalog opens, rows complete
    assert "fake-colour" not in engine_model_ids(local_catalog)

    plan = fresh_migration().plan()
    assert not plan.to_upload and not plan.products.to_write
    assert len(plan.vectors[0].to_copy) == 4
    report = fresh_migration().execute(plan)
    assert report.ok and report.products.rows_written == 0 and report.vectors_copied == 4

    embedder = CountingEmbedder(ColourMeanEmbedder())
    hit = Matcher(local_catalog.bucket_settings(), embedder=embedder).search_image(
        make_product_photo(13), "q.png", threshold=0.0).results[0]
    assert hit.product.id == "trio" and embedder.images_embedded == 1


def engine_model_ids(lc) -> list[str]:
    from vpm.backends.lance_vectors import existing_model_ids

    return existing_model_ids(engine.location(lc.bucket_settings()))


def inject_put_faults(storage: S3Storage, bucket: str, *, fail_keys: set[str], every: int):
    """Before each PutObject attempt: a connection error for `fail_keys` always, and for every `every`-th
    attempt otherwise (a transient fault that botocore's retries may hide)."""
    from urllib.parse import unquote, urlsplit

    from botocore.exceptions import EndpointConnectionError

    attempts = {"n": 0}

    def handler(request, **kwargs):
        attempts["n"] += 1
        path = unquote(urlsplit(request.url).path).lstrip("/")
        key = path.removeprefix(f"{bucket}/")  # path-style or virtual-hosted URL
        if key in fail_keys or attempts["n"] % every == 0:
            raise EndpointConnectionError(endpoint_url=request.url)

    storage.client.meta.events.register_first("before-send.s3.PutObject", handler)
    return attempts


def test_network_faults_fail_only_their_files_and_keep_the_products_unwritten(local_catalog, no_backoff):
    from botocore.config import Config

    local_catalog.add(15)
    client = boto3.client("s3", region_name=REGION, endpoint_url=local_catalog.endpoint,
                          config=Config(retries={"mode": "standard", "max_attempts": 3}))
    target = S3Storage(local_catalog.bucket, REGION, endpoint_url=local_catalog.endpoint, client=client)
    broken = {"images/p0003.jpg", "thumbnails/p0011.webp"}
    attempts = inject_put_faults(target, local_catalog.bucket, fail_keys=broken, every=5)
    migration = fresh_migration(target_storage=target)

    report = migration.execute(migration.plan())

    assert attempts["n"] > 30  # transient faults were retried
    assert {r.key for r in report.failed} == broken
    assert all("cannot reach S3" in r.reason for r in report.failed)
    assert len(report.uploaded) == 28  # every other photo and thumbnail
    assert report.products.status == "not written"
    assert "never points at a missing object" in report.products.detail
    assert not any(k.startswith("metadata/") for k in local_catalog.bucket_keys())
    assert report.exit_code == 1

    # The network is back: the re-run sends only the two missing files, then the rows and the vectors.
    plan = fresh_migration().plan()
    assert {i.key for i in plan.items if i.action == UPLOAD} == broken
    report = fresh_migration().execute(plan)
    assert report.ok and {r.key for r in report.uploaded} == broken
    assert len(local_catalog.bucket_products()) == 15 and report.vectors_copied == 15


# ----------------------------------------------------------------------------------------------- merge


def product(pid: str, name: str = "n", **changes) -> Product:
    photo = Photo(key=f"images/{pid}.jpg", sha256="0" * 64, added_at="2026-01-01T00:00:00+00:00")
    return Product(id=pid, name=name, category="c", photos=[photo], created_at="2026-01-01T00:00:00+00:00",
                   **changes)


def test_merge_adds_leaves_identical_alone_and_reports_differences():
    bucket = {p.id: p for p in (product("same", revision=4, updated_at="2026-02-02T00:00:00+00:00"),
                                product("differs", "theirs"), product("held", "theirs"))}
    local = [product("same"), product("differs", "ours"), product("new"), product("held", "ours"),
             product("held-new")]
    merge = merge_products(bucket, local, overwrite=False, held_back={"held", "held-new"})
    assert [p.id for p in merge.to_add] == ["new"] and merge.to_replace == []
    assert (merge.unchanged, merge.conflicts, merge.held_back) == (["same"], ["differs"], ["held", "held-new"])

    merge = merge_products(bucket, local, overwrite=True)
    assert [p.id for p in merge.to_replace] == ["differs", "held"] and merge.unchanged == ["same"]


def test_a_damaged_bucket_table_stops_the_plan_and_is_left_untouched(local_catalog):
    local_catalog.add(1)
    local_catalog.s3().put_object(Bucket=local_catalog.bucket, Key="metadata/products.lance/_versions/1.manifest",
                                  Body=b"not a manifest")
    before = local_catalog.bucket_objects()
    with pytest.raises(engine.TableUnreadable, match="left untouched"):
        fresh_migration().plan()
    assert local_catalog.bucket_objects() == before


def test_a_corrupt_old_products_json_in_the_bucket_stops_the_plan(local_catalog):
    from vpm.core.catalog import CatalogCorrupt

    local_catalog.add(1)
    s3, bucket = local_catalog.s3(), local_catalog.bucket
    s3.put_object(Bucket=bucket, Key="metadata/products.json", Body=b"{not json")
    with pytest.raises(CatalogCorrupt, match=rf"metadata/products.json in s3://{bucket} .* left untouched"):
        fresh_migration().plan()
    assert s3.get_object(Bucket=bucket, Key="metadata/products.json")["Body"].read() == b"{not json"
    assert local_catalog.bucket_keys() == {"metadata/products.json"}


def test_half_a_key_pair_is_named_instead_of_failing_inside_boto(local_catalog, monkeypatch):
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


def test_a_photo_changed_on_disk_since_it_was_added_blocks_the_products(local_catalog):
    local_catalog.add(2)
    (local_catalog.root / "images" / "p0001.jpg").write_bytes(b"other bytes")
    assert "p0001 (photo images/p0001.jpg changed" in by_name(fresh_migration().check())["local catalog consistent"].detail
    plan = fresh_migration().plan()
    missing = [i for i in plan.items if i.action == MISSING]
    assert [i.key for i in missing] == ["images/p0001.jpg"] and "not the photo its product records" in missing[0].reason
    assert plan.products.action == "blocked"


def copy_legacy_fixture(put) -> None:
    for path in sorted(LEGACY.rglob("*")):
        if path.is_file() and path.name != "README.md":
            put(path.relative_to(LEGACY).as_posix(), path.read_bytes())


def test_a_bucket_migrated_by_the_first_release_is_upgraded_and_finished(local_catalog):
    copy_legacy_fixture(local_catalog.storage.put)
    bucket = bucket_storage(local_catalog)
    copy_legacy_fixture(bucket.put)  # what the first release's migration left: products.json, files, segments
    old_json = bucket.get("metadata/products.json")

    plan = fresh_migration().plan()
    assert {i.action for i in plan.items} == {SKIP}
    assert len(plan.products.unchanged) == 4 and not plan.products.to_write  # compared with its products.json
    assert any("products.json catalog of the first release" in w for w in plan.warnings)
    report = fresh_migration().execute(plan)

    assert report.ok, report.as_text()
    assert sorted(local_catalog.bucket_products()) == ["blue-mug", "desk-lamp", "red-mug", "trail-shoe"]
    assert local_catalog.bucket_vectors("efficientnet-lite0").count() == 4
    assert bucket.exists("metadata/products.json.upgraded") and bucket.get("metadata/products.json") == old_json
    before = local_catalog.bucket_objects()
    assert fresh_migration().plan().nothing_to_do
    assert local_catalog.bucket_objects() == before


# ------------------------------------------------------------------------------- requests per file


@pytest.fixture
def object_calls(monkeypatch):
    """Every S3 operation with the key it names: (operation, key or None)."""
    from botocore.client import BaseClient

    calls: list[tuple[str, str | None]] = []
    original = BaseClient._make_api_call

    def spy(self, operation_name, api_params):
        calls.append((operation_name, api_params.get("Key")))
        return original(self, operation_name, api_params)

    monkeypatch.setattr(BaseClient, "_make_api_call", spy)
    return calls


def test_uploads_are_verified_from_the_put_with_no_head_after_it(local_catalog, object_calls):
    products = local_catalog.add(6)
    files = {k for p in products for k in p.file_keys()}

    report = migrate()

    assert report.ok and len(report.uploaded) == 12
    assert sorted(k for op, k in object_calls if op == "PutObject") == sorted(files)
    assert not [k for op, k in object_calls if op in ("HeadObject", "GetObject") and k in files]


def test_a_rerun_decides_its_skips_from_listings_with_no_request_per_object(local_catalog, object_calls):
    products = local_catalog.add(8)
    assert migrate().ok
    object_calls.clear()

    plan = fresh_migration().plan()

    assert {i.action for i in plan.items} == {SKIP}
    files = {k for p in products for k in p.file_keys()}
    assert not [k for op, k in object_calls if op in ("HeadObject", "GetObject") and k in files]
    assert [op for op, _ in object_calls].count("ListObjectsV2") <= 6  # a page per prefix, not one per file


def test_a_same_size_object_with_other_bytes_is_still_found_different(local_catalog):
    (product,) = local_catalog.add(1)
    key = product.photos[0].key
    data = local_catalog.storage.get(key)
    local_catalog.s3().put_object(Bucket=local_catalog.bucket, Key=key, Body=bytes(len(data)))  # same size

    plan = fresh_migration().plan()

    (item,) = [i for i in plan.items if i.key == key]
    assert item.action == CONFLICT and item.reason == "same size, different SHA-256"


def test_a_file_over_8_mib_goes_up_in_parts_and_a_rerun_skips_it_from_the_listing(local_catalog, object_calls):
    (product,) = local_catalog.add(1, size=9 * 1024 * 1024)
    key = product.photos[0].key

    report = migrate()

    assert report.ok, report.as_text()
    ops = [op for op, k in object_calls if k == key]
    assert ops.count("CreateMultipartUpload") == 1 and ops.count("UploadPart") == 2
    assert "PutObject" not in ops and "HeadObject" not in ops
    s3 = local_catalog.s3()
    assert s3.get_object(Bucket=local_catalog.bucket, Key=key)["Body"].read() == local_catalog.storage.get(key)
    object_calls.clear()
    plan = fresh_migration().plan()
    assert {i.action for i in plan.items} == {SKIP}
    assert not [op for op, k in object_calls if k == key]


def _rewrite_put_checksums(storage: S3Storage, rewrite) -> None:
    def after_call(parsed, **_kwargs):
        rewrite(parsed)

    storage.client.meta.events.register("after-call.s3.PutObject", after_call)


def test_an_upload_s3_acknowledges_with_another_checksum_fails_and_leaves_nothing(local_catalog):
    local_catalog.add(3)
    target = bucket_storage(local_catalog)
    damaged = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()

    def damage_one(parsed):
        if parsed.get("ChecksumSHA256") and not getattr(damage_one, "done", False):
            damage_one.done = True
            parsed["ChecksumSHA256"] = damaged

    _rewrite_put_checksums(target, damage_one)
    migration = fresh_migration(target_storage=target, workers=1)

    report = migration.execute(migration.plan())

    assert len(report.failed) == 1 and "verification failed" in report.failed[0].reason
    assert report.failed[0].key not in local_catalog.bucket_keys()  # our wrong object is removed again
    assert report.products.status == "not written"
    assert fresh_migration().execute(fresh_migration().plan()).ok  # the re-run sends it again


def test_a_backend_that_returns_no_checksum_is_verified_with_a_head(local_catalog, object_calls):
    products = local_catalog.add(2)
    target = bucket_storage(local_catalog)
    _rewrite_put_checksums(target, lambda parsed: parsed.pop("ChecksumSHA256", None))
    migration = fresh_migration(target_storage=target)

    report = migration.execute(migration.plan())

    assert report.ok and len(report.uploaded) == 4
    files = {k for p in products for k in p.file_keys()}
    assert sorted(k for op, k in object_calls if op == "HeadObject" and k in files) == sorted(files)


# ------------------------------------------------------------------------------------ the ledger


@pytest.fixture
def settled(monkeypatch):
    """Files and tables count as settled as soon as the run ends (in a test everything is seconds old, which
    the ledger otherwise treats as possibly changed within the file system's timestamp granularity)."""
    from vpm.migration import ledger

    monkeypatch.setattr(ledger, "RACY_S", 0.0)


def _no_tables(monkeypatch):
    def opened(*_args, **_kwargs):
        raise AssertionError("a table was opened")

    monkeypatch.setattr(engine, "connect", opened)
    monkeypatch.setattr(engine, "open_or_create_table", opened)


def test_a_rerun_after_a_verified_run_is_decided_from_listings_without_opening_a_table(
        local_catalog, settled, object_calls, monkeypatch):
    products = local_catalog.add(5)
    assert migrate().ok
    before = local_catalog.bucket_objects()
    object_calls.clear()
    _no_tables(monkeypatch)

    migration = fresh_migration()
    plan = migration.plan()
    report = migration.execute(plan)

    assert plan.ledger is not None and plan.nothing_to_do and {i.action for i in plan.items} == {SKIP}
    assert report.ok and len(report.skipped) == 10 and report.products.status == "unchanged"
    assert report.products.unchanged == tuple(sorted(p.id for p in products))
    assert {c.name: c.status for c in report.verification} == {
        "files in bucket": "pass", "bucket catalog complete": "pass", "fake-colour vectors": "pass"}
    ops = [op for op, _key in object_calls]
    assert set(ops) <= {"ListObjectsV2", "HeadObject"} and ops.count("ListObjectsV2") <= 6
    assert not [k for op, k in object_calls if op == "HeadObject" and k.startswith(("images/", "thumbnails/"))]
    assert local_catalog.bucket_objects() == before
    json.dumps(report.as_dict())


def test_a_change_on_either_side_since_the_verified_run_makes_a_full_plan(local_catalog, settled):
    local_catalog.add(3)
    assert migrate().ok
    assert fresh_migration().plan().ledger is not None

    local_catalog.add(1, start=3)  # a product added locally: its tables changed
    plan = fresh_migration().plan()
    assert plan.ledger is None and len(plan.to_upload) == 2
    assert fresh_migration().execute(plan).ok
    assert fresh_migration().plan().ledger is not None

    local_catalog.s3().put_object(Bucket=local_catalog.bucket, Key="images/p0001.jpg", Body=b"someone else's")
    plan = fresh_migration().plan()  # an object rewritten in the bucket: its ETag in the listing changed
    assert plan.ledger is None
    assert [i.action for i in plan.items if i.key == "images/p0001.jpg"] == [CONFLICT]


def test_a_local_photo_replaced_since_the_verified_run_makes_a_full_plan(local_catalog, settled):
    (product,) = local_catalog.add(1)
    assert migrate().ok
    key = product.photos[0].thumbnail_key
    local_catalog.storage.put(key, b"a new thumbnail of other bytes")  # a new file (rename): new inode and mtime

    plan = fresh_migration().plan()

    assert plan.ledger is None
    assert [i.action for i in plan.items if i.key == key] == [CONFLICT]


def test_files_written_around_the_verified_run_are_not_trusted_from_a_stat(local_catalog, monkeypatch):
    from vpm.migration import ledger

    local_catalog.add(2)
    assert migrate().ok
    monkeypatch.setattr(ledger, "RACY_S", 1e9)  # every file counts as written around the run's end
    plan = fresh_migration().plan()
    assert plan.ledger is None and plan.nothing_to_do  # planned in full, and still nothing to do
