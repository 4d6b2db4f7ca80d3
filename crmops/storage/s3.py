"""A repository in any S3-compatible bucket (AWS, MinIO, Ceph, OSS, COS, B2...).

Retries are ours, not botocore's: exponential backoff with full jitter (tenacity) on
throttling, 5xx answers, timeouts and dropped connections, so a flaky link at 2 a.m.
slows the nightly job down instead of failing it. Objects are read whole (ranged GETs
are slow on several S3 implementations); large objects are written in parallel parts.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from crmops.config import S3Config
from crmops.errors import (
    ConfigError,
    IntegrityError,
    ObjectLocked,
    RepositoryNotFound,
    StorageAccessDenied,
    StorageUnreachable,
)
from crmops.storage.base import Temporary

log = logging.getLogger("crmops.storage.s3")
MULTIPART_THRESHOLD = 64 << 20
LOCKED_PREFIXES = ("data/", "snapshots/", "keys/", "config")
#: what a restore needs: in an Object Lock bucket deleted whole (every version) or refused; other objects
#: (locks, quarantine markers, records, id maps, a removed key slot, a superseded .partial WAL segment)
#: get a delete marker, as in any versioned bucket, so `key remove` and `wal push` keep working
PROTECTED_PREFIXES = ("data/", "snapshots/", "wal/", "binlog/")
THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
             "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}
DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccountProblem", "403"}
TRANSIENT_IO = (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError,
                ResponseStreamingError, ConnectionError, TimeoutError)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return err.get("Code") in THROTTLED or status >= 500 or status == 429
    return isinstance(exc, TRANSIENT_IO) or (isinstance(exc, BotoCoreError) and "Connection" in type(exc).__name__)


def _op_name(op: str) -> str:
    return "".join(w.capitalize() for w in op.split("_"))


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.info("S3 request failed (%s), retry %d", type(exc).__name__, state.attempt_number)


#: the last S3 client built, with the settings it was built for: a job's bookkeeping at the end (the
#: repository's size, the archive's figures) lists the bucket through the client the job already built,
#: where a second one costs 0.1 CPU-s to build and new connections to open (botocore clients are thread-safe)
_last_client: tuple[dict[str, Any], Any] | None = None


def _client(cfg: S3Config) -> Any:
    global _last_client
    # secrets compare by value, and the AWS_* environment (credentials, profile, config file) counts too:
    # other credentials get a client of their own
    settings = {**cfg.model_dump(), "environment": {k: v for k, v in os.environ.items() if k.startswith("AWS_")}}
    if _last_client is not None and _last_client[0] == settings:
        return _last_client[1]
    session = boto3.session.Session(
        aws_access_key_id=cfg.access_key_id.get_secret_value() if cfg.access_key_id else None,
        aws_secret_access_key=cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None,
        region_name=cfg.region)
    client = session.client(
        "s3", endpoint_url=cfg.endpoint_url,
        config=BotoConfig(retries={"max_attempts": 1, "mode": "standard"},  # the policy is ours
                          connect_timeout=min(cfg.timeout_seconds, 10), read_timeout=cfg.timeout_seconds,
                          max_pool_connections=cfg.max_concurrency * 2,
                          s3={"addressing_style": cfg.addressing_style}))
    _last_client = (settings, client)
    return client


class S3Store:
    def __init__(self, url: str, cfg: S3Config) -> None:
        rest = url[len("s3://"):]
        self.bucket, _, prefix = rest.partition("/")
        if not self.bucket:
            raise ConfigError(f"repository URL {url!r} names no bucket (expected s3://bucket/prefix)")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{self.bucket}/{self.prefix}" + (f" at {cfg.endpoint_url}" if cfg.endpoint_url else "")
        self.cfg = cfg
        #: requests in flight at once: chunks and manifests are small objects, each a round trip
        self.concurrency = cfg.max_concurrency
        self.client = _client(cfg)
        self.transfer = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=16 << 20,
                                       max_concurrency=cfg.max_concurrency, use_threads=True)

    def _raw(self, op: str, **kwargs: Any) -> Any:
        result = getattr(self.client, op)(**kwargs)
        if op == "get_object":
            return result["Body"].read()  # inside the retry: a dropped body is retried too
        return result

    def _retrying(self) -> Retrying:
        return Retrying(retry=retry_if_exception(_transient), stop=stop_after_attempt(self.cfg.max_attempts),
                        wait=wait_random_exponential(multiplier=0.2, max=20), reraise=True, before_sleep=_log_retry)

    def _do(self, op: str, key: str | None = None, **kwargs: Any) -> Any:
        """One S3 call with our retries; failures become one clear crmops error.

        The message counts crmops's own attempts and the time they took: botocore's
        "reached max retries: 0" speaks of its retries, which are switched off.
        """
        started = time.monotonic()
        attempts = 0

        def call() -> Any:
            nonlocal attempts
            attempts += 1
            return self._raw(op, Bucket=self.bucket, **kwargs)

        def tried() -> str:
            return f"after {attempts} attempt{'s' if attempts != 1 else ''} in {time.monotonic() - started:.1f} s"

        try:
            return self._retrying()(call)
        except NoCredentialsError:
            raise StorageAccessDenied(f"{self.url}: no S3 credentials",
                                      hint="set repository.s3.access_key_id/secret_access_key or AWS_* variables") \
                from None
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "404") and key is not None:
                raise IntegrityError(f"object {key} is missing from {self.url}") from None
            if code == "NoSuchBucket" or (op == "head_bucket" and status == 404):
                raise RepositoryNotFound(f"bucket {self.bucket} does not exist at {self.cfg.endpoint_url or 'S3'}",
                                         hint=self.create_hint()) from None
            if code in DENIED or status == 403:
                raise StorageAccessDenied(f"{self.url}: S3 refused the credentials ({code or status})") from None
            detail = e.response.get("Error", {}).get("Message") or ""
            raise StorageUnreachable(f"{self.url}: S3 error {code or status} on {_op_name(op)} {tried()}"
                                     + (f": {detail}" if detail else "")) from None
        except (BotoCoreError, ConnectionError, TimeoutError) as e:
            raise StorageUnreachable(f"{self.url}: cannot reach S3 ({type(e).__name__}) {tried()}",
                                     hint="check repository.s3.endpoint_url and the network") from None

    def put(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> None:
        if retain_until is None and self.cfg.object_lock_days and key.startswith(LOCKED_PREFIXES):
            # what a snapshot needs is kept under Object Lock: a stolen credential cannot delete it
            retain_until = datetime.now(UTC) + timedelta(days=self.cfg.object_lock_days)
        extra: dict[str, Any] = {}
        if retain_until is not None:
            extra = {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": retain_until}
        if extra or (not self._checksummed and self.object_lock_state() is not False):
            # S3 refuses a PUT under Object Lock (asked for, or the bucket's default retention) without
            # Content-MD5 or a checksum; boto3 before 1.36 sends no checksum of its own
            extra["ContentMD5"] = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        if len(data) >= MULTIPART_THRESHOLD and not extra:
            import io

            def upload() -> None:
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, self.prefix + key, Config=self.transfer)

            started = time.monotonic()
            retrying = self._retrying()
            try:
                retrying(upload)
            except Exception as e:  # mapped like any other call
                n = retrying.statistics.get("attempt_number", 1)
                raise StorageUnreachable(f"{self.url}: multipart upload of {key} failed ({type(e).__name__}) after "
                                         f"{n} attempt{'s' if n != 1 else ''} in {time.monotonic() - started:.1f} s") \
                    from None
            return
        self._do("put_object", key, Key=self.prefix + key, Body=data, **extra)

    def get(self, key: str) -> bytes:
        return self._do("get_object", key, Key=self.prefix + key)

    def exists(self, key: str) -> bool:
        try:
            self._do("head_object", key, Key=self.prefix + key)
            return True
        except IntegrityError:  # a HEAD's 404 does not say whether the key or the whole bucket is missing
            if not self._bucket_known and not self.bucket_exists():
                raise RepositoryNotFound(f"bucket {self.bucket} does not exist at {self.cfg.endpoint_url or 'S3'}",
                                         hint=self.create_hint()) from None
            return False

    _bucket_known = False

    def bucket_exists(self) -> bool:
        """One HEAD on the bucket; remembered once it answers, so later checks cost nothing."""
        try:
            self._do("head_bucket")
        except RepositoryNotFound:
            return False
        self._bucket_known = True
        return True

    def create_hint(self) -> str:
        endpoint = f" --endpoint-url {self.cfg.endpoint_url}" if self.cfg.endpoint_url else ""
        return (f"create it with `aws s3 mb s3://{self.bucket}{endpoint}`, or run `crmops repo init`, which "
                "creates it when the credentials allow")

    def create_bucket(self) -> None:
        """For `repo init`: the bucket, with Object Lock when the configuration asks for it."""
        kwargs: dict[str, Any] = {}
        if self.cfg.region and self.cfg.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.cfg.region}
        if self.cfg.object_lock_days:
            kwargs["ObjectLockEnabledForBucket"] = True
        try:
            self._do("create_bucket", **kwargs)
        except StorageAccessDenied:
            raise StorageAccessDenied(f"bucket {self.bucket} does not exist and these credentials cannot create it",
                                      hint=f"create it with `aws s3 mb s3://{self.bucket}` as an account "
                                           "administrator, then run `crmops repo init` again") from None
        self._bucket_known = True

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": self.prefix + prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._do("list_objects_v2", **kwargs)
            for obj in page.get("Contents", []):
                yield obj["Key"][len(self.prefix):], obj["Size"]
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def temporaries(self) -> list[Temporary]:
        """Multipart uploads never completed nor aborted: S3 keeps (and bills) their parts until aborted."""
        out = []
        kwargs: dict[str, Any] = {"Prefix": self.prefix}
        while True:
            page = self._do("list_multipart_uploads", **kwargs)
            for up in page.get("Uploads", []):
                out.append(Temporary(f"{up['Key'][len(self.prefix):]}?uploadId={up['UploadId']}", 0,
                                     up["Initiated"]))
            if not page.get("IsTruncated"):
                return out
            kwargs.update(KeyMarker=page.get("NextKeyMarker"), UploadIdMarker=page.get("NextUploadIdMarker"))

    def remove_temporary(self, name: str) -> None:
        key, _, upload_id = name.partition("?uploadId=")
        if not upload_id:
            raise IntegrityError(f"{name!r} is not a temporary object")
        self._do("abort_multipart_upload", key, Key=self.prefix + key, UploadId=upload_id)

    def delete(self, key: str) -> None:
        """Delete key; in an Object Lock bucket, what a snapshot needs is deleted for good (every version)
        or not at all: ObjectLocked while its retention runs, instead of a delete marker that only hides it.

        When these credentials may not read the bucket's lock configuration, each such object's own
        retention is still checked first (one HEAD), so a kept object is never hidden by a marker."""
        lock = self.object_lock_state() if key.startswith(PROTECTED_PREFIXES) and not key.endswith(".partial") \
            else False
        if lock is not False:
            until = self.locked_until(key)
            if until is not None:
                raise ObjectLocked(f"{self.url}: {key} is under S3 Object Lock until {until:%Y-%m-%d %H:%M} UTC; "
                                   "nothing was deleted",
                                   hint="keep this repository's retention longer than the bucket's Object Lock "
                                        "period")
        if lock is not True:
            self._do("delete_object", key, Key=self.prefix + key)
            return
        versions = self._do("list_object_versions", Prefix=self.prefix + key)
        for v in versions.get("Versions", []) + versions.get("DeleteMarkers", []):
            if v["Key"] == self.prefix + key:  # newest first: an older version never becomes current alone
                self._do("delete_object", key, Key=v["Key"], VersionId=v["VersionId"])

    _lock_state: bool | None = None
    _lock_asked = False

    @property
    def _checksummed(self) -> bool:
        """boto3 >= 1.36 puts a CRC32 checksum on every PutObject itself: no lock lookup needed for it."""
        return getattr(self.client.meta.config, "request_checksum_calculation", None) == "when_supported"

    def object_lock_state(self) -> bool | None:
        """Whether the bucket has Object Lock (asked once); None when these credentials may not ask."""
        if not self._lock_asked:
            self._lock_asked = True
            self._lock_state = True if self.cfg.object_lock_days else None
            if self._lock_state is None:
                try:
                    conf = self._retrying()(lambda: self.client.get_object_lock_configuration(Bucket=self.bucket))
                    self._lock_state = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
                except ClientError as e:
                    code = e.response.get("Error", {}).get("Code", "")
                    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                    if not (code in DENIED or status == 403):
                        self._lock_state = False  # ObjectLockConfigurationNotFoundError: no lock
                    else:
                        log.info("%s: cannot read the bucket's Object Lock configuration (%s); each object's "
                                 "retention is checked before it is deleted", self.url, code or status)
                except BotoCoreError as e:
                    log.info("%s: Object Lock configuration not read (%s)", self.url, type(e).__name__)
        return self._lock_state

    def object_lock_enabled(self) -> bool:
        """True when the bucket has Object Lock, or may have it (these credentials may not ask)."""
        return self.object_lock_state() is not False

    def locked_until(self, key: str) -> datetime | None:
        """When the current version of key may be deleted, if that is later than now (retention or legal hold)."""
        head = self._do("head_object", key, Key=self.prefix + key)
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            return datetime.max.replace(tzinfo=UTC)
        until = head.get("ObjectLockRetainUntilDate")
        if until is not None and until.tzinfo is None:
            until = until.replace(tzinfo=UTC)
        return until.astimezone(UTC) if until is not None and until > datetime.now(UTC) else None
