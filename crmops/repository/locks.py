"""Repository locks: backups share, prune is exclusive, and a dead holder's lock is stale.

A lock names host, pid and the process's start time (and the boot id), so a lock left by a
killed run on this host is recognised at once; one from another host only once its
holder has stopped refreshing it for LOCK_STALE.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from crmops.errors import CrmopsError, IntegrityError, LockBusy
from crmops.repository.paths import now as _now
from crmops.storage.base import Store

log = logging.getLogger("crmops.repository")

#: a lock not refreshed for this long belongs to a crashed run
LOCK_STALE = timedelta(minutes=30)
LOCK_REFRESH = 60.0


def process_start(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, /proc/<pid>/stat field 22); None if no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()  # the command name may hold spaces and parentheses
    return int(fields[19])


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def holder() -> dict[str, Any]:
    """Who holds a lock: enough for anyone on this host to tell whether that process still runs."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "process_start": process_start(pid), "boot_id": boot_id()}


def lock_stale(lock: dict[str, Any], now: datetime | None = None) -> str | None:
    """Why a lock no longer protects anything, or None while its holder may still run."""
    try:
        refreshed = datetime.fromisoformat(lock["refreshed"])
        age = (now or _now()) - refreshed
    except (KeyError, TypeError, ValueError):
        age = LOCK_STALE * 2  # an unreadable lock counts as old
    if lock.get("host") == socket.gethostname() and isinstance(lock.get("pid"), int):
        here = boot_id()
        if lock.get("boot_id") and here and lock["boot_id"] != here:
            return "written before this host last booted"
        started = process_start(lock["pid"])
        if started is None:
            return f"process {lock['pid']} no longer runs on this host"
        if lock.get("process_start") is not None and started != lock["process_start"]:
            return f"pid {lock['pid']} now belongs to another process"
        if lock.get("process_start") is not None:
            return None  # the very process still runs, however long since its last refresh
    if age > LOCK_STALE:
        return f"not refreshed for {int(age.total_seconds() // 60)} minutes"
    return None



class Locks:
    """The repository's lock table (a mixin of Repository: needs self.store)."""

    store: Store

    def _locks(self, skip: str | None = None) -> list[dict[str, Any]]:
        out = []
        for key, _ in self.store.list("locks/"):
            if key == skip:  # one's own lock: its content is known, a GET would only cost a round trip
                continue
            try:
                lock = json.loads(self.store.get(key))
            except (IntegrityError, ValueError):
                continue
            if not isinstance(lock, dict) or "id" not in lock:
                continue
            lock["key"] = key
            out.append(lock)
        return out

    def locks(self, skip: str | None = None) -> list[dict[str, Any]]:
        """Every lock (but the one keyed skip) with "stale": why it no longer protects anything (None while its
        holder lives)."""
        return [{**lock, "stale": lock_stale(lock)} for lock in self._locks(skip)]

    def remove_lock(self, lock: dict[str, Any], why: str) -> None:
        """Delete a lock (as listed by locks()), with a log line saying whose it was and why."""
        self.store.delete(lock["key"])
        log.warning("removed the lock of %s on %s (pid %s): %s", lock.get("purpose"), lock.get("host"),
                    lock.get("pid"), why)

    @contextmanager
    def lock(self, exclusive: bool, purpose: str) -> Iterator[Callable[[], None]]:
        """Backups share; prune is exclusive. Yields refresh() (kept for callers; a thread refreshes anyway).

        The lock names host, pid and the process's start time, so a lock left by a killed run
        on this host is recognised as stale at once; one from another host only once its
        holder has stopped refreshing it for LOCK_STALE.
        """
        lock_id = uuid.uuid4().hex[:12]
        key = f"locks/{lock_id}"
        doc = {"id": lock_id, "exclusive": exclusive, "purpose": purpose, **holder()}

        def write() -> None:
            self.store.put(key, json.dumps({**doc, "refreshed": _now().isoformat()}).encode())

        def conflicts() -> list[dict[str, Any]]:
            live = []
            for lock in self.locks(skip=key):
                if lock["stale"]:
                    self.remove_lock(lock, f"stale: {lock['stale']}")
                    continue
                if exclusive or lock.get("exclusive"):
                    live.append(lock)
            return live

        for attempt in range(2):
            busy = conflicts()
            if busy:
                if attempt == 1:
                    self.store.delete(key)
                b = busy[0]
                raise LockBusy(f"the repository is locked by {b.get('purpose')} on {b.get('host')} "
                               f"(pid {b.get('pid')})",
                               hint="wait for it to finish; a lock whose process is gone on this host is removed "
                                    "at once, one from another host after "
                                    f"{int(LOCK_STALE.total_seconds() // 60)} minutes without refresh; "
                                    "`crmops unlock` removes stale locks")
            if attempt == 0:
                write()
        stop = threading.Event()

        def keep_fresh() -> None:
            while not stop.wait(LOCK_REFRESH):
                try:
                    write()
                except CrmopsError as e:  # the next refresh tries again; LOCK_STALE is many refreshes away
                    log.warning("could not refresh the repository lock: %s", e.message)

        refresher = threading.Thread(target=keep_fresh, name="crmops-lock-refresh", daemon=True)
        refresher.start()
        try:
            yield lambda: None
        finally:
            stop.set()
            refresher.join()
            self.store.delete(key)
