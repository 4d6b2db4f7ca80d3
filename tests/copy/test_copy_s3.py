"""crmops copy to S3 (moto over HTTP): killed half-way then resumed, and through a flaky link."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import s3_client
from tests.copy.helpers import PASSPHRASE, crm, doc, run, s3_copy, write_config
from tests.faultproxy import FaultProxy


def _keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    client = s3_client(endpoint)
    out: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def test_a_copy_killed_half_way_resumes_complete_without_duplicates(tmp_path: Path, s3_endpoint: str,
                                                                    s3_bucket: str) -> None:
    crm(tmp_path, attachment_mib=12)
    config = write_config(tmp_path, [s3_copy("offsite", s3_endpoint, s3_bucket, max_concurrency=2)])
    run(config, "repo", "init")
    snap = doc(run(config, "backup"))["snapshot_id"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env["TEST_PASSPHRASE"] = PASSPHRASE
    proc = subprocess.Popen([sys.executable, "-m", "crmops", "--config", str(config), "--json", "copy"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_keys(s3_endpoint, s3_bucket, "copy/data/")) < 30:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    arrived = _keys(s3_endpoint, s3_bucket, "copy/data/")
    assert len(arrived) >= 30, "the copy was not under way when killed"
    assert not _keys(s3_endpoint, s3_bucket, "copy/snapshots/")  # killed before its manifest: no snapshot yet
    r = doc(run(config, "copy"))["copies"][0]
    assert r["ok"] and r["copied"] == [snap] and r["chunks_present"] >= len(arrived)
    data = _keys(s3_endpoint, s3_bucket, "copy/data/")
    assert len(data) == len(set(data)) == len(list((tmp_path / "repo" / "data").rglob("*"))) - \
        len(list((tmp_path / "repo" / "data").glob("*")))  # exactly the repository's chunks, each once
    check = doc(run(config, "check", "--read-data", "--repository", "offsite"))
    assert check["ok"] and check["chunks_read"] == check["chunks_referenced"]
    # the killed run's lock on the copy is stale (its process is gone) and was removed by the next
    assert not _keys(s3_endpoint, s3_bucket, "copy/locks/")


def test_a_flaky_copy_target_completes(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    crm(tmp_path, attachment_mib=3)
    with FaultProxy(s3_endpoint, rate=0.2, seed=26, stall_seconds=2) as proxy:
        config = write_config(tmp_path, [s3_copy("offsite", proxy.url, s3_bucket, timeout_seconds=1,
                                                 max_attempts=20)])
        run(config, "repo", "init")
        snap = doc(run(config, "backup"))["snapshot_id"]
        r = doc(run(config, "copy"))["copies"][0]
        assert r["ok"] and r["copied"] == [snap]
        assert sum(proxy.faults.values()) >= 5, proxy.faults
    direct = write_config(tmp_path, [s3_copy("offsite", s3_endpoint, s3_bucket)], name="direct.yaml")
    assert doc(run(direct, "check", "--read-data", "--repository", "offsite"))["ok"]
