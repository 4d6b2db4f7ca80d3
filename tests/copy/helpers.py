"""A SQLite demo CRM with attachments, backed up into a local repository, and copies configured beside it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from crmops.democrm.load import create

PASSPHRASE = "copy test passphrase 3"


def write_config(tmp_path: Path, copies: list[dict[str, Any]], repository: dict[str, Any] | None = None,
                 name: str = "crmops.yaml") -> Path:
    cfg = {"database": {"url": f"sqlite:///{tmp_path / 'crm.db'}"},
           "attachments": {"path": str(tmp_path / "files")},
           "repository": repository or {"url": f"file://{tmp_path / 'repo'}", "chunk_avg_kib": 64},
           "encryption": {"passphrase": "${TEST_PASSPHRASE}"}, "state_dir": str(tmp_path / "state"),
           "copies": copies}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def s3_copy(name: str, endpoint: str, bucket: str, **s3: Any) -> dict[str, Any]:
    return {"name": name, "url": f"s3://{bucket}/copy",
            "s3": {"endpoint_url": endpoint, "access_key_id": "testing", "secret_access_key": "testing", **s3}}


def crm(tmp_path: Path, attachment_mib: int = 2) -> None:
    """The demo CRM and attachment files of random bytes (each chunk distinct)."""
    create(f"sqlite:///{tmp_path / 'crm.db'}", size="small")
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    for i in range(attachment_mib):
        (files / f"contract-{i}.pdf").write_bytes(os.urandom(1 << 20))


def run(config: Path, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env["TEST_PASSPHRASE"] = PASSPHRASE
    r = subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "--json", *args],
                       capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stderr + r.stdout[-2000:]
    return r


def doc(r: subprocess.CompletedProcess) -> dict[str, Any]:
    d = json.loads(r.stdout)
    return d["result"] if d.get("ok") is False and "exit_code" in d else d


def tree_digest(root: Path, skip: tuple[str, ...] = ("locks/",)) -> dict[str, str]:
    """name -> sha256 of every object in a local repository (locks come and go)."""
    out = {}
    for p in sorted(root.rglob("*")):
        name = p.relative_to(root).as_posix()
        if p.is_file() and not name.startswith(skip):
            out[name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
