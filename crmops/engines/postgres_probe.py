"""Facts about a PostgreSQL server from one `psql` call, without importing the driver.

A restore into PostgreSQL asks the target two things before pg_restore runs: its version
(which pg_restore to use) and whether it is empty. Importing psycopg for that cost about
0.18 CPU-seconds, 40% of a small restore's own CPU on this machine; `psql` answers both
in one login of a few milliseconds. Anything unusual (no psql, a login that fails, an
answer this does not read) returns None, and the caller asks through the driver, whose
errors are the ones crmops explains; so a failure reads exactly as before.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from typing import Any


def psql_path() -> str | None:
    """The host's psql: on PATH, else the newest under /usr/lib/postgresql."""
    found = shutil.which("psql")
    if found:
        return found
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), key=lambda p: int(p.split("/")[4])
                      if p.split("/")[4].isdigit() else 0)
    return versions[-1] if versions else None


def version_and(query: str, env: dict[str, str], timeout: float = 30) -> tuple[str, str] | None:
    """(server version as `SHOW server_version` gives it, the one value query returns), or None."""
    psql = psql_path()
    if psql is None:
        return None
    sql = f"SELECT split_part(current_setting('server_version'), ' ', 1), ({query})"
    try:
        out = subprocess.run([psql, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-F", "\t", "-c", sql],
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = out.stdout.strip().split("\t")
    if out.returncode != 0 or len(fields) != 2 or not fields[0][:1].isdigit():
        return None
    return fields[0], fields[1]


def empty_and_version(query: str, env: dict[str, Any]) -> tuple[bool, str] | None:
    """(whether query, a count of objects, is 0; the server version), or None (ask the driver)."""
    answer = version_and(query, env)
    if answer is None or not answer[1].isdigit():
        return None
    return int(answer[1]) == 0, answer[0]
