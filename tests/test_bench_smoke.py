"""`make bench` runs to its end: the verify benchmark on the small demo CRM, as a smoke (no timing asserted).

It stopped half-way with `TypeError: expected str, bytes or os.PathLike object, not Tool` once client tools
became Tool objects that may run in a container (issue 24, item 13).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_verify_bench_runs_to_the_end_on_small(tmp_path: Path, pg_admin_url: str, docker_client) -> None:  # type: ignore[no-untyped-def]
    results = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_") or k == "CRMOPS_TESTBED_DIR"}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "verify_bench.py"), "--size", "small", "--results",
                        str(results)], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads(results.read_text())
    assert figures["verify_size"] == "small" and figures["verify_s"] > 0 and figures["bare_pg_restore_s"] > 0
