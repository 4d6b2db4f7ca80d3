"""A copy in an S3 bucket with Object Lock (default retention): copy works, and neither `forget`/`prune`
with the copy's own credentials nor a raw versioned delete removes what the lock keeps."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from crmops.config import S3Config
from crmops.errors import ObjectLocked
from crmops.storage.s3 import S3Store
from tests.conftest import s3_client
from tests.copy.helpers import crm, doc, run, s3_copy, write_config


def _versions(endpoint: str, bucket: str) -> dict[str, Any]:
    """key -> sorted version ids, and the delete markers: the bucket's history (less the locks runs leave)."""
    client = s3_client(endpoint)
    out: dict[str, Any] = {"markers": []}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            if "/locks/" not in v["Key"]:
                out.setdefault(v["Key"], []).append(v["VersionId"])
        out["markers"] += [m["Key"] for m in page.get("DeleteMarkers", []) if "/locks/" not in m["Key"]]
    return {k: sorted(v) for k, v in out.items()}


def _lock_bucket(endpoint: str, name: str, mode: str = "GOVERNANCE") -> None:
    client = s3_client(endpoint)
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    client.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": mode, "Days": 30}}})


def _store(endpoint: str, bucket: str) -> S3Store:
    return S3Store(f"s3://{bucket}/copy", S3Config(endpoint_url=endpoint, access_key_id="testing",
                                                    secret_access_key="testing"))


def test_copy_onto_an_object_lock_bucket_and_forget_cannot_delete_what_it_keeps(
        tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    bucket = f"{s3_bucket}-lock"
    _lock_bucket(s3_endpoint, bucket)
    crm(tmp_path)
    short = {"keep_last": 1, "keep_hourly": 0, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0,
             "keep_yearly": 0, "pitr_days": 0}
    config = write_config(tmp_path, [{**s3_copy("offsite", s3_endpoint, bucket), "retention": short}])
    run(config, "repo", "init")
    first = doc(run(config, "backup"))["snapshot_id"]
    assert doc(run(config, "copy"))["copies"][0]["copied"] == [first]
    (tmp_path / "files" / "order.pdf").write_bytes(b"order " * 40_000)
    second = doc(run(config, "backup"))["snapshot_id"]
    assert doc(run(config, "copy"))["copies"][0]["copied"] == [second]
    head = s3_client(s3_endpoint).head_object(Bucket=bucket, Key=f"copy/snapshots/{first}")
    assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"] > datetime.now(UTC)

    # forget with the copy's own (short) retention: refused before the first delete, one line, exit 63
    before = _versions(s3_endpoint, bucket)
    r = run(config, "forget", "--prune", "--repository", "offsite", check=False)
    assert r.returncode == 63, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("crmops: error:")]
    assert len(lines) == 1 and "Object Lock" in lines[0] and f"snapshots/{first}" in lines[0], r.stderr
    assert "nothing was forgotten" in lines[0] and "Traceback" not in r.stderr
    assert _versions(s3_endpoint, bucket) == before  # no version gone, no delete marker hiding one
    # a stolen key deleting object versions directly is refused by S3 itself
    client = s3_client(s3_endpoint)
    for key, ids in before.items():
        if key != "markers" and key.startswith(("copy/snapshots/", "copy/data/")):
            with pytest.raises(client.exceptions.ClientError, match="AccessDenied"):
                client.delete_object(Bucket=bucket, Key=key, VersionId=ids[0])
    assert _versions(s3_endpoint, bucket) == before
    # crmops's own delete of a kept object says so, and leaves no delete marker
    with pytest.raises(ObjectLocked, match="under S3 Object Lock until"):
        _store(s3_endpoint, bucket).delete(f"snapshots/{first}")
    assert _versions(s3_endpoint, bucket) == before

    # the copy is whole: both snapshots, every chunk read, and a drill from it
    check = doc(run(config, "check", "--read-data", "--repository", "offsite"))
    assert check["ok"] and check["chunks_read"] == check["chunks_referenced"]
    drill = doc(run(config, "drill", "--repository", "offsite", "--report-dir", str(tmp_path / "drills")))
    assert drill["ok"]
    listed = json.loads(run(config, "snapshots", "--repository", "offsite").stdout)
    assert {s["id"] for s in listed} == {first, second}


def test_uploads_to_a_locked_bucket_carry_a_checksum_and_expired_objects_go_whole(
        s3_endpoint: str, s3_bucket: str) -> None:
    bucket = f"{s3_bucket}-lock2"
    _lock_bucket(s3_endpoint, bucket)
    store = _store(s3_endpoint, bucket)
    sent: list[dict[str, str]] = []
    store.client.meta.events.register("before-send.s3.PutObject",
                                      lambda request, **_: sent.append(dict(request.headers)))
    store.put("data/ab/abcd", b"chunk one")
    # S3 refuses a PUT into a bucket with default retention unless it carries Content-MD5 or a checksum
    assert sent and {h.lower() for h in sent[0]} & {"content-md5", "x-amz-checksum-crc32"}, sent[0]
    # with an older boto3 (no checksum of its own), crmops adds Content-MD5 in a bucket with Object Lock
    older = _store(s3_endpoint, bucket)
    older.client.meta.config.request_checksum_calculation = "when_required"
    older.client.meta.events.register("before-send.s3.PutObject",
                                      lambda request, **_: sent.append(dict(request.headers)))
    older.put("data/ab/abce", b"chunk two")
    assert "content-md5" in {h.lower() for h in sent[-1]}, sent[-1]
    assert store.object_lock_enabled() and store.locked_until("data/ab/abcd") is not None
    # an object whose retention has run out is deleted for good, every version, no marker left
    client = s3_client(s3_endpoint)
    soon = datetime.now(UTC) + timedelta(seconds=2)
    for body in (b"v1", b"v2"):
        client.put_object(Bucket=bucket, Key="copy/data/cd/cdef", Body=body, ObjectLockMode="GOVERNANCE",
                          ObjectLockRetainUntilDate=soon)
    time.sleep(3)
    store.delete("data/cd/cdef")
    versions = _versions(s3_endpoint, bucket)
    assert "copy/data/cd/cdef" not in versions and "copy/data/cd/cdef" not in versions["markers"]
    # objects that come and go (locks, a superseded .partial WAL segment, a removed key slot) are only
    # hidden by a marker, as in any versioned bucket: `wal push` and `key remove` keep working
    for key in ("locks/x", "wal/7312/0000000100000000/000000010000000000000003.partial", "keys/old"):
        store.put(key, b"transient")
        store.delete(key)
        assert not list(store.list(key))
