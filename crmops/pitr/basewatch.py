"""Watching a running pg_basebackup from the server's side: its phase, and a bound on the WAL wait.

With `-X none` the server ends a base backup only once the WAL it needs is archived, and
waits for that forever: with a broken archive_command, `backup --physical` would hang with
no output. A thread asks pg_stat_progress_basebackup (PostgreSQL 13+) for the phase of our
walsender (found by its application_name) once a second; the phase names what the bar
shows, and when "waiting for wal archiving to finish" lasts longer than the limit, the
walsender is terminated (it would wait on after its client died) and pg_basebackup killed,
so the backup stops with one line naming what the archiver says.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

WAITING = "waiting for wal archiving to finish"
#: seconds `backup --physical` waits for the WAL its base backup needs, by default
WAL_TIMEOUT_S = 120


class BaseBackupWatch:
    def __init__(self, url: str, *, timeout_s: float, kill: Callable[[], None],
                 describe: Callable[[str], None] = lambda s: None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.kill = kill
        self.describe = describe
        self.app_name = f"crmops-basebackup-{uuid.uuid4().hex[:8]}"
        self.gave_up: str | None = None  # the diagnosis, once the limit passed
        self.waited_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="basebackup-watch", daemon=True)

    def __enter__(self) -> BaseBackupWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        import psycopg

        from crmops.dburl import parse
        from crmops.engines.postgres import _conninfo

        try:
            conn = psycopg.connect(**{**_conninfo(parse(self.url)), "connect_timeout": 10}, autocommit=True)
        except psycopg.Error:
            return  # no watch: pg_basebackup still fails on its own errors
        with conn:
            waiting_since = None
            last_phase = None
            while not self._stop.wait(1.0):
                try:
                    row = conn.execute(
                        "SELECT b.pid, b.phase FROM pg_stat_progress_basebackup b JOIN pg_stat_activity a "
                        "USING (pid) WHERE a.application_name = %s", (self.app_name,)).fetchone()
                except psycopg.Error:
                    return
                if row is None:
                    continue
                pid, phase = row
                if phase != last_phase:
                    self.describe(phase)
                    last_phase = phase
                if phase != WAITING:
                    waiting_since = None
                    continue
                waiting_since = waiting_since or time.monotonic()
                self.waited_s = time.monotonic() - waiting_since
                self.describe(f"{WAITING} ({self.waited_s:.0f} s of {self.timeout_s:g} s)")
                if self.waited_s > self.timeout_s:
                    self.gave_up = self._diagnose(conn)
                    try:  # the walsender waits on after its client is gone: end it
                        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    except psycopg.Error:
                        pass
                    self.kill()
                    return

    def _diagnose(self, conn: Any) -> str:
        """What the archiver, the log and a run of archive_command as the server's user say
        about the oldest WAL file waiting to be archived (crmops.pitr.proof)."""
        from crmops.pitr.hostcheck import owner_of
        from crmops.pitr.proof import diagnose

        try:
            command, data_directory, version = conn.execute(
                "SELECT current_setting('archive_command'), current_setting('data_directory', true), "
                "current_setting('server_version_num')::int").fetchone()
            try:
                ready = conn.execute("SELECT min(name) FROM pg_ls_archive_statusdir() "
                                     "WHERE name LIKE '%.ready'").fetchone()[0]
            except Exception:  # noqa: BLE001 (not granted: pg_monitor or superuser)
                conn.rollback()
                ready = None
            name = ready[:-len(".ready")] if ready else ""
            user = owner_of(data_directory) if data_directory else None
            said = diagnose(conn, name, command=command, data_directory=data_directory if name else None,
                            user=user, major=version // 10000)
        except Exception as e:  # noqa: BLE001 (the limit stands whatever the diagnosis finds)
            return f"the server could not say why ({type(e).__name__})"
        return (f"waiting for {name}; " if name else "") + said
