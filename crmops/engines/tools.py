"""Running the databases' own client tools: found, version-checked, streamed, secret-safe.

Passwords reach a tool only through its environment or an option file (mode 0600),
never its argv, because `ps` shows every user the command line of every process.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from crmops.errors import DatabaseError, ToolMissing, without_values

PIECE = 1 << 20
PR_SET_PDEATHSIG = 1


def _load_prctl():  # type: ignore[no-untyped-def]
    """libc's prctl, loaded once in the parent (a forked child must not load libraries)."""
    if not os.path.exists("/proc/self/stat"):  # not Linux: no death signal to ask for
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGKILL the child when crmops ends, however it ends.

    A dump tool outliving a killed crmops holds a database snapshot open and writes into a
    pipe no one reads. PR_SET_PDEATHSIG fires when the forking *thread* ends, so it is asked
    for only from the main thread (which outlives every tool it starts).
    """
    if _PRCTL is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    prctl = _PRCTL

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # crmops died between fork and prctl
            os._exit(1)

    return preexec


def find_tool(names: Iterable[str], *, extra_dirs: Iterable[str] = ()) -> str | None:
    """The first of names found in $CRMOPS_TOOLS_PATH alone when it is set; else extra_dirs, then PATH."""
    pinned = os.environ.get("CRMOPS_TOOLS_PATH")
    if pinned is not None:
        return next((str(Path(d) / n) for d in pinned.split(os.pathsep) if d for n in names
                     if os.access(Path(d) / n, os.X_OK)), None)
    for d in extra_dirs:
        for name in names:
            p = Path(d) / name
            if p.is_file() and os.access(p, os.X_OK):
                return str(p)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@functools.lru_cache(maxsize=32)  # one `--version` run per tool and command: choosing and checking both ask
def tool_version(path: str) -> tuple[tuple[int, int], str] | None:
    """(major, minor) of the server release a client tool belongs to, and its --version text.

    mariadb-dump says "Ver 10.19 Distrib 10.11.6-MariaDB": 10.19 is the tool's own
    number, the Distrib is the release that matters; pg_dump says "(PostgreSQL) 15.4".
    """
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for pattern in (r"PostgreSQL\)\s+(\d+)(?:\.(\d+))?", r"Distrib\s+(\d+)\.(\d+)", r"\bfrom\s+(\d+)\.(\d+)",
                    r"\bVer\s+(\d+)\.(\d+)"):
        m = re.search(pattern, out)
        if m:
            return (int(m.group(1)), int(m.group(2) or 0)), out.strip()
    return None


def require_tool(names: list[str], server: tuple[int, ...] | None, *, what: str, fix: str,
                 extra_dirs: Iterable[str] = (), flavor: str | None = None) -> str:
    """A usable tool, or ToolMissing saying which and how to get it (one line).

    server is the release the tool must reach: (major,) for PostgreSQL, (major, minor)
    for MariaDB/MySQL, whose release series are major.minor. flavor ("mariadb" or "mysql")
    names the server's kind: a tool of the other kind is not compared, as their numbers
    count different releases (MySQL 8.0 is not older than MariaDB 10.11).
    """
    path = find_tool(names, extra_dirs=extra_dirs)
    if path is None:
        raise ToolMissing(f"{names[0]} not found: it is needed to {what}", hint=fix)
    if server is not None:
        found = tool_version(path)
        if found is not None:
            release, text = found
            same_flavor = flavor is None or ("mariadb" in text.lower()) == (flavor == "mariadb")
            if same_flavor and release[:len(server)] < server:
                have = ".".join(map(str, release[:len(server)]))
                want = ".".join(map(str, server))
                raise ToolMissing(f"{path} is from release {have}, older than the server ({want})", hint=fix)
    return path


def last_words(lines: Iterable[str], n: int = 3) -> list[str]:
    """The lines that say why a tool failed: from its last ERROR line on, else its last n lines.

    A parallel pg_restore ends with "a worker process died unexpectedly" after the server's
    ERROR, DETAIL and CONTEXT lines; the last n alone would drop the ERROR that names the cause.
    """
    useful = [t for t in lines if t.strip() and not t.startswith("-- ")]  # a dump's --verbose progress
    errors = [i for i, t in enumerate(useful) if "ERROR" in t]
    if errors:
        return useful[errors[-1]:errors[-1] + n]
    return useful[-n:]


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "********")
    return text


class ToolProcess:
    """A child whose stdout is read in pieces; stderr goes to a temp file so it can never block."""

    def __init__(self, argv: list[str], *, env: dict[str, str], stdin: int | None = None,
                 secrets: Iterable[str] = (), label: str | None = None) -> None:
        self.label = label or Path(argv[0]).name
        self.secrets = list(secrets)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the child)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MYSQL"))}
        full_env.update(env)
        try:
            self.proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=self._stderr,
                                         env=full_env, bufsize=0, preexec_fn=die_with_parent())
        except OSError as e:
            raise ToolMissing(f"cannot run {argv[0]}: {e.strerror}") from None

    def pieces(self) -> Iterator[bytes]:
        """The tool's output in pieces of up to PIECE bytes.

        A pipe read returns as soon as the tool has written anything, and pg_dump writes 8 KB
        at a time: reading those one by one cost crmops 5.4 CPU-seconds per 3 GB, more than
        pg_dump itself. Waiting a moment after a short read lets the 1 MiB pipe fill: 1.8 s.
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIECE)
        except OSError:  # the system's pipe size limit is lower: keep the default
            pass
        while True:
            data = os.read(fd, PIECE)
            if not data:
                break
            yield data
            if len(data) < PIECE // 4:
                time.sleep(0.002)
        self.wait()

    def wait(self) -> None:
        code = self.proc.wait()
        if code != 0:
            raise DatabaseError(f"{self.label} failed (exit {code}): {self.stderr_tail()}")

    def stderr_head(self, size: int = 1 << 16) -> str:
        """The first bytes the tool wrote to stderr so far, read while it runs (pread: its offset stays)."""
        return os.pread(self._stderr.fileno(), size, 0).decode("utf-8", "replace")

    def stderr_tail(self, lines: int = 3) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
        useful = last_words(text, lines)
        return without_values(_scrub(" / ".join(useful) or "no error output", self.secrets))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()


def feed(argv: list[str], pieces: Iterable[bytes], *, env: dict[str, str], secrets: Iterable[str] = (),
         label: str | None = None) -> None:
    """Run a loading tool with pieces on its stdin; raise DatabaseError with its last stderr lines."""
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the child below)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MYSQL"))}
    full_env.update(env)
    name = label or Path(argv[0]).name
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, env=full_env,
                                preexec_fn=die_with_parent())
    except OSError as e:
        raise ToolMissing(f"cannot run {argv[0]}: {e.strerror}") from None
    assert proc.stdin is not None
    broken = False
    try:
        for piece in pieces:
            try:
                proc.stdin.write(piece)
            except BrokenPipeError:
                broken = True
                break
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            broken = True
    code = proc.wait()
    stderr.seek(0)
    output = stderr.read().decode("utf-8", "replace")
    stderr.close()
    if code != 0 or broken:
        lines = last_words(output.splitlines())
        said = without_values(_scrub(" / ".join(lines) or "no output", secrets))  # the table and line, not the row
        raise DatabaseError(f"{name} failed (exit {code}): {said}")


def read_pieces(path: Path, size: int = PIECE) -> Iterator[bytes]:
    """A file's bytes in pieces (a staged dump fed to a tool's stdin)."""
    with open(path, "rb") as f:
        while piece := f.read(size):
            yield piece


def private_file(text: str, suffix: str = "") -> str:
    """A temp file readable only by us (for option files holding a password)."""
    fd, path = tempfile.mkstemp(suffix=suffix, prefix="crmops-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


class StreamedDump:
    """A dump streamed from a client tool, fingerprinted alongside in the same snapshot."""

    def __init__(self, format: str, proc: ToolProcess, fingerprint: Background, server_version: str,
                 lock_seconds: float = 0.0, tool: dict[str, Any] | None = None) -> None:
        self.format = format
        self._proc = proc
        self._fingerprint = fingerprint
        self.server_version = server_version
        #: how long writers were held to align snapshots (MySQL/MariaDB only)
        self.lock_seconds = lock_seconds
        #: which client tool made the dump, where it ran and its version (recorded in the manifest)
        self.tool = tool

    def chunks(self) -> Iterator[bytes]:
        yield from self._proc.pieces()

    @property
    def fingerprint(self):  # type: ignore[no-untyped-def]
        """Ready once the stream is consumed (it is computed while the dump runs)."""
        return self._fingerprint.result()


class Background:
    """Run a function in a thread and hand back its result (or exception) later."""

    def __init__(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        self._result = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            self._result = fn(*args)
        except BaseException as e:  # handed to the caller by result()
            self._error = e

    def done(self) -> bool:
        return not self._thread.is_alive()

    def failed(self) -> BaseException | None:
        """The exception the function ended with, once it has ended (None: running or succeeded)."""
        return self._error if self.done() else None

    def result(self):  # type: ignore[no-untyped-def]
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def dump_lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """A streamed SQL dump's lines, without holding more than one line and one piece."""
    buffer = b""
    for piece in pieces:
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        yield from lines
    if buffer:
        yield buffer
