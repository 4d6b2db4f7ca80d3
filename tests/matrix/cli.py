"""The real command line, run in this process: a fresh interpreter per call costs 1-2 s on a busy
machine, and the matrix makes about fifty of them."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from crmops.cli.main import main
from tests.verify.verify_helpers import PASSPHRASE


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def cli(config: Path, *args: str) -> Run:
    out, err = io.StringIO(), io.StringIO()
    old = os.environ.get("TEST_PASSPHRASE")
    os.environ["TEST_PASSPHRASE"] = PASSPHRASE
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(["--config", str(config), *args])
                code = 0
            except SystemExit as e:
                code = int(e.code or 0)
    finally:
        if old is None:
            os.environ.pop("TEST_PASSPHRASE", None)
        else:
            os.environ["TEST_PASSPHRASE"] = old
    return Run(code, out.getvalue(), err.getvalue())
