"""A small PostgreSQL dump is restored by one pg_restore in one transaction (no parallel workers);
a schema whose objects outgrow the server's lock table in one transaction is restored again the
usual way, from a target the failed transaction left as it was."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crmops.engines.postgres import ONE_TRANSACTION_LIMIT, PostgresEngine, restore_jobs
from tests.services.test_backup_restore import PASSPHRASE
from tests.services.test_restore_scope import pg_digest, pg_snapshot  # noqa: F401 - the shared snapshot

pytestmark = pytest.mark.postgres


def test_jobs_follow_the_dump_size() -> None:
    assert restore_jobs(ONE_TRANSACTION_LIMIT, cores=2) == 1
    assert restore_jobs(ONE_TRANSACTION_LIMIT + 1, cores=2) == 2
    assert restore_jobs(ONE_TRANSACTION_LIMIT + 1, cores=8) == 4
    assert restore_jobs(None, cores=8) == 1


@pytest.fixture
def made(pg_snapshot: dict[str, Any]) -> Iterator[list[str]]:  # noqa: F811
    """Target databases made by a test, dropped after it."""
    import psycopg

    names: list[str] = []
    yield names
    with psycopg.connect(pg_snapshot["admin"], autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _restore_with(pg_snapshot: dict[str, Any], tmp_path: Path, script: str,  # noqa: F811
                  made: list[str]) -> tuple[str, list[str]]:
    """crmops restore into an empty database through a pg_restore wrapper; (target, each call's arguments)."""
    import psycopg

    real = PostgresEngine(pg_snapshot["src"])._tool("pg_restore").path
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "pg_dump").symlink_to(Path(real).with_name("pg_dump"))
    calls = tmp_path / "calls"
    wrapper = tools / "pg_restore"
    wrapper.write_text(f'#!/bin/bash\n[ "$1" = "--version" ] && exec {real} --version\n'
                       f'echo "$*" >> {calls}\nREAL={real}\n{script}\n')
    wrapper.chmod(0o755)
    name = f"small_dst_{uuid.uuid4().hex[:8]}"
    made.append(name)
    with psycopg.connect(pg_snapshot["admin"], autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    target = pg_snapshot["admin"].rsplit("/", 1)[0] + f"/{name}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env.update(TEST_PASSPHRASE=PASSPHRASE, CRMOPS_TOOLS_PATH=str(tools))
    r = subprocess.run([sys.executable, "-m", "crmops", "--config", str(pg_snapshot["config"]), "restore",
                        pg_snapshot["snap"], "--to", target], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return target, [line.split() for line in calls.read_text().splitlines() if "--version" not in line]


def test_small_dump_restored_in_one_transaction(pg_snapshot: dict[str, Any], tmp_path: Path,  # noqa: F811
                                                made: list[str]) -> None:
    target, calls = _restore_with(pg_snapshot, tmp_path, 'exec $REAL "$@"', made)
    assert len(calls) == 1 and "--single-transaction" in calls[0]
    assert not any(a.startswith("--jobs") for a in calls[0])
    assert pg_digest(target) == pg_digest(pg_snapshot["src"])


def test_lock_table_outgrown_restores_again_without_one_transaction(pg_snapshot: dict[str, Any],  # noqa: F811
                                                                    tmp_path: Path, made: list[str]) -> None:
    # the server's answer when one transaction's locks do not fit (the transaction then rolls back,
    # which is PostgreSQL's to keep; here nothing is written at all)
    script = ('case " $* " in *" --single-transaction "*)\n'
              '  echo "pg_restore: error: could not execute query: ERROR:  out of shared memory" >&2\n'
              '  echo "HINT:  You might need to increase \\"max_locks_per_transaction\\"." >&2\n'
              '  exit 1;;\n'
              'esac\nexec $REAL "$@"')
    target, calls = _restore_with(pg_snapshot, tmp_path, script, made)
    assert len(calls) == 2
    assert "--single-transaction" in calls[0] and "--single-transaction" not in calls[1]
    assert pg_digest(target) == pg_digest(pg_snapshot["src"])
