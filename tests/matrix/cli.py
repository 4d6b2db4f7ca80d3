"""The real command line, run in this process: a fresh interpreter per call costs 1-2 s on a busy
machine, and the matrix makes about fifty of them."""

from __future__ import annotations

import contextlib
import io
import logging
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


def cli(config: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    """`crmops --config CONFIG ARGS`, with TEST_PASSPHRASE and env set in the environment for the call only."""
    out, err = io.StringIO(), io.StringIO()
    given = {"TEST_PASSPHRASE": PASSPHRASE, **(env or {})}
    old = {name: os.environ.get(name) for name in given}
    # the command sets up the crmops logger for its own stderr and stops it propagating: put it back, or
    # later tests in this worker lose their caplog (and log into a closed buffer)
    logger = logging.getLogger("crmops")
    kept = (list(logger.handlers), logger.level, logger.propagate)
    os.environ.update(given)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(["--config", str(config), *args])
                code = 0
            except SystemExit as e:
                code = int(e.code or 0)
    finally:
        logger.handlers[:], logger.level, logger.propagate = kept
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return Run(code, out.getvalue(), err.getvalue())
