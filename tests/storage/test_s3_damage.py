"""Damage and leftovers on S3 (moto over HTTP, through the fault proxy): found, quarantined, healed, cleaned."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from crmops.config import load_config
from crmops.democrm.load import create
from crmops.engines import Fingerprint, open_engine
from crmops.repository import Credential, Repository, open_repository
from crmops.repository.paths import chunk_key, manifest_chunks
from crmops.storage.local import LocalStore
from tests.conftest import s3_client
from tests.faultproxy import FaultProxy
from tests.services.test_damage_healing import first_doc
from tests.storage.test_s3 import _config, _crmops, s3_store


def test_bit_flip_on_s3_is_quarantined_healed_and_restores(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path / 'crm.db'}"
    create(src, size="small")
    client = s3_client(s3_endpoint)
    with FaultProxy(s3_endpoint, rate=0.1, seed=5, stall_seconds=2.5) as proxy:
        config = _config(tmp_path, src, proxy.url, s3_bucket)
        for args in (("repo", "init"), ("backup",), ("backup",)):
            r = _crmops(config, *args)
            assert r.returncode == 0, (args, r.stderr)
        os.environ.pop("CRMOPS_CONFIG", None)
        repo = open_repository(load_config(_config(tmp_path, src, s3_endpoint, s3_bucket)))
        first, second = [m["id"] for m in repo.manifests()]
        shared = sorted(set(manifest_chunks(repo.manifest(first))) & set(manifest_chunks(repo.manifest(second))))
        flipped, cut = shared[0], shared[-1]
        key = f"crm/{chunk_key(flipped)}"
        raw = bytearray(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
        raw[33] ^= 0x01
        client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(raw))
        key = f"crm/{chunk_key(cut)}"
        raw = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        client.put_object(Bucket=s3_bucket, Key=key, Body=raw[: len(raw) // 3])
        r = _crmops(config, "check")  # from the listing alone: the truncated one
        assert r.returncode == 26 and cut in r.stderr, r.stderr
        assert [d["object"] for d in first_doc(r.stdout)["damaged"]] == [chunk_key(cut)]
        r = _crmops(config, "check", "--read-data")
        assert r.returncode == 26
        assert first_doc(r.stdout)["quarantined"] == sorted([flipped, cut])
        r = _crmops(config, "backup")
        assert r.returncode == 0, r.stderr
        healed = json.loads(r.stdout)
        assert healed["chunks_healed"] == 2 and healed["chunks_quarantined"] == 0
        dst = f"sqlite:///{tmp_path / 'restored.db'}"
        r = _crmops(config, "restore", healed["snapshot_id"], "--to", dst)
        assert r.returncode == 0, r.stderr
        r = _crmops(config, "check", "--read-data")
        assert r.returncode == 0 and json.loads(r.stdout)["quarantined"] == [], r.stderr
    assert sum(proxy.faults.values()) > 0
    manifest = repo.manifest(healed["snapshot_id"])
    assert Fingerprint.from_dict(manifest["fingerprint"]).compare(open_engine(dst).fingerprint()) == []


def test_incomplete_multipart_upload_is_reported_and_aborted(s3_endpoint: str, s3_bucket: str) -> None:
    store = s3_store(s3_endpoint, s3_bucket)
    repo = Repository.init(store, Credential(passphrase="pw"))
    up = s3_client(s3_endpoint).create_multipart_upload(Bucket=s3_bucket, Key="crm/prod/data/ab/abandoned")
    (t,) = store.temporaries()
    assert t.name == f"data/ab/abandoned?uploadId={up['UploadId']}"
    from crmops.prune.workflow import prune
    from crmops.services.check import temporary_objects

    assert [x["name"] for x in temporary_objects(repo)] == [t.name]
    # moto dates every upload 2010-11-10, so it is older than a day (the age rule is tested on disk below)
    assert t.created < datetime.now(UTC) - timedelta(days=1)
    assert prune(None, repo=repo).temporary_removed == [t.name]  # type: ignore[arg-type]
    assert store.temporaries() == []


def test_prune_removes_local_temp_files_older_than_a_day(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    repo = Repository.init(store, Credential(passphrase="pw"))
    (tmp_path / "repo" / "data" / "ab").mkdir(parents=True)
    old = tmp_path / "repo" / "data" / "ab" / ".tmp-old"
    new = tmp_path / "repo" / "data" / "ab" / ".tmp-new"
    old.write_bytes(b"x" * 10)
    new.write_bytes(b"y")
    two_days_ago = time.time() - timedelta(days=2).total_seconds()
    os.utime(old, (two_days_ago, two_days_ago))
    from crmops.prune.workflow import prune

    assert sorted(t.name for t in store.temporaries()) == ["data/ab/.tmp-new", "data/ab/.tmp-old"]
    assert prune(None, dry_run=True, repo=repo).temporary_removed == ["data/ab/.tmp-old"]  # type: ignore[arg-type]
    assert old.exists()
    assert prune(None, repo=repo).temporary_removed == ["data/ab/.tmp-old"]  # type: ignore[arg-type]
    assert not old.exists() and new.exists()
