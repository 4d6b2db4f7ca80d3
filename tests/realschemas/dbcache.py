"""A database a slow set-up command makes, dumped once and reloaded from then on.

A real CRM's own first migrate (Django CRM's `setupdata`: Django's migrate, the CRM's reference
data, its first users) takes one to three minutes on the shared machine, and what it writes
depends only on the application's version and the engine. So it runs once per key; its result
is dumped with the engine's own tool under CACHE and loaded into each later test's database
in seconds. The first run on a machine (in CI too) makes the dump. A dump is written beside
and renamed into place, so a parallel run never reads half of one; passwords go through the
environment, never a command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.realschemas.packages import CACHE, PG_BIN

FOLDER = CACHE / "databases"


def _engine(url: str) -> str:
    return "postgresql" if make_url(url).get_backend_name().startswith("postgres") else "mysql"


def _pg(url: str) -> dict[str, str]:
    u = make_url(url)
    return {**os.environ, "PGHOST": u.host or "127.0.0.1", "PGPORT": str(u.port or 5432), "PGUSER": u.username or "",
            "PGPASSWORD": u.password or "", "PGDATABASE": u.database or ""}


def _my(url: str, tool: list[str]) -> tuple[list[str], dict[str, str]]:
    u = make_url(url)
    found = next((p for p in (shutil.which(n) for n in tool) if p), tool[0])
    argv = [found, "--protocol=TCP", "-h", u.host or "127.0.0.1", "-P", str(u.port or 3306), "-u", u.username or ""]
    return argv, {**os.environ, "MYSQL_PWD": u.password or ""}


def _save(url: str, dump: Path) -> None:
    tmp = dump.with_name(f".{dump.name}.{os.getpid()}")
    with open(tmp, "wb") as out:
        if _engine(url) == "postgresql":
            subprocess.run([str(PG_BIN / "pg_dump"), "--no-owner", "--no-privileges"], env=_pg(url), stdout=out,
                           check=True, timeout=600)
        else:
            argv, env = _my(url, ["mariadb-dump", "mysqldump"])
            subprocess.run([*argv, "--single-transaction", "--routines", "--triggers", "--events", "--hex-blob",
                            "--skip-dump-date", make_url(url).database or ""], env=env, stdout=out, check=True,
                           timeout=600)
    os.replace(tmp, dump)


def _load(url: str, dump: Path) -> None:
    with open(dump, "rb") as f:
        if _engine(url) == "postgresql":
            r = subprocess.run([str(PG_BIN / "psql"), "-q", "-v", "ON_ERROR_STOP=1"], env=_pg(url), stdin=f,
                               capture_output=True, timeout=600)
        else:
            argv, env = _my(url, ["mariadb", "mysql"])
            r = subprocess.run([*argv, "--binary-mode", make_url(url).database or ""], env=env, stdin=f,
                               capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]


def made_once(url: str, key: str, make: Callable[[], object]) -> bool:
    """Fill the empty database at url with what make() writes into it: from the cached dump of key
    (per engine) when there is one, else by make() itself, then dumped for the next time.
    True when the dump was loaded."""
    dump = FOLDER / f"{key}-{_engine(url)}.sql"
    if dump.is_file():
        _load(url, dump)
        return True
    make()
    FOLDER.mkdir(parents=True, exist_ok=True)
    _save(url, dump)
    return False
