"""S3 against a real S3 server (moto_server over HTTP), with real faults in between."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from crmops.config import S3Config
from crmops.democrm.load import create
from crmops.engines import Fingerprint, open_engine
from crmops.errors import IntegrityError, RepositoryNotFound, StorageAccessDenied, StorageUnreachable
from crmops.storage.local import LocalStore
from crmops.storage.s3 import S3Store
from tests.conftest import s3_client
from tests.faultproxy import FaultProxy


def s3_store(endpoint: str, bucket: str, **cfg: object) -> S3Store:
    return S3Store(f"s3://{bucket}/crm/prod", S3Config(endpoint_url=endpoint, **cfg))


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return s3_store(request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket"))


def test_store_contract(store) -> None:  # type: ignore[no-untyped-def]
    store.put("data/ab/abc", b"\x00chunk\xff")
    store.put("snapshots/s1", b"manifest")
    assert store.get("data/ab/abc") == b"\x00chunk\xff"
    assert store.exists("snapshots/s1") and not store.exists("snapshots/s2")
    assert sorted(store.list("data/")) == [("data/ab/abc", 7)]
    assert sorted(k for k, _ in store.list()) == ["data/ab/abc", "snapshots/s1"]
    store.delete("snapshots/s1")
    assert not store.exists("snapshots/s1")
    with pytest.raises(IntegrityError, match="snapshots/s1"):
        store.get("snapshots/s1")


def test_multipart_object(s3_endpoint: str, s3_bucket: str) -> None:
    store = s3_store(s3_endpoint, s3_bucket)
    big = os.urandom(70 << 20)
    store.put("data/big", big)
    assert store.get("data/big") == big


def test_every_request_survives_20_percent_faults(s3_endpoint: str, s3_bucket: str) -> None:
    with FaultProxy(s3_endpoint, rate=0.2, seed=7, stall_seconds=2.5) as proxy:
        store = s3_store(proxy.url, s3_bucket, timeout_seconds=1.5, max_attempts=12)
        blobs = {f"data/{i:02x}/{i}": os.urandom(1000 + i) for i in range(40)}
        for key, blob in blobs.items():
            store.put(key, blob)
        for key, blob in blobs.items():
            assert store.get(key) == blob
        assert len(list(store.list("data/"))) == 40
    assert all(n > 0 for n in proxy.faults.values()), proxy.faults


def test_object_lock_keeps_snapshot_objects(s3_endpoint: str, s3_lock_bucket: str) -> None:
    store = s3_store(s3_endpoint, s3_lock_bucket, object_lock_days=7)
    store.put("snapshots/s1", b"manifest")
    store.put("locks/l1", b"lock")  # locks must stay deletable
    client = s3_client(s3_endpoint)
    head = client.head_object(Bucket=s3_lock_bucket, Key="crm/prod/snapshots/s1")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=6)
    version = head["VersionId"]
    with pytest.raises(Exception, match="AccessDenied"):
        client.delete_object(Bucket=s3_lock_bucket, Key="crm/prod/snapshots/s1", VersionId=version)
    store.delete("locks/l1")


def test_errors_are_one_clear_class(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StorageUnreachable):
        S3Store("s3://b/p", S3Config(endpoint_url="http://127.0.0.1:9", max_attempts=2, timeout_seconds=1)).get("x")
    with pytest.raises(RepositoryNotFound):
        s3_store(s3_endpoint, "no-such-bucket").get("config")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(StorageAccessDenied):
        s3_store(s3_endpoint, "any").get("config")


def _config(tmp_path: Path, db: str, endpoint: str, bucket: str, **s3: object) -> Path:
    path = tmp_path / "crmops.yaml"
    path.write_text(yaml.safe_dump({
        "database": {"url": db},
        "repository": {"url": f"s3://{bucket}/crm", "chunk_avg_kib": 128,
                       "s3": {"endpoint_url": endpoint, "timeout_seconds": 1.5, "max_attempts": 12, **s3}},
        "encryption": {"passphrase": "s3 test passphrase"}, "state_dir": str(tmp_path / "state")}))
    return path


def _crmops(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    return subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "--json", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_backup_restore_check_through_faults(pg_url_factory, s3_endpoint: str, s3_bucket: str,  # type: ignore[no-untyped-def]
                                             tmp_path: Path) -> None:
    src, dst = pg_url_factory(), pg_url_factory()
    create(src, size="small")
    with FaultProxy(s3_endpoint, rate=0.2, seed=3, stall_seconds=2.5) as proxy:
        config = _config(tmp_path, src, proxy.url, s3_bucket)
        for args in (("repo", "init"), ("backup",), ("restore", "latest", "--to", dst), ("check", "--read-data")):
            r = _crmops(config, *args)
            assert r.returncode == 0, (args, r.stderr)
        snap = json.loads(_crmops(config, "snapshots").stdout)[0]["id"]
    assert sum(proxy.faults.values()) >= 5, proxy.faults
    from crmops.config import load_config
    from crmops.repository import open_repository

    os.environ.pop("CRMOPS_CONFIG", None)
    manifest = open_repository(load_config(_config(tmp_path, src, s3_endpoint, s3_bucket))).manifest(snap)
    assert Fingerprint.from_dict(manifest["fingerprint"]).compare(open_engine(dst).fingerprint()) == []


def test_unreachable_bucket_is_exit_20(tmp_path: Path) -> None:
    config = _config(tmp_path, f"sqlite:///{tmp_path / 'crm.db'}", "http://127.0.0.1:9", "b", max_attempts=2)
    create(f"sqlite:///{tmp_path / 'crm.db'}", size="small")
    r = _crmops(config, "backup")
    assert r.returncode == 20 and r.stderr.count("\n") == 1 and "cannot reach S3" in r.stderr


def test_always_failing_s3_reports_our_attempts_not_botocores(s3_endpoint: str, s3_bucket: str) -> None:
    with FaultProxy(s3_endpoint, rate=1.0, seed=1, kinds=("503",)) as proxy:
        store = s3_store(proxy.url, s3_bucket, max_attempts=3, timeout_seconds=1.5)
        with pytest.raises(StorageUnreachable) as failed:
            store.put("data/ab/abc", b"chunk")
    message = failed.value.message
    assert "max retries" not in message, message
    assert "SlowDown" in message and "PutObject" in message and "after 3 attempts in " in message, message
    assert proxy.faults["503"] >= 3  # every attempt really went out (and failed)
    with pytest.raises(StorageUnreachable, match=r"cannot reach S3 \(\w+\) after 2 attempts in [\d.]+ s"):
        S3Store("s3://b/p", S3Config(endpoint_url="http://127.0.0.1:9", max_attempts=2, timeout_seconds=1)).get("x")


def _kind(method: str, path: str, bucket: str) -> str:
    """'LIST data/', 'PUT data/', 'GET config', ...: a request by what it asks, the object's name cut to its prefix."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(path)
    query = parse_qs(parts.query)
    key = parts.path.removeprefix(f"/{bucket}").lstrip("/").removeprefix("crm").lstrip("/")
    if method == "GET" and "list-type" in query:
        return f"LIST {query.get('prefix', [''])[0].removeprefix('crm/')}"
    if "object-lock" in query:
        return f"{method} ?object-lock"
    return f"{method} {key.split('/')[0] + '/' if '/' in key else key}"


def test_a_backup_asks_s3_a_fixed_few_requests_and_one_put_per_new_chunk(s3_endpoint: str, s3_bucket: str,
                                                                         tmp_path: Path) -> None:
    """No listing, HEAD or GET per chunk: what a backup asks beyond its new chunks' PUTs does not grow
    with the dump. The lock protocol stays whole: list, write, list again, delete."""
    from collections import Counter

    db = f"sqlite:///{tmp_path / 'crm.db'}"
    create(db, size="small")
    with FaultProxy(s3_endpoint, rate=0) as proxy:
        config = _config(tmp_path, db, proxy.url, s3_bucket)  # 128 KiB chunks: a dozen or more
        assert _crmops(config, "repo", "init").returncode == 0
        asked = []
        for _ in range(2):  # the first stores every chunk, the second (nothing changed) none
            proxy.log.clear()
            r = _crmops(config, "backup")
            assert r.returncode == 0, r.stderr
            asked.append((json.loads(r.stdout), Counter(_kind(m, p, s3_bucket) for m, p in proxy.log)))
    (first, one), (second, two) = asked
    assert first["chunks_new"] >= 10 and second["chunks_new"] == 0, (first, second)
    fixed = {"GET config": 1, "LIST keys/": 1, "LIST locks/": 2, "PUT locks/": 1, "LIST data/": 1,
             "LIST quarantine/": 1, "LIST snapshots/": 1, "PUT snapshots/": 1, "DELETE locks/": 1,
             "LIST ": 1}  # the last: the whole repository's size for the run history and metrics
    # the first also reads its key slot once (then it is cached under state_dir)
    assert one == Counter({**fixed, "GET keys/": 1, "PUT data/": first["chunks_new"]}), one
    assert two == Counter(fixed), two  # the first's manifest was cached as it was written
