"""The migration journal: every run, kept outside the database, hash-chained.

Restoring a backup must not erase the record of the failed attempt that made the
restore necessary, so runs are written to ``<state_dir>/migrations/journal.jsonl``
(crmops.journal.Journal: fsynced, tamper-evident), never to the database.

Records (one JSON line each): ``run-start`` (who, target database, from, to,
direction), ``safety-snapshot``, ``revision`` (one per applied or reverted revision:
seconds, script checksum, and on MySQL/MariaDB its statements), ``run-end`` (result,
error), ``baseline`` and ``checksum-accepted``. Applied revisions' checksums are read
back from here, so a script edited after it was applied is noticed (as Flyway's validate).
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crmops.errors import LockBusy
from crmops.journal import Journal, actor


class MigrationJournal:
    """The journal file and the lock that makes its writer single."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "migrations"
        self.journal = Journal(self.dir / "journal.jsonl")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One migration at a time per state folder; a second one fails at once with LockBusy."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockBusy("another crmops migration is running (it holds "
                               f"{self.dir / 'lock'})", hint="wait for it to finish") from None
            yield
        finally:
            os.close(fd)

    def start(self, *, database: str, engine: str, from_rev: str | None, to_rev: str | None,
              direction: str, command: str) -> str:
        run_id = uuid.uuid4().hex[:12]
        self.journal.append("run-start", run=run_id, actor=actor(), database=database, engine=engine,
                            command=command, direction=direction, **{"from": from_rev, "to": to_rev})
        return run_id

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        return self.journal.append(event, **fields)

    def records(self) -> list[dict[str, Any]]:
        return list(self.journal.records())

    def runs(self, database: str | None = None) -> list[dict[str, Any]]:
        """Runs, oldest first, each with its revisions and result (IntegrityError if tampered with)."""
        runs: dict[str, dict[str, Any]] = {}
        for rec in self.journal.records():
            run_id = rec.get("run")
            event = rec["event"]
            if event in ("run-start", "baseline", "checksum-accepted"):
                run_id = run_id or uuid.uuid4().hex[:12]
                runs[run_id] = {"run": run_id, "started": rec["ts"], "actor": rec.get("actor"),
                                "database": rec.get("database"), "engine": rec.get("engine"),
                                "command": rec.get("command", event), "direction": rec.get("direction"),
                                "from": rec.get("from"), "to": rec.get("to"), "revisions": [],
                                "safety_snapshot": None, "result": "ok" if event != "run-start" else "running",
                                "error": None, "seconds": None}
                continue
            run = runs.get(run_id or "")
            if run is None:
                continue
            if event == "safety-snapshot":
                run["safety_snapshot"] = rec.get("snapshot")
            elif event == "revision":
                run["revisions"].append({k: rec.get(k) for k in ("revision", "direction", "seconds", "statements")})
            elif event == "run-end":
                run.update(result=rec.get("result"), error=rec.get("error"), seconds=rec.get("seconds"),
                           ended=rec["ts"], at=rec.get("at"))
        found = list(runs.values())
        if database is not None:
            found = [r for r in found if r["database"] == database]
        return found

    def checksums(self, database: str) -> dict[str, str]:
        """revision -> checksum of the script as it was when applied (or last accepted) on database."""
        sums: dict[str, str] = {}
        for rec in self.journal.records():
            if rec.get("database") != database:
                continue
            if rec["event"] == "revision" and rec.get("direction") == "up" and rec.get("checksum"):
                sums[rec["revision"]] = rec["checksum"]
            elif rec["event"] == "revision" and rec.get("direction") == "down":
                sums.pop(rec["revision"], None)
            elif rec["event"] in ("baseline", "checksum-accepted"):
                sums.update(rec.get("checksums", {}))
        return sums
