"""Proving that archiving works, and naming why when it does not.

`wal setup` says "archiving works" only after it has seen it: it closes the current
segment (pg_switch_wal) and waits, bounded, until that segment is in this repository's
archive. When the server reports the segment failed (pg_stat_archiver), or the time is
up, the error names the failing command and the server's own words: pg_stat_archiver,
the log line when the log can be read, and, when the data directory is on this host, the
command run once more as the server's user on that segment (its exit code and last line).
`backup --physical` uses the same diagnosis when the WAL it waits for does not arrive.
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import Any

from crmops.errors import ArchiveNotWorking
from crmops.pitr.archive import WalArchive, wal_key

#: seconds `wal setup` waits for the switched segment by default
PROOF_TIMEOUT_S = 60


def archiver_state(conn: Any) -> dict[str, Any]:
    conn.execute("SELECT pg_stat_clear_snapshot()")  # inside one transaction the statistics stay frozen
    row = conn.execute("SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
                       "last_failed_wal, last_failed_time FROM pg_stat_archiver").fetchone()
    return dict(zip(("archived_count", "last_archived_wal", "last_archived_time", "failed_count",
                     "last_failed_wal", "last_failed_time"), row, strict=True))


def log_lines(conn: Any, data_directory: str | None, major: int) -> list[str]:
    """The server's log lines about archive_command failures, when a log file can be read here."""
    candidates: list[str] = []
    try:
        current = conn.execute("SELECT pg_current_logfile()").fetchone()[0]
    except Exception:  # noqa: BLE001 (not granted, or no logging collector)
        current = None
    if current:
        candidates.append(current if os.path.isabs(current) or not data_directory
                          else os.path.join(data_directory, current))
    candidates += sorted(glob.glob(f"/var/log/postgresql/postgresql-{major}-*.log"), key=os.path.getmtime,
                         reverse=True)[:1]
    for path in candidates:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 256 * 1024))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            continue
        hits = [i for i, ln in enumerate(lines) if "archive command failed" in ln]
        if hits:
            i = hits[-1]
            return [ln.strip() for ln in lines[max(0, i - 1):i + 1]] + [f"(from {path})"]
    return []


def rerun(command: str, name: str, data_directory: str | None, user: Any) -> str | None:
    """Run archive_command once more as the server's user on the segment: its exit code and last line."""
    from crmops.pitr.hostcheck import can_act_as, run_as

    if not data_directory or user is None or not can_act_as(user):
        return None
    seg = os.path.join("pg_wal", name)
    if not os.path.exists(os.path.join(data_directory, seg)):
        return None
    cmd = command.replace("%p", seg).replace("%f", name)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": user.pw_dir}
    try:
        r = run_as(user, ["sh", "-c", cmd], env, cwd=data_directory, timeout=120)
    except Exception as e:  # noqa: BLE001
        return f"could not run it as {user.pw_name}: {e}"
    if r.returncode == 0:
        return None
    last = ((r.stderr or r.stdout).strip().splitlines() or ["no message"])[-1]
    return f"run as {user.pw_name}, it exits {r.returncode}: {last}"


def diagnose(conn: Any, name: str, *, command: str, data_directory: str | None, user: Any, major: int,
             since_failures: int | None = None, again: str | None = None) -> str:
    """One line: what pg_stat_archiver, the log and a re-run say about archiving name."""
    state = archiver_state(conn)
    parts = []
    if state["last_failed_wal"] and (since_failures is None or state["failed_count"] > since_failures):
        parts.append(f"pg_stat_archiver: {state['failed_count']} failures, the last for {state['last_failed_wal']} "
                     f"at {state['last_failed_time']:%Y-%m-%d %H:%M:%S%z}")
    else:
        parts.append(f"pg_stat_archiver: last archived {state['last_archived_wal'] or 'nothing'}, no failure "
                     "counted (a command the shell cannot run, exit 126/127, stops the archiver instead)")
    logged = log_lines(conn, data_directory, major)
    if logged:
        parts.append("server log: " + " / ".join(logged))
    again = again or rerun(command, name, data_directory, user)
    if again:
        parts.append(again)
    return "; ".join(parts) + f"; archive_command = {command}"


def failing(conn: Any, name: str, failures_before: int) -> bool:
    state = archiver_state(conn)
    return state["failed_count"] > failures_before and (state["last_failed_wal"] or "") >= name


def prove(conn: Any, archive: WalArchive, *, command: str, data_directory: str | None, user: Any, major: int,
          timeout_s: float = PROOF_TIMEOUT_S) -> dict[str, Any]:
    """Switch to a new segment and wait until the closed one is in the archive; ArchiveNotWorking otherwise."""
    failures = archiver_state(conn)["failed_count"]
    started = time.monotonic()
    # a record first: with nothing written since the last switch, pg_switch_wal() switches nothing
    conn.execute("SELECT pg_logical_emit_message(false, 'crmops', 'wal setup: proving the archive')")
    name = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    key = wal_key(archive.system_id, name)
    deadline = started + timeout_s
    rerun_at = started + min(10.0, timeout_s / 2)  # a healthy push takes a second or two
    again: str | None = None
    tried = False
    while not archive.store.exists(key):
        # a failed attempt: the archiver retries only after a minute, so the answer is known now
        gave_up = failing(conn, name, failures)
        if not gave_up and not tried and time.monotonic() > rerun_at:
            # exit 126/127 (crmops not runnable) kills the archiver without a failure counted: ask the
            # command itself, as the server's user, on this segment
            tried = True
            again = rerun(command, name, data_directory, user)
            gave_up = again is not None
        if gave_up or time.monotonic() > deadline:
            why = "archive_command failed" if gave_up else f"it did not arrive within {timeout_s:g} s"
            said = diagnose(conn, name, command=command, data_directory=data_directory, user=user, major=major,
                            since_failures=failures, again=again)
            if archive.store.exists(key):  # the run as the server's user stored it: a passing failure
                break
            raise ArchiveNotWorking(f"the server did not archive {name} into this repository: {why}; {said}",
                                    hint="fix what is named, then run `crmops wal setup --check`")
        time.sleep(0.5)
    return {"proven": True, "segment": name, "seconds": round(time.monotonic() - started, 2)}


def local_repo_folder(url: str) -> Path | None:
    return Path(url[len("file://"):]) if url.startswith("file://") else None
