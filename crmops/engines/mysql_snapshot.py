"""The moment mysqldump's own snapshot is open: when crmops may let writers go again.

crmops holds FLUSH TABLES WITH READ LOCK from just before its fingerprint's snapshot until
mysqldump's consistent-snapshot transaction is open, so both see the same committed rows
(engines/mysql.py). Two signals say the dump's transaction is open:

- the dump's own word. Run with --verbose, mariadb-dump and MySQL's mysqldump write
  "-- Starting transaction..." to stderr just before they run START TRANSACTION WITH
  CONSISTENT SNAPSHOT, and their next line ("-- Setting savepoint...", "-- Retrieving table
  structure ...") only once it returned. Read from the tool's stderr file, this costs
  nothing and waits for no one.
- InnoDB's list of transactions (information_schema.INNODB_TRX): a new connection of our
  user with a transaction. InnoDB refreshes that list only after 0.1 s without readers, so
  backups of several databases of one server polling it at the same moment (a cron minute
  shared by several CRMs, or four test workers) kept it stale for each other: the dump's
  transaction never showed, writers on the whole server were held LOCK_WAIT_LIMIT seconds
  and the backup failed. It stays as the second signal, for a tool that says nothing.
"""

from __future__ import annotations

import time
from typing import Any

from crmops.engines.tools import ToolProcess
from crmops.errors import DatabaseError

#: how long writers may be held while mysqldump's snapshot opens, at most
LOCK_WAIT_LIMIT = 30.0
#: the option that makes the dump tool say when its transaction is open
VERBOSE = "--verbose"
#: seconds between two reads of INNODB_TRX (a read within 0.1 s of another one is served stale)
TRX_POLL = 0.12


def said_snapshot_open(stderr: str) -> bool:
    """True once the tool wrote a whole --verbose line after "-- Starting transaction...": it is open."""
    lines = stderr.split("\n")[:-1]  # the last piece may be a line still being written
    starting = next((i for i, line in enumerate(lines) if line.startswith("-- Starting transaction")), None)
    return starting is not None and any(line.startswith("-- ") for line in lines[starting + 1:])


def connection_ids(cur: Any) -> set[int]:
    cur.execute("SELECT ID FROM information_schema.PROCESSLIST")
    return {int(r[0]) for r in cur.fetchall()}


def _new_transaction(cur: Any, known: set[int]) -> bool:
    """A connection of our user that was not there before (known) has a transaction in INNODB_TRX.

    A CRM connection of that user opening a read transaction in the same moment could be taken
    for the dump's; with binary logging on, the dump's own stated position is checked as well.
    """
    cur.execute("SELECT t.trx_mysql_thread_id FROM information_schema.INNODB_TRX t "
                "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
                "WHERE p.USER = SUBSTRING_INDEX(USER(), '@', 1)")
    return bool({int(r[0]) for r in cur.fetchall()} - known)


def await_dump_snapshot(cur: Any, known: set[int], proc: ToolProcess, limit: float = LOCK_WAIT_LIMIT) -> None:
    """Wait until mysqldump's own consistent-snapshot transaction is open (writers are held meanwhile)."""
    deadline = time.monotonic() + limit
    next_read = 0.0
    while True:
        if said_snapshot_open(proc.stderr_head()):
            return
        if proc.proc.poll() is not None:
            proc.wait()
            return
        now = time.monotonic()
        if now >= next_read:
            if _new_transaction(cur, known):
                return
            next_read = time.monotonic() + TRX_POLL
        if now > deadline:
            said = proc.stderr_head()
            where = ("its START TRANSACTION had not returned" if "-- Starting transaction" in said else
                     "it was connected, not yet starting its transaction" if "-- Connecting to" in said else
                     "it had not connected")
            raise DatabaseError(f"{proc.label} did not open its snapshot within {limit:.0f} s ({where}); "
                                "writers were released and the dump abandoned")
        time.sleep(0.01)
