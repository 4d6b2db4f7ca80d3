"""Shared set-up for the verify tests: a demo CRM, a repository, one backup, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from crmops.config import Config, load_config
from crmops.democrm.load import create

PASSPHRASE = "drill night passphrase"
ATTACHMENTS_QUERY = "SELECT storage_path, sha256 FROM attachments"


def write_config(tmp_path: Path, db_url: str, *, verify: dict[str, Any] | None = None,
                 attachments: bool = True) -> Path:
    cfg: dict[str, Any] = {
        "database": {"url": db_url}, "repository": {"url": f"file://{tmp_path / 'repo'}", "chunk_avg_kib": 256},
        "encryption": {"passphrase": "${TEST_PASSPHRASE}"}, "state_dir": str(tmp_path / "state"),
        "verify": verify or {"checks": {"attachments_query": ATTACHMENTS_QUERY}},
    }
    if attachments:
        cfg["attachments"] = {"path": str(tmp_path / "files")}
    path = tmp_path / "crmops.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600
        ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    full["TEST_PASSPHRASE"] = PASSPHRASE
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), *args], capture_output=True,
                          text=True, env=full, timeout=timeout)


def ok(r: subprocess.CompletedProcess[str]) -> Any:
    assert r.returncode == 0, r.stderr + r.stdout[-2000:]
    return json.loads(r.stdout) if r.stdout.lstrip().startswith(("{", "[")) else r.stdout


def first_json(stdout: str) -> Any:
    """The report: on failure --json output is one error envelope with the report as its result."""
    doc = json.loads(stdout)
    return doc["result"] if isinstance(doc, dict) and "exit_code" in doc and "error" in doc else doc


def demo_snapshot(tmp_path: Path, url: str, **cfg: Any) -> tuple[Path, str]:
    """A small demo CRM with attachments, a repository and one snapshot; returns (config, snapshot id)."""
    create(url, size="small", attachments_dir=tmp_path / "files")
    config = write_config(tmp_path, url, **cfg)
    ok(run(config, "repo", "init"))
    snap = ok(run(config, "--json", "backup"))["snapshot_id"]
    return config, snap


def load(config: Path) -> Config:
    os.environ["TEST_PASSPHRASE"] = PASSPHRASE
    return load_config(config)
