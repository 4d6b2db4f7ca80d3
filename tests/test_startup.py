"""Start-up cost: `--help` and `--version` must not pay for what only real work needs.

Timing on a shared machine is noise, so the test checks the cause instead: the heavy
libraries (pydantic through the configuration, rich, yaml, SQLAlchemy, boto3, docker,
ctypes) are not imported at all.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("pydantic", "rich", "yaml", "sqlalchemy", "boto3", "botocore", "docker", "ctypes", "alembic",
         "crmops.config")

PROBE = """
import contextlib, io, json, sys
from crmops.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main({args!r})
    except SystemExit:
        pass
heavy = {heavy!r}
print(json.dumps(sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy)))
"""


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["migrate", "--help"], ["schedule", "--help"],
                                  ["config", "--help"]])
def test_help_and_version_import_nothing_heavy(args: list[str]) -> None:
    r = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == []
