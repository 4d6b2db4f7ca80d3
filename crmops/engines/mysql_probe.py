"""Whether a MariaDB/MySQL target is empty, and its version, from one client call without the driver.

A restore asks the target two things before it loads: whether it is empty and its server
version (which client to load with). Importing pymysql for that cost 0.06-0.08 CPU-seconds
here, a sixth of a small restore's own CPU; the `mariadb`/`mysql` client answers both in
one login of a few milliseconds, with the option file the load uses. Anything unusual (no
client, a login that fails, an answer this does not read) returns None, and the caller
asks through the driver, whose errors are the ones crmops explains: a failure reads exactly
as before (see postgres_facts for the same with psql).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import Any

from crmops.engines.tools import find_tool

#: the objects a restore could collide with, counted (MysqlEngine.is_empty)
OBJECTS = ("((SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE()) "
           "+ (SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = DATABASE()) "
           "+ (SELECT COUNT(*) FROM information_schema.events WHERE event_schema = DATABASE()) "
           "+ (SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE()))")


def client_probe(url: Any, query: str, option_file: Callable[[], str],
                 timeout: float = 30) -> tuple[str, int] | None:
    """(VERSION(), the count query returns) through the host's client, or None (ask the driver)."""
    client = find_tool(["mariadb", "mysql"])
    if client is None or not url.database:
        return None
    options = option_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSQL")}
    try:
        out = subprocess.run([client, f"--defaults-extra-file={options}", "--connect-timeout=10", "--batch",
                              "--skip-column-names", "--execute", f"SELECT VERSION(), {query}", url.database],
                             env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    finally:
        os.unlink(options)
    fields = out.stdout.strip().split("\t")
    if out.returncode != 0 or len(fields) != 2 or not fields[0][:1].isdigit() or not fields[1].isdigit():
        return None
    return fields[0], int(fields[1])
