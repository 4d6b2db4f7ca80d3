"""Facts about a PostgreSQL server: its version, its schema revision, whether it is empty.

The version and emptiness can come from one `psql` call, without importing the driver.

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema', 'pg_toast')"


def psql_path() -> str | None:
    """The host's psql: on PATH, else the newest under /usr/lib/postgresql.

    Debian's psql on PATH is postgresql-common's Perl wrapper, which picks a version and runs
    it: 20-40 ms of Perl before every call. Any psql answers this one SELECT, so the newest
    installed one is run directly."""
    found = shutil.which("psql")
    if found and not os.path.realpath(found).endswith("pg_wrapper"):
        return found
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), key=lambda p: int(p.split("/")[4])
                      if p.split("/")[4].isdigit() else 0)
    return versions[-1] if versions else found


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


_USER_NS = f"n.nspname NOT IN {SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_%'"
_NOT_EXTENSION = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = {oid} AND d.deptype = 'e')"
#: the objects a restore could collide with, counted (is_empty)
OBJECTS = f"""(SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE {_USER_NS} AND c.relkind IN ('r','v','m','S','p','f','c'))
             + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE {_USER_NS} AND {_NOT_EXTENSION.format(oid="p.oid")})
             + (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                WHERE {_USER_NS} AND t.typtype IN ('e','d','r','m','b') AND {_NOT_EXTENSION.format(oid="t.oid")})
             + (SELECT count(*) FROM pg_namespace n WHERE {_USER_NS} AND n.nspname <> 'public')
             + (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql')
             + (SELECT count(*) FROM pg_largeobject_metadata)"""


def version_of(conn: psycopg.Connection) -> str:
    """The server's version as `SHOW server_version` gives it, from what the server reported at login
    (no query: on a connection not in autocommit a query would open the transaction too early)."""
    reported = conn.info.parameter_status("server_version")
    if reported:
        return reported.split()[0]
    version = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    if not conn.autocommit:
        conn.rollback()  # the transaction the query opened: the caller sets its own isolation level
    return version


def revision(conn: psycopg.Connection) -> str | None:
    """The Alembic revision(s) in alembic_version, comma-joined, or None."""
    if conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is None:
        return None
    revs = [r[0] for r in conn.execute("SELECT version_num FROM alembic_version ORDER BY 1")]
    return ",".join(revs) or None
