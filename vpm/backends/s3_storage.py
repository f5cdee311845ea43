"""The S3 backend: the storage contract kept by a bucket through botocore, plus `BucketFacts`.

Every request runs inside `_request`, which turns botocore's many failure shapes into one StorageError saying
what to check (`_error`). Every client gets vpm/backends/s3_events.py's hooks: answers that are not from S3 are refused,
and PUTs of up to 1 MiB go without the Expect: 100-continue round trip.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from contextlib import contextmanager, suppress
from typing import BinaryIO
from urllib.parse import quote, urlsplit, urlunsplit

from vpm.backends.s3_events import NotS3Answer, check_every_answer, send_small_puts_at_once
from vpm.backends.url_reuse import ReusedUrls
from vpm.core.config import half_set_keys, redact_url
from vpm.core.storage_contract import (
    MULTIPART_PART_SIZE,
    MULTIPART_THRESHOLD,
    BucketAccessDenied,
    BucketNotFound,
    EndpointNotS3,
    ListPage,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    Storage,
    StorageError,
    StoredObject,
    _opened,
    md5_etag,
    multipart_etag,
    validate_key,
)
from vpm.core.storage_registry import register

# Connections kept open to the bucket: the migration's uploads in flight at most (vpm.migration.MAX_WORKERS);
# a thread beyond it would wait for a connection, and urllib3 would discard the extra one after each use.
MAX_POOL_CONNECTIONS = 32


class S3Storage(Storage):
    backend = "s3"

    def __init__(
        self,
        bucket: str,
        region: str = "us-east-1",
        *,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        profile: str | None = None,
        cdn_url: str | None = None,
        sse: str | None = None,
        url_expiry: int = 3600,
        client=None,
        max_pool_connections: int = MAX_POOL_CONNECTIONS,
    ):
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url
        self.cdn_url = cdn_url.rstrip("/") if cdn_url else None
        self.sse = sse
        self.url_expiry = url_expiry
        self._urls = ReusedUrls(url_expiry)  # the same link for a thumbnail on every redraw of a page
        self.client = client or self._make_client(
            region, endpoint_url, access_key_id, secret_access_key, session_token, profile, max_pool_connections
        )
        check_every_answer(self.client)
        send_small_puts_at_once(self.client)

    @staticmethod
    def _make_client(region, endpoint_url, key_id, secret, token, profile, pool):
        half = half_set_keys(key_id, secret)
        if half:
            raise StorageError(half)
        # botocore's own session, as boto3.Session builds it, without importing boto3 and s3transfer (a tenth of
        # a second of every command's start): only the client's own calls are used here.
        import botocore.session
        from botocore.config import Config

        session = botocore.session.Session(profile=profile)
        if key_id or secret or token:  # as boto3.Session decides; otherwise the usual chain (profile, role)
            session.set_credentials(key_id, secret, token)
        config = Config(
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=pool,
            connect_timeout=5,
            read_timeout=60,
        )
        return session.create_client("s3", region_name=region, endpoint_url=endpoint_url, config=config)

    @property
    def description(self) -> str:
        where = f" via {redact_url(self.endpoint_url)}" if self.endpoint_url else ""
        return f"s3://{self.bucket} ({self.region}){where}"

    @property
    def _endpoint_name(self) -> str:
        """The endpoint requests go to, safe to show: a password or token in S3_ENDPOINT_URL is redacted."""
        return redact_url(self.endpoint_url) if self.endpoint_url else f"AWS S3 in {self.region}"

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{key}" if key else f"bucket {self.bucket!r}"

    def _not_s3(self, key: str | None, answer: str) -> EndpointNotS3:
        if self.endpoint_url:
            check = "check S3_ENDPOINT_URL: it must be the S3 API endpoint of your storage service, not a website"
            fix = "set S3_ENDPOINT_URL to the S3 API endpoint, or leave it empty for AWS"
        else:
            check = fix = "check the network and any proxy (HTTPS_PROXY) between here and AWS"
        return EndpointNotS3(
            f"{self._endpoint_name} does not answer like S3 (it sent {answer}) for {self._where(key)}: {check}", fix
        )

    # One place that turns botocore's many failure shapes into a message a person can act on.
    def _error(self, err: Exception, key: str | None = None) -> StorageError:
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = self._where(key)
        if isinstance(err, NotS3Answer):
            return self._not_s3(key, err.answer)
        if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(
                f"no AWS credentials found for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or run where an IAM role is attached"
            )
        if isinstance(err, EndpointConnectionError):
            return StorageError(
                f"cannot reach S3 for {where} (endpoint {self._endpoint_name}): check the network, "
                "S3_REGION and S3_ENDPOINT_URL"
            )
        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "NotFound") or (status == 404 and key and code != "NoSuchBucket"):
                return ObjectNotFound(f"{key} not found in s3://{self.bucket}")
            if code == "NoSuchBucket" or (status == 404 and not key):
                return BucketNotFound(
                    f"bucket {self.bucket!r} does not exist in {self.region}: check S3_BUCKET_NAME and "
                    f"S3_REGION, or create it (aws s3 mb s3://{self.bucket} --region {self.region})"
                )
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                        "AuthorizationHeaderMalformed"):
                return StorageError(
                    f"AWS rejected the credentials for {where} ({code}): check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or the profile / IAM role) and the system clock"
                )
            if code in ("AccessDenied", "Forbidden", "AllAccessDisabled") or status == 403:
                return BucketAccessDenied(
                    f"access denied to {where}: the IAM policy needs s3:ListBucket on the bucket and "
                    "s3:GetObject, s3:PutObject, s3:DeleteObject on its objects"
                )
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return PreconditionFailed(f"{key or self.bucket} changed since it was read")
            if code == "PermanentRedirect" or status == 301:
                return StorageError(f"bucket {self.bucket!r} is not in {self.region}: set S3_REGION to its region")
            return StorageError(f"S3 error on {where} (endpoint {self._endpoint_name}): {code or status}")
        return StorageError(f"S3 error on {where} (endpoint {self._endpoint_name}): {type(err).__name__}")

    @contextmanager
    def _request(self, key: str | None = None):
        """Every S3 request, and the reading of its answer, runs inside this: whatever fails, the caller gets
        one StorageError saying what to check, never botocore's traceback."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except StorageError:
            raise
        except (ClientError, BotoCoreError, NotS3Answer) as err:
            raise self._error(err, key) from None
        except Exception as err:  # noqa: BLE001 - an unparseable body, a missing field: not an answer from S3
            raise self._not_s3(key, f"an answer that could not be read ({type(err).__name__})") from None

    def put(self, key, data, content_type=None, *, if_match=None, if_none_match=False, metadata=None):
        validate_key(key)
        kwargs = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ContentType": content_type or "application/octet-stream",
            # botocore computes the SHA-256; S3 verifies it on arrival (rejecting a corrupted upload) and
            # stores it, so head() can compare content without downloading.
            "ChecksumAlgorithm": "SHA256",
        }
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if metadata:
            kwargs["Metadata"] = metadata
        if self.sse:
            kwargs["ServerSideEncryption"] = self.sse
        with self._request(key):
            resp = self.client.put_object(**kwargs)
            return resp.get("ETag") or md5_etag(data)

    def upload(self, key, source, content_type=None, *, size=None, if_match=None, if_none_match=False,
               metadata=None):
        validate_key(key)
        with _opened(source) as stream:
            if size is None:
                size = _stream_size(stream)
            extra = {"ContentType": content_type or "application/octet-stream"}
            if metadata:
                extra["Metadata"] = metadata
            if self.sse:
                extra["ServerSideEncryption"] = self.sse
            conditions = {}
            if if_match is not None:
                conditions["IfMatch"] = if_match
            if if_none_match:
                conditions["IfNoneMatch"] = "*"
            if size > MULTIPART_THRESHOLD:
                return self._upload_parts(key, stream, size, extra, conditions)
            with self._request(key):
                # botocore reads the stream once for the SHA-256 it sends (S3 verifies the body against it and
                # echoes it back), then sends it: a file is streamed, never held whole.
                resp = self.client.put_object(Bucket=self.bucket, Key=key, Body=_Unclosable(stream),
                                              ChecksumAlgorithm="SHA256", **extra, **conditions)
                return StoredObject(key, size, resp.get("ETag", ""), _hex_checksum(resp.get("ChecksumSHA256")))

    def _upload_parts(self, key, stream, size, extra, conditions) -> StoredObject:
        """A multipart upload: each part's SHA-256, as S3 acknowledges it, must be the one computed here; the
        whole file's SHA-256 (computed while reading it) is then what S3 holds. An upload that fails is aborted."""
        with self._request(key):
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256", **extra)["UploadId"]
        whole, parts, md5s, sent = hashlib.sha256(), [], [], 0
        try:
            for number, chunk in enumerate(iter(lambda: stream.read(MULTIPART_PART_SIZE), b""), start=1):
                whole.update(chunk)
                digest = hashlib.sha256(chunk).digest()
                with self._request(key):
                    resp = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                   PartNumber=number, Body=chunk, ChecksumAlgorithm="SHA256")
                echoed = resp.get("ChecksumSHA256")
                if echoed is not None and base64.b64decode(echoed) != digest:
                    raise StorageError(f"part {number} of {self._where(key)} arrived damaged (its SHA-256 differs)")
                part = {"PartNumber": number, "ETag": resp["ETag"]}
                if echoed is not None:
                    part["ChecksumSHA256"] = echoed
                parts.append(part)
                md5s.append(hashlib.md5(chunk, usedforsecurity=False).digest())
                sent += len(chunk)
            with self._request(key):
                resp = self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **conditions)
        except BaseException:
            with suppress(StorageError), self._request(key):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        confirmed = all("ChecksumSHA256" in p for p in parts)
        return StoredObject(key, sent, resp.get("ETag") or multipart_etag(md5s),
                            whole.hexdigest() if confirmed else None, len(parts))

    def open(self, key):
        validate_key(key)
        with self._request(key):
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]

    def get(self, key):
        return self.get_with_etag(key)[0]

    def get_with_etag(self, key):
        validate_key(key)
        with self._request(key):
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
            return resp["Body"].read(), resp["ETag"]

    def head(self, key):
        validate_key(key)
        with self._request(key):
            resp = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            checksum = resp.get("ChecksumSHA256")
            return ObjectInfo(
                key=key,
                size=resp["ContentLength"],
                etag=resp["ETag"],
                last_modified=resp["LastModified"],
                content_type=resp.get("ContentType"),
                metadata=dict(resp.get("Metadata") or {}),
                sha256=base64.b64decode(checksum).hex() if checksum and "-" not in checksum else None,
            )

    def list(self, prefix="", delimiter=None, page_size=1000, token=None):
        if prefix:
            validate_key(prefix.rstrip("/") or "x")
        kwargs = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": page_size}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        with self._request():
            resp = self.client.list_objects_v2(**kwargs)
            objects = [
                ObjectInfo(key=o["Key"], size=o["Size"], etag=o.get("ETag", ""), last_modified=o["LastModified"],
                           checksum_algorithm=(o.get("ChecksumAlgorithm") or [None])[0])
                for o in resp.get("Contents", [])
            ]
            prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", [])]
            return ListPage(objects, prefixes, resp.get("NextContinuationToken") if resp.get("IsTruncated") else None)

    def delete(self, key):
        validate_key(key)
        self._urls.forget(key)
        with self._request(key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def url(self, key, expires=None):
        validate_key(key)
        if self.cdn_url:
            return f"{self.cdn_url}/{quote(key)}"
        # Private bucket: a presigned SigV4 GET that expires. Signing is local; it makes no request.
        from botocore.exceptions import BotoCoreError

        def sign() -> str:
            try:
                url = self.client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires or self.url_expiry
                )
            except BotoCoreError as err:  # no credentials to sign with, most likely
                raise self._error(err, key) from None
            # A user:password in S3_ENDPOINT_URL must not travel in every image link (and browsers refuse such
            # links anyway); the signature covers the host, not the userinfo, so the link stays valid without it.
            return _without_userinfo(url)

        return sign() if expires is not None else self._urls.get(key, sign)

    def check_access(self):
        # A one-key listing rather than HeadBucket: the same permission (s3:ListBucket), and a body that
        # shows whether S3 answered at all (a website's 404 to a HEAD looks just like a missing bucket).
        with self._request():
            self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)

    def credentials_source(self) -> str | None:
        # botocore's accessor: how the client's credential chain found them ("explicit", "env", "iam-role"...).
        credentials = self.client._get_credentials() if hasattr(self.client, "_get_credentials") else None
        return getattr(credentials, "method", None) or ("found" if credentials is not None else None)

    def bucket_region(self) -> str:
        with self._request():
            where = self.client.get_bucket_location(Bucket=self.bucket).get("LocationConstraint") or "us-east-1"
        return "eu-west-1" if where == "EU" else where  # the oldest buckets answer with the legacy name

    def versioning(self) -> str | None:
        with self._request():
            return self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")

    def default_encryption(self) -> str | None:
        from botocore.exceptions import ClientError

        try:
            with self._request():
                configuration = self.client.get_bucket_encryption(Bucket=self.bucket)
        except StorageError as err:
            cause = err.__context__
            if isinstance(cause, ClientError) and "ServerSideEncryptionConfigurationNotFound" in str(cause):
                return None
            raise
        rules = configuration.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        for rule in rules:
            algorithm = rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm")
            if algorithm:
                return algorithm
        return None



def _hex_checksum(value: str | None) -> str | None:
    """A base64 full-object SHA-256 as hex; None for none or a composite one ("...-3")."""
    if not value or "-" in value:
        return None
    return base64.b64decode(value).hex()


def _stream_size(stream: BinaryIO) -> int:
    start = stream.tell()
    end = stream.seek(0, os.SEEK_END)
    stream.seek(start)
    return end - start


class _Unclosable(io.RawIOBase):
    """A view of a caller's stream that botocore may read, seek and 'close' (it does) without closing it."""

    def __init__(self, stream: BinaryIO):
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@register("s3")
def from_settings(settings) -> S3Storage:
    def secret(v):
        return v.get_secret_value() if v is not None else None

    return S3Storage(
        settings.s3_bucket_name,
        settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
        access_key_id=secret(settings.aws_access_key_id),
        secret_access_key=secret(settings.aws_secret_access_key),
        session_token=secret(settings.aws_session_token),
        profile=settings.aws_profile,
        cdn_url=settings.s3_cdn_url,
        sse=settings.s3_sse,
        url_expiry=settings.s3_url_expiry_seconds,
    )
