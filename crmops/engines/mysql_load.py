"""MariaDB/MySQL: a staged dump loaded over several client connections at once.

`mysql < dump` is one stream: one client parsing statements, one server thread inserting,
one core busy on a machine with more. A staged dump is a file crmops can read in any order,
so it is loaded in three phases, each a `mariadb`/`mysql` client reading parts of the file:

1. one connection: every table's CREATE TABLE and the views' placeholders, in dump order;
2. `jobs` connections at once: the tables' rows, largest table first, each table whole
   (with the dump's own LOCK TABLES and DISABLE/ENABLE KEYS around its rows);
3. one connection: what the dump writes after each table's rows and at its end, in dump
   order: triggers (after every row, so none fires for restored rows, as in the dump),
   events, routines, the final views, crmops's own views, the footer.

Every connection first runs the dump's own session header (character set, time zone,
sql_mode, and UNIQUE_CHECKS=0 / FOREIGN_KEY_CHECKS=0 as mysqldump sets them for a load): no
session setting is added, and the binary log is written as `mysql < dump` writes it.

The plan is read from the dump's section comments, checked against the statements they
introduce (each table's CREATE TABLE, its rows between LOCK TABLES and UNLOCK TABLES, the
order mariadb-dump writes them in); a dump that does not read exactly so gets None, and the
caller feeds it to one client as before.
"""

from __future__ import annotations

import mmap
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crmops.engines.container_tools import Tool
from crmops.engines.mapped import Scan
from crmops.errors import DatabaseError, ToolMissing, without_values

#: the section comments mariadb-dump and mysqldump write, each as "--\n-- TITLE\n--"
_MARKER = b"\n--\n-- "
_TABLE = b"Table structure for table "
_ROWS = b"Dumping data for table "
_PLACEHOLDER = b"Temporary table structure for view "
_TAIL = (b"Final view structure for view ", b"Dumping events for database ", b"Dumping routines for database ")
#: header lines: comments, blank, and the versioned SET comments (and MariaDB's sandbox-mode line)
_HEADER_LINE = re.compile(rb"^(?:--.*|/\*![0-9]{5} SET .*\*/;|/\*M!999999\\- enable the sandbox mode \*/)?\s*$")
#: a dump smaller than this is loaded by one client: three phases' client starts cost more than they save
PARALLEL_MIN = 4 << 20
#: a large table's rows are cut into runs of INSERT statements no smaller than this
PIECE_MIN = 1 << 20

Range = tuple[int, int]


@dataclass
class TableRows:
    """One table's rows as the dump has them: from LOCK TABLES through UNLOCK TABLES.

    inserts: where each INSERT statement starts, and where the last one ends, when the
    table may be loaded by several clients at once: an InnoDB table with a primary key
    (row-level locks, rows placed by their key: the order they arrive in changes nothing).
    Other tables are loaded whole by one client, in the dump's order, inside their own
    LOCK TABLES (a table without a primary key keeps its rows' order; MyISAM its key build).
    """

    name: str
    span: Range
    inserts: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.span[1] - self.span[0]

    def pieces(self, size: int) -> list[Range]:
        """The table's INSERT statements cut into runs of about size bytes (one run if it cannot be cut)."""
        if len(self.inserts) < 3 or self.size <= size:
            return [self.span]
        runs: list[Range] = []
        start = self.inserts[0]
        for at in self.inserts[1:-1]:
            if at - start >= size:
                runs.append((start, at))
                start = at
        runs.append((start, self.inserts[-1]))
        return runs


@dataclass
class LoadPlan:
    """Where each phase's statements lie in the staged dump (byte ranges, in dump order)."""

    header: Range
    schema: list[Range] = field(default_factory=list)
    rows: list[TableRows] = field(default_factory=list)
    tail: list[Range] = field(default_factory=list)


def plan_load(path: Path) -> LoadPlan | None:
    """The three phases of the staged dump at path, or None when it does not read as mariadb-dump writes."""
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as dump:
        return _plan(Scan(dump), size)


def _plan(dump: Scan, size: int) -> LoadPlan | None:
    markers: list[tuple[int, bytes, bytes]] = []  # (where its "--" line starts, kind, name)
    at = dump.find(_MARKER)
    while at != -1:
        end = dump.find(b"\n", at + len(_MARKER))
        title = dump[at + len(_MARKER):end if end != -1 else size]
        for kind in (_TABLE, _ROWS, _PLACEHOLDER, *_TAIL):
            if title.startswith(kind):
                markers.append((at + 1, kind, title[len(kind):]))
                break
        at = dump.find(_MARKER, at + 1)
    if not markers or markers[0][1] != _TABLE:
        return None
    plan = LoadPlan(header=(0, markers[0][0]))
    if not all(_HEADER_LINE.match(line) for line in dump[0:markers[0][0]].split(b"\n")):
        return None  # e.g. CREATE DATABASE / USE: not a single database's dump as crmops takes it
    bounds = [m[0] for m in markers[1:]] + [size]
    expect: bytes | None = None  # the table whose rows must come next
    in_tail = False
    for (start, kind, name), end in zip(markers, bounds, strict=True):
        section = (start, end)
        if kind in _TAIL:
            in_tail = True
            plan.tail.append(section)
            continue
        if in_tail or expect is not None and kind != _ROWS:
            return None  # a table after the routines or views, or a table without its rows
        if kind == _PLACEHOLDER:
            plan.schema.append(section)
        elif kind == _TABLE:
            if dump.find(b"\nCREATE TABLE " + name + b" (", start, end) == -1:
                return None
            plan.schema.append(section)
            expect = name
        else:  # the rows of the table whose structure came just before
            if name != expect:
                return None
            expect = None
            lock = dump.find(b"\nLOCK TABLES " + name + b" WRITE;\n", start, end)
            unlock = dump.find(b"\nUNLOCK TABLES;\n", lock + 1, end) if lock != -1 else -1
            if unlock == -1 or dump.find(_MARKER, start + 1, lock) != -1:
                return None
            after = unlock + len(b"\nUNLOCK TABLES;\n")
            rows = TableRows(name.decode("utf-8", "replace"), (lock + 1, after))
            if splittable(dump, plan.schema[-1], name):
                rows.inserts = _statements(dump, name, lock, unlock)
            plan.rows.append(rows)
            plan.tail.append((after, end))  # its triggers (the last table's: the footer too)
    if expect is not None:
        return None
    plan.rows.sort(key=lambda r: r.size, reverse=True)
    return plan


def splittable(dump: Scan, structure: Range, name: bytes) -> bool:
    """Whether the table's CREATE TABLE makes it an InnoDB table with a primary key."""
    start = dump.find(b"\nCREATE TABLE " + name + b" (", *structure)
    end = dump.find(b";\n", start, structure[1])
    create = dump[start:end]
    return b"\n  PRIMARY KEY (" in create and re.search(rb"\n\) ENGINE=InnoDB\b", create) is not None


def _statements(dump: Scan, name: bytes, lock: int, unlock: int) -> list[int]:
    """Where each of the table's INSERT statements starts, then where the last ends (before ENABLE KEYS);
    empty when the rows are not laid out that way."""
    enable = dump.find(b"\n/*!40000 ALTER TABLE " + name + b" ENABLE KEYS */;\n", lock, unlock + 1)
    if enable == -1:
        return []
    starts = []
    at = dump.find(b"\nINSERT INTO " + name + b" ", lock, enable)
    while at != -1:
        starts.append(at + 1)
        at = dump.find(b"\nINSERT INTO " + name + b" ", at + 1, enable)
    return [*starts, enable + 1] if starts else []


def units(plan: LoadPlan, jobs: int) -> list[Unit]:
    """The rows phase's parts, largest first: whole tables, and the large splittable ones cut in runs of
    about an eighth of each client's share, so every client stays busy to the end."""
    piece = max(PIECE_MIN, sum(r.size for r in plan.rows) // (jobs * 8))
    out = [(b"", [run], b"") for r in plan.rows for run in r.pieces(piece)]
    return sorted(out, key=lambda u: u[1][0][1] - u[1][0][0], reverse=True)


def load_staged(path: Path, tool: Tool, args: list[str], jobs: int | None, secrets: Sequence[str]) -> bool:
    """Load the staged dump over several clients when that pays; False: the caller feeds it to one.

    Not for a client run from a container image (each would be a container's start) or a
    dump under PARALLEL_MIN; jobs None: one client per core, up to 4."""
    jobs = jobs or min(len(os.sched_getaffinity(0)), 4)
    if jobs < 2 or tool.where != "host" or path.stat().st_size < PARALLEL_MIN:
        return False
    plan = plan_load(path)
    if plan is None or len(plan.rows) < 2:
        return False
    run_plan(path, plan, jobs, tool.argv(args), {}, label="mysql", secrets=secrets)
    return True


class LoadFailed(DatabaseError):
    """A client of the parallel load stopped with an error (the others were stopped too)."""


#: a part of the load: bytes to send first, byte ranges of the staged dump, bytes to send after
Unit = tuple[bytes, list[Range], bytes]


def run_plan(path: Path, plan: LoadPlan, jobs: int, argv: list[str], env: dict[str, str], label: str,
             secrets: Sequence[str] = ()) -> None:
    """Load the staged dump at path by plan: schema, then rows over jobs clients, then the tail.

    The first client that fails stops the others, and its error is raised (as one client's
    would be).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        _phase(fd, [plan.header, *plan.schema], [], 1, argv, env, label, secrets)
        _phase(fd, [plan.header], units(plan, jobs), jobs, argv, env, label, secrets)
        _phase(fd, [plan.header, *plan.tail], [], 1, argv, env, label, secrets)
    finally:
        os.close(fd)


def _phase(fd: int, first: list[Range], units: list[Unit], jobs: int, argv: list[str], env: dict[str, str],
           label: str, secrets: Sequence[str]) -> None:
    """Clients that each read first, then take units off the shared list until it is empty."""
    if not units and len(first) == 1:
        return  # only the header: nothing to run
    todo = list(units)
    lock = threading.Lock()

    def take() -> Unit | None:
        with lock:
            return todo.pop(0) if todo else None

    clients: list[_Client] = []
    failed: _Client | None = None
    try:
        for _ in range(1 if not units else max(1, min(jobs, len(units)))):
            clients.append(_Client(argv, env, fd))  # started here, in the main thread: see die_with_parent
        threads = [threading.Thread(target=c.feed, args=(first, take), daemon=True) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.02)
                if failed is None:
                    failed = next((c for c in clients if c.proc.poll() not in (None, 0)), None)
                    if failed is not None:  # the first error stops the whole load, as in one client
                        with lock:
                            todo.clear()
                        for c in clients:
                            c.halt()
        for c in clients:
            c.proc.wait()
        bad = failed or next((c for c in clients if c.proc.returncode != 0 or c.broken), None)
        if bad is not None:
            raise LoadFailed(f"{label} failed (exit {bad.proc.returncode}): {bad.said(secrets)}")
    except BaseException:
        for c in clients:
            c.stop()
        raise
    finally:
        for c in clients:
            c.close()


class _Client:
    """One loading client: its stdin written from the staged file, its stderr kept for the error."""

    def __init__(self, argv: list[str], env: dict[str, str], fd: int) -> None:
        from crmops.engines.tools import die_with_parent

        self.fd = fd
        self.broken = False
        self.stopped = False
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the client)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MYSQL"))}
        full_env.update(env)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=self._stderr, env=full_env, preexec_fn=die_with_parent())
        except OSError as e:
            self._stderr.close()
            raise ToolMissing(f"cannot run {argv[0]}: {e.strerror}") from None

    def feed(self, first: list[Range], take: Callable[[], Unit | None]) -> None:
        assert self.proc.stdin is not None
        out = self.proc.stdin.fileno()
        try:
            for span in first:
                self._send(out, span)
            while not self.stopped and (unit := take()) is not None:
                before, spans, after = unit
                if before:
                    self._write(out, before)
                for span in spans:
                    self._send(out, span)
                if after:
                    self._write(out, after)
        except OSError:  # BrokenPipeError: the client ended (its exit code and stderr say why)
            self.broken = not self.stopped
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def _write(self, out: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]

    def _send(self, out: int, span: Range) -> None:
        """The file's bytes in span to the client's pipe, by the kernel (no copy through Python)."""
        offset, end = span
        while offset < end and not self.stopped:
            sent = os.sendfile(out, self.fd, offset, min(end - offset, 1 << 20))
            if sent == 0:
                raise OSError("the staged dump ended early")
            offset += sent

    def halt(self) -> None:
        """Send nothing more: the client runs what it has and ends, so none is left on the server."""
        self.stopped = True

    def stop(self) -> None:
        """At once (an interrupt): the client is killed."""
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def said(self, secrets: Sequence[str]) -> str:
        from crmops.engines.tools import _scrub, last_words

        self._stderr.seek(0)
        lines = last_words(self._stderr.read().decode("utf-8", "replace").splitlines())
        return without_values(_scrub(" / ".join(lines) or "no output", secrets))

    def close(self) -> None:
        self._stderr.close()
