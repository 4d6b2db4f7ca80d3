"""The primary bucket is deleted: a drill and a point-in-time restore from the copy alone (one with its own keys)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from crmops.repository import write_key_file
from tests.conftest import s3_client
from tests.copy.test_copy_s3 import _keys
from tests.pitr.conftest import Cluster
from tests.pitr.test_restore_at import _remove, _sandbox_rows

pytestmark = pytest.mark.usefixtures("docker_client")


def _s3(endpoint: str) -> dict[str, str]:
    return {"endpoint_url": endpoint, "access_key_id": "testing", "secret_access_key": "testing"}


def test_drill_and_restore_at_from_the_copy_after_the_primary_bucket_is_deleted(
        cluster: Cluster, docker_client, s3_endpoint: str, s3_bucket: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = s3_client(s3_endpoint)
    primary = f"{s3_bucket}-primary"
    client.create_bucket(Bucket=primary)
    cfg = yaml.safe_load(cluster.config.read_text())
    cfg["repository"] = {"url": f"s3://{primary}/crm", "chunk_avg_kib": 256, "s3": _s3(s3_endpoint)}
    write_key_file(tmp_path / "offsite.key")
    tmp_path.chmod(0o755)  # the archive's restore_command may run as the postgres user
    (tmp_path / "offsite.key").chmod(0o644)
    # offsite has its own keys: snapshots and every archived WAL file are re-encrypted for it
    cfg["copies"] = [{"name": "offsite", "url": f"s3://{s3_bucket}/copy", "s3": _s3(s3_endpoint), "key": "own",
                      "encryption": {"key_file": str(tmp_path / "offsite.key")}},
                     {"name": "usb", "url": f"file://{tmp_path / 'usb'}"}]
    cluster.config.write_text(yaml.safe_dump(cfg))
    cluster.crmops("repo", "init")  # the archive now goes to the bucket (wal push reads this file)
    cluster.sql("CREATE TABLE markers (id bigserial PRIMARY KEY, note text)")
    logical = cluster.crmops_json("backup")["snapshot_id"]
    base = cluster.crmops_json("backup", "--physical")["snapshot_id"]
    for _ in range(10):
        cluster.sql("INSERT INTO markers (note) VALUES ('marker')")
    cluster.switch_and_wait()
    cluster.sql("INSERT INTO markers (note) VALUES ('last')")
    cluster.switch_and_wait()

    copied = cluster.crmops_json("copy")
    assert copied["ok"] and [c["name"] for c in copied["copies"]] == ["offsite", "usb"]
    for c in copied["copies"]:
        assert sorted(c["copied"]) == sorted([logical, base]) and c["archive"]["files_copied"] >= 2

    # the disaster: the server and the whole primary bucket are gone
    cluster.stop()
    for key in _keys(s3_endpoint, primary, ""):
        client.delete_object(Bucket=primary, Key=key)
    client.delete_bucket(Bucket=primary)
    assert cluster.crmops("snapshots", check=False).returncode != 0

    drill = json.loads(cluster.crmops("drill", "--repository", "offsite", "--report-dir",
                                      str(tmp_path / "drills")).stdout)
    assert drill["ok"] and drill["snapshot_id"] == logical, drill
    r = json.loads(cluster.crmops("restore", "--repository", "offsite", "--at", "latest", "--sandbox",
                                  "--keep").stdout)
    try:
        assert r["base_snapshot"] == base
        assert _sandbox_rows(docker_client, r["sandbox"], "SELECT note FROM markers ORDER BY id DESC LIMIT 1") \
            == ["last"]
        assert _sandbox_rows(docker_client, r["sandbox"], "SELECT count(*) FROM markers") == ["11"]
    finally:
        _remove(docker_client, r["sandbox"])
        shutil.rmtree(r["sandbox_info"]["folder"], ignore_errors=True)
    usb = cluster.crmops_json("check", "--read-data", "--repository", "usb")
    assert usb["ok"] and usb["wal"] and usb["wal"][0]["gap"] is None
