"""MySQL/MariaDB: mysqldump --single-transaction, restored through the mysql client.

Consistency: mysqldump opens its own consistent-snapshot transaction, so crmops
makes its fingerprint transaction and mysqldump's start at the same instant: it
holds FLUSH TABLES WITH READ LOCK only from just before its own snapshot until
mysqldump's transaction is seen open (typically well under a second; how it is seen:
mysql_snapshot.py), then lets writers go and fingerprints inside its snapshot while
the dump streams.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crmops.dburl import DbUrl, display, parse
from crmops.engines import canonical
from crmops.engines.base import Fingerprint, TableFingerprint, check_method, keys_left_out
from crmops.engines.canonical import BINARY_TYPES, CANONICAL
from crmops.engines.connect import classify
from crmops.engines.container_tools import Tool, choose_tool
from crmops.engines.mysql_load import load_staged
from crmops.engines.mysql_probe import OBJECTS, client_probe
from crmops.engines.mysql_snapshot import LOCK_WAIT_LIMIT, VERBOSE, connection_ids
from crmops.engines.mysql_snapshot import await_dump_snapshot as _await_dump_snapshot
from crmops.engines.mysql_views import damaged_views, views_sql
from crmops.engines.tools import Background, StreamedDump, private_file, read_pieces
from crmops.errors import CrmopsError, DatabaseError

if TYPE_CHECKING:
    import pymysql

#: MariaDB/MySQL's error for a lock not granted within lock_wait_timeout
LOCK_WAIT_TIMEOUT = 1205
FIX = "install the MariaDB/MySQL client of the server's version (apt-get install mariadb-client)"
#: how fingerprints can be computed, oldest first; the last is the one new snapshots record
METHODS = ("", CANONICAL)


class MysqlEngine:
    name = "mysql"

    def __init__(self, url: str | DbUrl, *, jobs: int | None = None, hold_seconds: float = LOCK_WAIT_LIMIT,
                 **_: Any) -> None:
        self.url = parse(url)
        #: clients loading a staged dump at once (crmops.engines.mysql_load); None: one per core, up to 4
        self.jobs = jobs
        #: the server version is_empty read with its counts (the restore that follows chooses its client by it)
        self._probed_version: str | None = None
        #: how long a dump may hold the server's writers: its read lock's wait, then the dump's snapshot
        self.hold_seconds = hold_seconds

    def connect(self, database: bool = True) -> pymysql.Connection:
        import pymysql  # here, not at the top: a restore that only needs the client never imports it

        u = self.url
        try:
            return pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                                   password=u.password or "", database=u.database if database else None,
                                   charset="utf8mb4", autocommit=True, connect_timeout=10)
        except pymysql.MySQLError as e:
            raise classify(e, self.url) from None

    def _option_file(self) -> str:
        """Credentials for the client tools, in a 0600 file (never on the command line)."""
        u = self.url
        pw = (u.password or "").replace("\\", "\\\\").replace('"', '\\"')
        return private_file(f'[client]\nhost={u.host or "127.0.0.1"}\nport={u.port or 3306}\n'
                            f'user={u.username or "root"}\npassword="{pw}"\n', suffix=".cnf")

    def _secrets(self) -> list[str]:
        return [self.url.password or ""]

    def _query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def server_version(self) -> str:
        return self._query("SELECT VERSION()")[0][0]

    def server_major(self) -> int:
        return int(self.server_version().split(".")[0])

    def database_name(self) -> str:
        return self.url.database or ""

    def _tool(self, kind: str, version: str | None = None) -> Tool:
        """mariadb-dump/mysqldump or the mariadb/mysql client, from the server's release or newer (else its image)."""
        version = version or self.server_version()
        release = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
        flavor = "mariadb" if "mariadb" in version.lower() else "mysql"
        names = ["mariadb-dump", "mysqldump"] if kind == "dump" else ["mariadb", "mysql"]
        return choose_tool(names, release, flavor=flavor, server_version=version, host=self.url.host,
                           what=f"{'back up' if kind == 'dump' else 'restore'} {flavor} {version}", fix=FIX)

    def check(self) -> dict[str, Any]:
        version = self.server_version()
        size, tables = self._query("SELECT COALESCE(SUM(data_length + index_length), 0), COUNT(*) FROM "
                                   "information_schema.tables WHERE table_schema = DATABASE() "
                                   "AND table_type = 'BASE TABLE'")[0]
        tools: dict[str, str] = {}
        chosen: dict[str, Any] = {}
        for kind in ("dump", "client"):
            try:
                tool = self._tool(kind, version)
                tools[kind], chosen[kind] = tool.describe(), tool.to_dict()
            except Exception as e:  # reported, not raised
                tools[kind] = f"unusable: {e.line() if isinstance(e, CrmopsError) else e}"
        return {"engine": self.name, "url": display(self.url), "server_version": version, "size_bytes": int(size),
                "tables": int(tables), "tools": tools, "tool_choice": chosen,
                "tools_ok": all(not v.startswith("unusable") for v in tools.values())}

    def is_empty(self) -> bool:
        """No table, view, sequence, routine, event or trigger a restore could collide with."""
        probed = client_probe(self.url, OBJECTS, self._option_file)
        if probed is None:  # asked through the driver, whose errors crmops explains
            n, self._probed_version = self._query(f"SELECT {OBJECTS}, VERSION()")[0]
        else:
            self._probed_version, n = probed
        return int(n) == 0

    def existing_tables(self, tables: list[str]) -> list[str]:
        """Which of these tables (or views) already exist here."""
        from crmops.engines.mysql_tables import existing

        return existing(self, tables)

    def restore_tables(self, chunks: Iterable[bytes], *, format: str, tables: list[str],
                       prefix: str | None = None) -> dict[str, list[str]]:
        """Replace the chosen tables' rows in one transaction after an orphan check (or add them beside)."""
        if format != "mysql-sql":
            raise DatabaseError(f"a {format} dump cannot be restored into MySQL/MariaDB")
        from crmops.engines.mysql_tables import restore_tables

        return restore_tables(self, chunks, tables, prefix)

    def schema_revision(self) -> str | None:
        if not self._query("SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() "
                           "AND table_name = 'alembic_version'"):
            return None
        return ",".join(r[0] for r in self._query("SELECT version_num FROM alembic_version ORDER BY 1")) or None

    def fingerprint(self, *, method: str | None = None) -> Fingerprint:
        method = check_method(self.name, method, METHODS)
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                fp = Fingerprint(self.name, sequences=_auto_increments(cur), method=method)
                _fill_fingerprint(cur, fp)
                cur.execute("ROLLBACK")
            return fp
        finally:
            conn.close()

    @contextmanager
    def dump(self) -> Iterator[StreamedDump]:
        import pymysql

        version = self.server_version()
        tool = self._tool("dump", version)
        options = self._option_file()
        conn = self.connect()
        proc = None
        try:
            cur = conn.cursor()
            cur.execute("SELECT CONNECTION_ID()")
            mine = cur.fetchone()[0]
            # views over a dropped table (or of a definer that is gone) stop the tool: written apart
            damaged = damaged_views(cur, self.database_name())
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            # the lock waits for running writes anywhere on the server, holding every writer meanwhile: bounded
            cur.execute("SET SESSION lock_wait_timeout = %s", (max(1, math.ceil(self.hold_seconds)),))
            locked_at = time.monotonic()
            try:
                cur.execute("FLUSH TABLES WITH READ LOCK")
            except pymysql.err.OperationalError as e:
                if e.args[0] == LOCK_WAIT_TIMEOUT:
                    raise DatabaseError(
                        f"the dump's read lock (FLUSH TABLES WITH READ LOCK, which holds the whole server's writers) "
                        f"waited {self.hold_seconds:.0f} s behind a long write, maybe in another database; the "
                        "writers it held are let go", hint="run the backup again when the server is quieter, or "
                        "raise database.hold_writers_seconds") from None
                # e.g. no RELOAD privilege
                raise DatabaseError(f"the dump cannot hold writers for the moment it starts: {e.args[-1]}",
                                    hint="grant the backup user RELOAD (GRANT RELOAD ON *.* TO ...)") from None
            try:
                sequences = _auto_increments(cur)
                binlog = binlog_position(cur)  # under the lock: exactly the dump's point in the binlog
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                before = connection_ids(cur)
                # with binary logging on, the dump states its own snapshot's position: checked below
                states = [source_data_option(tool.version)] if binlog else []
                # --verbose: the tool says on stderr when its transaction is open (mysql_snapshot.py)
                proc = tool.process([f"--defaults-extra-file={options}", "--single-transaction", VERBOSE, "--quick",
                                     "--routines", "--triggers", "--events", "--hex-blob", "--skip-dump-date",
                                     "--default-character-set=utf8mb4", "--no-tablespaces", *states,
                                     *(f"--ignore-table={self.database_name()}.{v.name}" for v in damaged),
                                     self.database_name()],
                                    env={}, secrets=self._secrets(), label=tool.name, mounts=[options])
                _await_dump_snapshot(cur, before | {mine}, proc,
                                     limit=max(1.0, self.hold_seconds - (time.monotonic() - locked_at)))
            finally:
                cur.execute("UNLOCK TABLES")
            lock_seconds = time.monotonic() - locked_at

            rounded: dict[str, dict[str, int]] = {}

            def compute() -> Fingerprint:
                fp = Fingerprint(self.name, sequences=sequences, method=METHODS[-1])
                _fill_fingerprint(cur, fp)
                rounded.update(rounded_floats(cur))
                return fp

            dump = StreamedDump("mysql-sql", proc, Background(compute), version, lock_seconds, tool=tool.to_dict())
            dump.binlog = binlog  # type: ignore[attr-defined]
            dump.rounded = rounded  # type: ignore[attr-defined]  # filled with the fingerprint
            dump.damaged_views = [{"view": v.name, "reason": v.reason, "missing_tables": sorted(v.missing)}
                                  for v in damaged]  # type: ignore[attr-defined]
            pieces = (lambda: at_position(proc.pieces(), binlog, tool.name)) if binlog else proc.pieces
            dump.chunks = lambda: itertools.chain(pieces(), [views_sql(damaged)] if damaged else [])  # type: ignore[method-assign]
            yield dump
        finally:
            if proc is not None:
                proc.close()
            conn.close()
            os.unlink(options)

    def restore(self, chunks: Iterable[bytes], *, format: str, tables: list[str] | None = None,
                staged: Path | None = None) -> list[dict[str, str]]:
        """Load the dump (with tables: only those); returns the foreign keys left out (see keys_left_out).

        staged: the dump whole in a private file (chunks then unused), loaded over several
        clients at once when it is large enough (crmops.engines.mysql_load)."""
        if format != "mysql-sql":
            raise DatabaseError(f"a {format} dump cannot be restored into MySQL/MariaDB")
        options = self._option_file()
        left: list[dict[str, str]] = []
        try:
            tool = self._tool("client", self._probed_version)
            args = [f"--defaults-extra-file={options}", "--default-character-set=utf8mb4", "--binary-mode",
                    self.database_name()]
            if staged is not None and not tables and load_staged(staged, tool, args, self.jobs, self._secrets()):
                return left
            if staged is not None:
                chunks = read_pieces(staged)
            stream = only_tables(chunks, tables, left) if tables else chunks
            tool.feed(args, stream, env={}, secrets=self._secrets(), label="mysql", mounts=[options])
        finally:
            os.unlink(options)
        return left


def binlog_position(cur: Any) -> dict[str, Any] | None:
    """{file, position, gtid} of the binlog now, or None when binary logging is off (call under FTWRL)."""
    cur.execute("SELECT @@log_bin")
    if not int(cur.fetchone()[0] or 0):
        return None
    cur.execute("SHOW MASTER STATUS")
    row = cur.fetchone()
    if row is None:
        return None
    gtid = None
    try:
        cur.execute("SELECT @@gtid_binlog_pos")  # MariaDB
        gtid = cur.fetchone()[0] or None
    except Exception:  # MySQL names it @@gtid_executed
        try:
            cur.execute("SELECT @@gtid_executed")
            gtid = cur.fetchone()[0] or None
        except Exception:
            gtid = None
    cur.execute("SELECT @@server_id")
    return {"file": row[0], "position": int(row[1]), "gtid": gtid, "server_id": str(cur.fetchone()[0])}


def rounded_floats(cur: Any) -> dict[str, dict[str, int]]:
    """table -> FLOAT column -> how many values the dump rounds.

    MariaDB writes FLOAT with 6 significant digits, in SELECT and so in mariadb-dump: a value
    with more (16777216, 0.1234567) comes back changed from every dump. Counted in the dump's
    snapshot so the backup can say so, and verify can name the cause of the difference.
    """
    cur.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = DATABASE() "
                "AND data_type = 'float' ORDER BY table_name, ordinal_position")
    out: dict[str, dict[str, int]] = {}
    for table, column in cur.fetchall():
        q = f"`{column}`"
        cur.execute(f"SELECT COUNT(*) FROM `{table}` WHERE {q} IS NOT NULL AND CAST(CAST({q} AS CHAR) AS FLOAT) <> {q}")
        n = int(cur.fetchone()[0])
        if n:
            out.setdefault(str(table), {})[str(column)] = n
    return out


def source_data_option(tool_version: str) -> str:
    """mariadb-dump and MySQL's mysqldump before 8.0.26 call it --master-data; MySQL 8.4 knows only --source-data."""
    if "mariadb" in tool_version.lower():
        return "--master-data=2"
    found = re.search(r"Distrib (\d+)\.(\d+)\.(\d+)", tool_version) or re.search(r"Ver (\d+)\.(\d+)\.(\d+)",
                                                                                tool_version)
    release = tuple(int(n) for n in found.groups()) if found else (0, 0, 0)
    return "--source-data=2" if release >= (8, 0, 26) else "--master-data=2"


_STATED = re.compile(rb"CHANGE (?:MASTER|REPLICATION SOURCE) TO (?:MASTER|SOURCE)_LOG_FILE='([^']+)', "
                     rb"(?:MASTER|SOURCE)_LOG_POS=(\d+)")
HEAD_BYTES = 1 << 20  # the stated position comes right after the dump's header


def at_position(pieces: Iterator[bytes], expected: dict[str, Any], tool: str) -> Iterator[bytes]:
    """Pass the dump through, then fail unless its snapshot is at the binlog position recorded under the lock.

    A dump a transaction slipped in before would not match the fingerprint, and point-in-time
    recovery would apply that transaction twice; failing at the end keeps it out of the repository.
    """
    head = b""
    stated: tuple[str, int] | None = None
    for piece in pieces:
        if stated is None and len(head) < HEAD_BYTES:
            head += piece[: HEAD_BYTES - len(head)]
            m = _STATED.search(head)
            if m:
                stated = (m.group(1).decode(), int(m.group(2)))
        yield piece
    want = (expected["file"], expected["position"])
    if stated != want:
        got = f"{stated[0]}:{stated[1]}" if stated else "no position"
        raise DatabaseError(f"{tool}'s snapshot is not at the binlog position taken under the lock "
                            f"({got}, expected {want[0]}:{want[1]}): a transaction slipped in between, "
                            "so nothing was stored", hint="run the backup again")


def _auto_increments(cur: Any) -> dict[str, int]:
    cur.execute("SELECT table_name, auto_increment FROM information_schema.tables WHERE table_schema = DATABASE() "
                "AND auto_increment IS NOT NULL ORDER BY table_name")
    return {str(t): int(v) for t, v in cur.fetchall()}


def _text_sum(cur: Any, table: str) -> str:
    """The first way: each value's text joined with '|' (FLOAT's text keeps only 6 digits)."""
    cur.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = DATABASE() "
                "AND table_name = %s ORDER BY ordinal_position", (table,))
    parts = []
    for col, dtype in cur.fetchall():
        q = f"`{col}`"
        value = f"HEX({q})" if dtype.lower() in BINARY_TYPES else f"CAST({q} AS CHAR)"
        parts.append(f"COALESCE({value}, '\\\\N')")
    row = f"MD5(CONCAT_WS('|', {', '.join(parts)}))"
    return f"COALESCE(SUM(CAST(CONV(SUBSTRING({row}, 1, 16), 16, 10) AS DECIMAL(65, 0))), 0)"


def _fill_fingerprint(cur: Any, fp: Fingerprint) -> None:
    cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() "
                "AND table_type = 'BASE TABLE' ORDER BY table_name")
    tables = [str(r[0]) for r in cur.fetchall()]
    if fp.method == CANONICAL:
        canonical.my_settle(cur)
    for t in tables:
        if fp.method == CANONICAL:
            total = canonical.my_sum([v for _, v in canonical.my_columns(cur, t)])
        else:
            total = _text_sum(cur, t)
        cur.execute(f"SELECT COUNT(*), {total} FROM `{t}`")
        rows, checksum = cur.fetchone()
        fp.tables[t] = TableFingerprint(int(rows), format(int(checksum) & (2**128 - 1), "032x"))
    fp.objects["tables"] = len(tables)
    counts = {
        "indexes": "SELECT COUNT(DISTINCT table_name, index_name) FROM information_schema.statistics "
                   "WHERE table_schema = DATABASE()",
        "foreign_keys": "SELECT COUNT(*) FROM information_schema.referential_constraints "
                        "WHERE constraint_schema = DATABASE()",
        "views": "SELECT COUNT(*) FROM information_schema.views WHERE table_schema = DATABASE()",
        "triggers": "SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE()",
        "routines": "SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = DATABASE()",
        "events": "SELECT COUNT(*) FROM information_schema.events WHERE event_schema = DATABASE()",
    }
    for kind, sql in counts.items():
        cur.execute(sql)
        fp.objects[kind] = int(cur.fetchone()[0])


def only_tables(chunks: Iterable[bytes], tables: list[str], left: list[dict[str, str]] | None = None
                ) -> Iterator[bytes]:
    """Keep the header and the sections of the chosen tables from a mysqldump stream.

    Their foreign keys to tables not chosen are taken out (the target is empty: they would
    point at nothing) and added to left, as keys_left_out describes them.
    """
    from crmops.engines.mysql_tables import foreign_keys, without_keys

    wanted = {f"`{t}`".encode() for t in tables}
    seen: set[bytes] = set()
    keep = True
    buffer = b""
    block: list[bytes] = []
    for piece in chunks:
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        out = []
        for line in lines:
            if block or (keep and line.startswith(b"CREATE TABLE `") and line.endswith(b"` (")):
                block.append(line)
                # it ends after the columns' ")" (and its table options, then a PARTITION BY clause) with ";"
                if not (any(ln.startswith(b")") for ln in block[1:]) and line.endswith(b";")):
                    continue
                name = block[0][len(b"CREATE TABLE `"):-len(b"` (")].decode().replace("``", "`")
                keys = foreign_keys({name: b"\n".join(block)}, [name])
                gone = {k["references"] for k in keys} - set(tables)
                if left is not None:
                    left += keys_left_out(keys, tables, set(), None)
                out.append(without_keys(b"\n".join(block), gone))
                block = []
                continue
            if line.startswith(b"-- Table structure for table ") or line.startswith(b"-- Dumping data for table "):
                name = line.split(b" for table ", 1)[1]  # `a name`, which may hold spaces
                keep = name in wanted
                if keep:
                    seen.add(name)
            elif line.startswith(b"-- Dumping routines") or line.startswith(b"-- Dumping events") or \
                    line.startswith(b"-- Temporary table structure for view") or \
                    line.startswith(b"-- Final view structure for view"):
                keep = False
            elif line.startswith(b"/*!40") and not keep and b"SET" in line and b"@OLD_" in line:
                keep = True  # the footer restoring session settings
            if keep:
                out.append(line)
        if out:
            yield b"\n".join(out) + b"\n"
    missing = sorted(w.decode().strip("`") for w in wanted - seen)
    if missing:
        # known only at the end of the stream: the chosen tables that were there are loaded by now
        raise DatabaseError(f"table {missing[0]!r} is not in the snapshot")
    if buffer and keep:
        yield buffer
