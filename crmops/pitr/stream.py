"""`crmops wal stream`: pg_receivewal into a spool, every file pushed to the WAL archive.

archive_command hands over a segment only once it is full (or archive_timeout forces a
switch), so the data lost in a disaster is up to that much WAL. Streaming receives WAL
as it is written: finished segments are pushed exactly as `wal push` pushes them (same
names, same idempotence, so archive_command may keep running beside it), and every
--interval seconds the segment still being filled is pushed as <name>.partial, which
bounds the loss by the interval.

A replication slot makes the server keep WAL the streamer has not received, so a stop
of the streamer (or of pg_receivewal, restarted here with backoff) loses nothing; the
price is that a streamer left stopped for good lets pg_wal grow until the slot is
dropped. A spool file is deleted only after the store has it (the newest finished
segment stays, so pg_receivewal always knows where to resume).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from crmops.errors import ConfigError, DatabaseError, FolderNotWritable, LockBusy, StorageUnreachable
from crmops.pitr.archive import SEGMENT_RE, WalArchive, segment_system_id

SLOT_RE = re.compile(r"^[a-z0-9_]{1,63}$")
TOOL_FIX = ("install the PostgreSQL {major} client (apt-get install postgresql-client-{major}), "
            "or name its bin folder in CRMOPS_TOOLS_PATH")
BACKOFF_MAX = 60.0
#: a pg_receivewal that ran this long before it exited resets the backoff
STEADY_S = 60.0
#: how often a push is tried again while the store does not answer
STORE_RETRY_S = 5.0


def validate_slot(slot: str) -> None:
    if not SLOT_RE.match(slot):
        raise ConfigError(f"replication slot name {slot!r}: use 1-63 lower-case letters, digits and underscores")


def libpq_env(url: Any) -> dict[str, str]:
    """The connection for pg_receivewal (physical replication: no database)."""
    from crmops.engines.postgres import libpq_env as env_of

    return env_of(url, database=False, app="crmops-wal-stream")


def identify(url: Any) -> tuple[str, int, int]:
    """(system identifier, timeline, server major) over a replication connection.

    Asking over the replication protocol proves at once that the role may stream
    (REPLICATION, a `replication` line in pg_hba.conf), before anything is started.
    """
    import psycopg

    from crmops.engines.connect import classify
    from crmops.engines.postgres import _conninfo

    try:
        conn = psycopg.connect(**_conninfo(url), replication="true", autocommit=True)
    except psycopg.OperationalError as e:
        raise classify(e, url) from None
    try:
        res = conn.pgconn.exec_(b"IDENTIFY_SYSTEM")  # the simple protocol: walsenders know no other
        if res.status != 2:  # PGRES_TUPLES_OK
            raise DatabaseError(f"IDENTIFY_SYSTEM failed: {(res.error_message or b'').decode().strip()}")
        system_id, timeline = res.get_value(0, 0).decode(), int(res.get_value(0, 1).decode())
        major = conn.info.server_version // 10000
    finally:
        conn.close()
    return system_id, timeline, major


def spool_denied(spool: Path, e: OSError) -> str:
    """Which folder stops this user from using the spool, and whose it is."""
    import pwd

    me = pwd.getpwuid(os.geteuid()).pw_name
    blocker = Path(e.filename) if e.filename else spool
    while not blocker.exists() and blocker != blocker.parent:
        blocker = blocker.parent
    st = blocker.stat()
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    return f"the spool {spool} is not writable by {me}: {blocker} belongs to {owner} (mode {st.st_mode & 0o777:o})"


class Streamer:
    """One pg_receivewal, supervised, and the pushes of what it writes."""

    def __init__(self, archive: WalArchive, *, tool: str, env: dict[str, str], spool: Path, slot: str,
                 interval: float, warn: Callable[[str], None], say: Callable[[str], None] = lambda s: None) -> None:
        self.archive = archive
        self.tool = tool
        self.env = env
        self.spool = spool
        self.slot = slot
        self.interval = interval
        self.warn = warn
        self.say = say
        self.stop = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._lock: IO[str] | None = None
        self._partial_sent: tuple[str, str] | None = None  # (name, digest) of the last partial pushed
        self.counts = {"stored": 0, "already": 0, "partial_pushes": 0, "restarts": 0}

    # -- the child ----------------------------------------------------------------------

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(self.env)
        return env

    def create_slot(self) -> None:
        """--create-slot --if-not-exists: from now on the server keeps the WAL not yet received."""
        r = subprocess.run([self.tool, "--create-slot", "--if-not-exists", "--slot", self.slot, "--no-password"],
                           env=self._child_env(), capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no message"])[-1]
            raise DatabaseError(f"pg_receivewal could not create replication slot {self.slot}: {last}")

    def _start(self) -> None:
        from crmops.engines.tools import die_with_parent

        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (one per child, closed in _reap)
        self.proc = subprocess.Popen(
            [self.tool, "--directory", str(self.spool), "--slot", self.slot, "--no-loop", "--no-password"],
            env=self._child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            preexec_fn=die_with_parent())

    def _reap(self) -> str:
        """The last line pg_receivewal wrote to stderr (never a secret: it has none to print)."""
        text = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            text = self._stderr.read().decode("utf-8", "replace")
            self._stderr.close()
            self._stderr = None
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else "no message"

    def _stop_child(self) -> None:
        """SIGINT, pg_receivewal's documented stop, to our own child by pid; SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # -- the spool ------------------------------------------------------------------------

    def lock_spool(self) -> None:
        """One streamer per spool: two would race for the same files."""
        try:
            self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
            f = open(self.spool / ".crmops-stream.lock", "a")  # noqa: SIM115 (held for the whole run)
        except PermissionError as e:
            raise ConfigError(spool_denied(self.spool, e), hint=(
                "as root: `crmops schedule install --wal-stream --user USER` makes it for USER, "
                f"or install -d -o USER -m 700 {self.spool}")) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise LockBusy(f"another `crmops wal stream` is using the spool {self.spool}",
                           hint="stop it first, or give this one its own --spool and --slot") from None
        self._lock = f

    def _check_owner(self, name: str, data: bytes) -> None:
        found = segment_system_id(data)
        if found is not None and found != self.archive.system_id:
            raise ConfigError(f"{self.spool / name} belongs to cluster {found}, not {self.archive.system_id}",
                              hint="a spool directory serves one cluster: give this one its own --spool")

    def push_finished(self) -> None:
        """Push every finished file in name order; delete each once stored, but the newest segment."""
        names = sorted(p.name for p in self.spool.iterdir()
                       if SEGMENT_RE.match(p.name) or re.fullmatch(r"[0-9A-F]{8}\.history", p.name))
        segments = [n for n in names if SEGMENT_RE.match(n)]
        for name in names:
            path = self.spool / name
            if SEGMENT_RE.match(name):
                with open(path, "rb") as f:
                    self._check_owner(name, f.read(64))
            outcome = self.archive.push(path)  # durable before it returns
            if outcome in ("stored", "already"):
                self.counts[outcome] += 1
            if outcome == "stored":
                self.say(f"{name}: stored")
            if name != (segments[-1] if segments else None):
                path.unlink()

    def push_partial(self) -> None:
        """Push the segment being filled when it changed since the last push."""
        partials = sorted(p for p in self.spool.glob("*.partial") if SEGMENT_RE.match(p.name[:-len(".partial")]))
        if not partials:
            return
        path = partials[-1]
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # renamed to its final name in between: the next round pushes it
            return
        digest = hashlib.sha256(data.rstrip(b"\0")).hexdigest()
        if self._partial_sent == (path.name, digest):
            return
        self._check_owner(path.name, data[:64])
        outcome = self.archive.push_partial(path.name[:-len(".partial")], data)
        if outcome == "stored":
            self.counts["partial_pushes"] += 1
        self._partial_sent = (path.name, digest)

    # -- the loop -------------------------------------------------------------------------

    def run(self, poll: float = 0.5) -> dict[str, Any]:
        """Stream until self.stop is set; then stop pg_receivewal, push what it left, return counts."""
        started = time.monotonic()
        backoff = 1.0
        restart_at = 0.0
        child_started = 0.0
        next_partial = time.monotonic() + self.interval
        store_down: Exception | None = None
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if self.proc is None and now >= restart_at:
                    self._start()
                    child_started = now
                elif self.proc is not None and self.proc.poll() is not None:
                    code, last = self.proc.returncode, self._reap()
                    self.proc = None
                    if now - child_started >= STEADY_S:
                        backoff = 1.0
                    self.counts["restarts"] += 1
                    self.warn(f"pg_receivewal exited (code {code}: {last}); restarting it in {backoff:g} s")
                    restart_at = now + backoff
                    backoff = min(backoff * 2, BACKOFF_MAX)
                try:
                    self.push_finished()
                    if time.monotonic() >= next_partial:
                        self.push_partial()
                        next_partial = time.monotonic() + self.interval
                    store_down = None
                # a store that does not answer, or a full or read-only local one: the files wait in
                # the spool, and the slot keeps the rest on the server
                except (StorageUnreachable, FolderNotWritable) as e:
                    if store_down is None:
                        self.warn(f"{e.line()}; retrying every {STORE_RETRY_S:g} s")
                    store_down = e
                    self.stop.wait(STORE_RETRY_S)
                self.stop.wait(poll)
        finally:
            self._stop_child()
            if self.proc is not None:
                self._reap()
        # stopped: what pg_receivewal finished, then what it had of the current segment
        self.push_finished()
        self.push_partial()
        return {**self.counts, "seconds": round(time.monotonic() - started, 1)}
