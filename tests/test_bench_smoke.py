"""`make bench` runs to its end: every script it runs, on the tiny demo CRM, as a smoke (no timing asserted).

It stopped half-way with `TypeError: expected str, bytes or os.PathLike object, not Tool` once client tools
became Tool objects that may run in a container (issue 24, item 13), and the point-in-time benchmark stopped at
its password-less TCP login once a restored data directory got its own pg_hba.conf. Each script here runs as
the Makefile runs it, with fewer rounds and a short archive_timeout, and writes its figures into a file of the
test's own ($CRMOPS_BENCH_RESULTS), never into bench/results.json.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.docker, pytest.mark.slow]

#: (script as the Makefile runs it, smoke arguments, a key its figures must hold)
BENCHES = {
    "run": (["bench/run.py"], ["--size", "tiny", "--undo-tables", "20", "--everyday-rounds", "1"],
            "backup_vs_floor_tiny"),
    "verify": (["bench/verify_bench.py"], ["--size", "tiny"], "verify_s"),
    "upgrade": (["bench/upgrade_bench.py"], ["--size", "tiny", "--rounds", "1"], "upgrade_forecast_vs_real_downtime"),
    "engine_upgrade": (["bench/engine_upgrade_bench.py"], ["--size", "tiny", "--rounds", "1"],
                       "engine_upgrade_pg_upgrade_copy_pg13_to_17_tiny"),
    "pitr": (["-m", "bench.pitr_bench"], ["--size", "tiny", "--rpo-trials", "0", "--archive-timeout", "2",
                                          "--sample-pushes", "2"], "pitr_physical_sandbox_seconds_tiny"),
    "copy": (["-m", "bench.copy_bench"], ["--size", "tiny"], "copybench_copy_first_s_tiny"),
}


#: run by `make bench` only when asked; each needs a whole real CRM stack, which tests/realcrm/ runs
OPT_IN = {"realcrm_bench": "BENCH_REALCRM", "tryton_bench": "BENCH_REALCRM"}


def test_the_smoke_runs_every_script_make_bench_runs() -> None:
    """A script added to `make bench` needs its smoke here, unless it only runs when asked."""
    recipe = (ROOT / "Makefile").read_text().split("\nbench:", 1)[1].split("\n\n", 1)[0]
    ran = set(re.findall(r"bench[./](\w+?)(?:\.py)?\b(?= )", recipe))
    for script, switch in OPT_IN.items():
        line = next(x for x in recipe.splitlines() if f"bench.{script}" in x or f"bench/{script}" in x)
        assert f'"$({switch})" = 1' in line, line  # opt-in for real, not run by a plain `make bench`
        ran.discard(script)
    smoked = {argv[-1].removeprefix("bench/").removeprefix("bench.").removesuffix(".py") for argv, _, _ in
              BENCHES.values()}
    assert ran and ran == smoked, (ran, smoked)


@pytest.mark.parametrize("name", list(BENCHES))
def test_bench_runs_to_the_end_on_tiny(name: str, tmp_path: Path, pg_admin_url: str, docker_client) -> None:  # type: ignore[no-untyped-def]
    script, smoke, key = BENCHES[name]
    results = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_") or k == "CRMOPS_TESTBED_DIR"}
    env.update(CRMOPS_BENCH_RESULTS=str(results), PYTHONPATH=str(ROOT))
    before = (ROOT / "bench" / "results.json").read_bytes() if (ROOT / "bench" / "results.json").exists() else None
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, *script, *smoke], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    figures = json.loads(results.read_text())
    assert figures and (key is None or key in figures), sorted(figures)[:40]
    after = (ROOT / "bench" / "results.json").read_bytes() if (ROOT / "bench" / "results.json").exists() else None
    assert after == before  # the published figures are not touched by a smoke
    print(f"{name}: {time.monotonic() - t0:.1f} s")
