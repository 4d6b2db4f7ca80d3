"""wal push/fetch against S3 (moto over HTTP), and against an S3 endpoint that does not answer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

SYSID = "7443000000000000001"
PASS = "s3 wal passphrase"


def _config(tmp_path: Path, endpoint: str, bucket: str, **s3: object) -> Path:
    path = tmp_path / "crmops.yaml"
    path.write_text(yaml.safe_dump({
        "database": {"url": "postgresql://postgres@127.0.0.1:1/postgres"},
        "repository": {"url": f"s3://{bucket}/crm", "s3": {"endpoint_url": endpoint, **s3}},
        "state_dir": str(tmp_path / "state")}))
    return path


def _run(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env["CRMOPS_PASSPHRASE"] = PASS
    return subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "--json", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_push_fetch_through_s3_and_an_unreachable_endpoint(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    config = _config(tmp_path, s3_endpoint, s3_bucket)
    assert _run(config, "repo", "init").returncode == 0
    seg = tmp_path / "000000010000000000000003"
    seg.write_bytes(os.urandom(1 << 20) + bytes(15 << 20))  # a segment's usual shape: written head, zero tail
    r = _run(config, "wal", "push", str(seg), "--system-id", SYSID)
    assert r.returncode == 0 and json.loads(r.stdout)["outcome"] == "stored", r.stderr
    assert json.loads(_run(config, "wal", "push", str(seg), "--system-id", SYSID).stdout)["outcome"] == "already"
    out = tmp_path / "back"
    assert _run(config, "wal", "fetch", seg.name, str(out), "--system-id", SYSID).returncode == 0
    assert out.read_bytes() == seg.read_bytes()
    status = json.loads(_run(config, "wal", "status", "--system-id", SYSID).stdout)
    assert status["segments"] == 1 and status["newest_segment"] == seg.name

    # an endpoint nobody listens on: the push fails (PostgreSQL keeps the segment) with the storage exit code
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    bad = _config(tmp_path, dead, s3_bucket, max_attempts=2, timeout_seconds=2)
    t0 = time.monotonic()
    r = _run(bad, "wal", "push", str(seg), "--system-id", SYSID)
    assert r.returncode == 20, r.stderr
    assert "Traceback" not in r.stderr and PASS not in r.stderr
    assert time.monotonic() - t0 < 60
