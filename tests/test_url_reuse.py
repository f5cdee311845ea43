"""A presigned link is handed out again while young, so a redrawn page keeps its image URLs (no re-download)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from vpm.backends.s3_storage import S3Storage
from vpm.backends.url_reuse import ReusedUrls


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_link_is_reused_for_half_its_life_then_signed_again():
    clock, signed = Clock(), []

    def sign():
        signed.append(clock.now)
        return f"url-{len(signed)}"

    urls = ReusedUrls(3600, clock=clock)
    assert urls.get("a.jpg", sign) == "url-1"
    clock.now += 1799
    assert urls.get("a.jpg", sign) == "url-1"  # 1,801 s of its 3,600 left: still good to hand out
    clock.now += 2
    assert urls.get("a.jpg", sign) == "url-2"  # less than half left: a fresh one
    assert signed == [1000.0, 2801.0]


def test_only_so_many_links_are_kept_and_a_forgotten_one_is_signed_again():
    count = iter(range(100))
    urls = ReusedUrls(3600, kept=2)
    first = urls.get("a", lambda: f"a{next(count)}")
    urls.get("b", lambda: f"b{next(count)}")
    urls.get("c", lambda: f"c{next(count)}")  # "a" was the oldest: dropped
    assert urls.get("a", lambda: f"a{next(count)}") != first
    kept = urls.get("c", lambda: "never")
    urls.forget("c")
    assert urls.get("c", lambda: "signed again") == "signed again" != kept


@pytest.fixture
def bucket():
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="reuse")
        yield S3Storage("reuse", "us-east-1", access_key_id="testing", secret_access_key="testing")


def test_a_private_bucket_gives_the_same_thumbnail_url_on_a_redraw(bucket):
    bucket.put("images/p1/t.webp", b"x", content_type="image/webp")
    first = bucket.url("images/p1/t.webp")
    assert "X-Amz-Signature=" in first
    assert bucket.url("images/p1/t.webp") == first  # a redraw: the browser's cached image stays
    assert bucket.url("images/p1/t.webp", expires=60) != first  # a link asked with its own expiry is its own
    bucket.delete("images/p1/t.webp")
    assert bucket._urls.get("images/p1/t.webp", lambda: "new") == "new"  # a deleted object's link is forgotten
