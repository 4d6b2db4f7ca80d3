"""PostgreSQL: pg_dump/pg_restore around an exported snapshot, fingerprint on the server.

Consistency: one REPEATABLE READ transaction exports its snapshot; pg_dump runs with
--snapshot on that very snapshot while the same transaction computes the fingerprint,
so both describe one point in time even while the CRM keeps writing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crmops.dburl import DbUrl, display, parse
from crmops.engines import canonical
from crmops.engines.base import STAGE_LIMIT, Fingerprint, TableFingerprint, check_method, keys_left_out
from crmops.engines.canonical import CANONICAL
from crmops.engines.connect import classify
from crmops.engines.container_tools import Tool, choose_tool
from crmops.engines.postgres_archive import add_data_offsets
from crmops.engines.postgres_facts import OBJECTS, SYSTEM_SCHEMAS, empty_and_version, revision, version_of
from crmops.engines.postgres_toc import parse_toc, select_tables, table_keys
from crmops.engines.tools import Background, StreamedDump
from crmops.errors import CrmopsError, DatabaseError

if TYPE_CHECKING:
    import psycopg

#: each row hashed by its columns' own hash functions (PostgreSQL 14+): no rendering of rows as
#: text, so it costs the server about half of "" (hashtextextended(row::text))
RECORD_HASH = "record-hash"
FIX = ("install the PostgreSQL {major} client (apt-get install postgresql-client-{major}), "
       "or name its bin folder in CRMOPS_TOOLS_PATH")


def _conninfo(u: DbUrl) -> dict[str, Any]:
    return {"host": u.host or "127.0.0.1", "port": u.port or 5432, "user": u.username,
            "password": u.password, "dbname": u.database, "connect_timeout": 10}


#: a staged dump up to this size is restored by one pg_restore in one transaction: its parallel
#: workers' start-up and connections cost more than they save (an 1.7 MB dump: 0.56-0.63 s in one
#: transaction against 1.09-1.25 s with -j 2, side by side at load 12; docs/BENCHMARKS.md)
ONE_TRANSACTION_LIMIT = 16 << 20


def restore_jobs(size: int | None, cores: int | None = None) -> int:
    """pg_restore jobs for a dump of size bytes: one per core up to 4 when it is staged, else 1
    (a small staged dump: 1, restored in one transaction)."""
    cores = cores or len(os.sched_getaffinity(0))
    if size is None or size > STAGE_LIMIT or size <= ONE_TRANSACTION_LIMIT or cores < 2:
        return 1
    return min(cores, 4)


class PostgresEngine:
    name = "postgresql"

    def __init__(self, url: str | DbUrl, *, jobs: int | None = None, restore_owners: bool = True) -> None:
        #: jobs None: chosen from the dump's size and the cores (restore_jobs)
        self.url = parse(url)
        self.jobs = jobs
        self.restore_owners = restore_owners
        #: the server version psql reported while is_empty asked (the restore's pg_restore follows it)
        self._probed_version: str | None = None

    # -- connections -------------------------------------------------------------

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection:
        import psycopg  # here, not at the top: a restore that only needs psql never imports it

        try:
            return psycopg.connect(**_conninfo(self.url), autocommit=autocommit)
        except psycopg.OperationalError as e:
            raise classify(e, self.url) from None

    def _env(self) -> dict[str, str]:
        return libpq_env(self.url)

    def _secrets(self) -> list[str]:
        return [self.url.password or ""]

    # -- facts ---------------------------------------------------------------------

    def server_version(self) -> str:
        with self.connect() as conn:
            return version_of(conn)

    def server_major(self) -> int:
        return int(self.server_version().split(".")[0])

    def database_name(self) -> str:
        return self.url.database or ""

    def _tool(self, name: str, version: str | None = None) -> Tool:
        """The host's tool when it reaches the server's major, else the one in the server version's image."""
        version = version or self.server_version()
        major = int(version.split(".")[0])
        return choose_tool([name], (major,), flavor="postgresql", server_version=version, host=self.url.host,
                           what=f"{'back up' if name == 'pg_dump' else 'restore'} PostgreSQL {major}",
                           fix=FIX.format(major=major), env_names=sorted(self._env()),
                           extra_dirs=[f"/usr/lib/postgresql/{major}/bin"])

    def check(self) -> dict[str, Any]:
        with self.connect() as conn:
            version = conn.execute("SHOW server_version").fetchone()[0].split()[0]
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            tables = conn.execute(f"SELECT count(*) FROM pg_tables WHERE schemaname NOT IN {SYSTEM_SCHEMAS}"
                                  ).fetchone()[0]
        tools: dict[str, str] = {}
        chosen: dict[str, Any] = {}
        for t in ("pg_dump", "pg_restore"):
            try:
                tool = self._tool(t, version)
                tools[t], chosen[t] = tool.describe(), tool.to_dict()
            except Exception as e:  # reported, not raised: check lists every problem
                tools[t] = f"unusable: {e.line() if isinstance(e, CrmopsError) else e}"
        return {"engine": self.name, "url": display(self.url), "server_version": version, "size_bytes": size,
                "tables": tables, "tools": tools, "tool_choice": chosen,
                "tools_ok": all(not v.startswith("unusable") for v in tools.values())}

    def is_empty(self) -> bool:
        """No object a restore could collide with: relations, routines, types, schemas, extensions, large objects.

        A failed restore may leave only a function, a type or a schema behind; that is not empty.
        Asked through psql when it answers (postgres_facts), which also tells the server version
        the restore that follows needs."""
        probed = empty_and_version(OBJECTS, self._env())
        if probed is not None:
            empty, self._probed_version = probed
            return empty
        with self.connect() as conn:
            return conn.execute(f"SELECT {OBJECTS}").fetchone()[0] == 0

    def existing_tables(self, tables: list[str]) -> list[str]:
        """Which of these tables ("schema.table") already exist here."""
        from crmops.engines.postgres_tables import existing

        return existing(self, tables)

    def restore_tables(self, chunks: Iterable[bytes], *, format: str, tables: list[str],
                       prefix: str | None = None) -> dict[str, list[str]]:
        """Replace the chosen tables of this live database in one transaction (or add them beside, renamed)."""
        if format != "pg-custom":
            raise DatabaseError(f"a {format} dump cannot be restored into PostgreSQL")
        from crmops.engines.postgres_tables import restore_tables

        return restore_tables(self, chunks, tables, prefix)

    #: dump() reads the schema revision in its own snapshot (a backup asks no connection more for it)
    revision_in_dump = True

    def schema_revision(self) -> str | None:
        with self.connect() as conn:
            return revision(conn)

    # -- fingerprint ---------------------------------------------------------------

    def _method(self, method: str | None, major: int) -> str:
        """A stored fingerprint's method, or the fastest this server has: the values' own hashes on 14+
        (hash_record_extended came with 14), else the canonical text, which costs what any text form does."""
        if method is None:
            return RECORD_HASH if major >= 14 else CANONICAL if major >= 13 else ""
        method = check_method(self.name, method, ("", RECORD_HASH, CANONICAL))
        if method == CANONICAL and major < 13:
            raise DatabaseError(f"PostgreSQL {major} cannot compute the canonical fingerprint (13 or newer can)")
        return method

    def fingerprint(self, *, method: str | None = None) -> Fingerprint:
        with self.connect(autocommit=False) as conn:
            method = self._method(method, conn.info.server_version // 10000)
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            fp = Fingerprint(self.name, sequences=_sequences(conn), method=method)
            _fill_fingerprint(conn, fp)
            conn.rollback()
        return fp

    # -- dump ----------------------------------------------------------------------

    @contextmanager
    def dump(self) -> Iterator[StreamedDump]:
        """pg_dump in an exported snapshot; the fingerprint and the schema revision are read in the same
        snapshot, on the connection that holds it and one more (the server version comes with the first)."""
        conn = self.connect(autocommit=False)
        fp_conn = None
        proc = None
        try:
            version = version_of(conn)
            pg_dump = self._tool("pg_dump", version)
            method = self._method(None, int(version.split(".")[0]))
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            schema_revision = revision(conn)
            # sequences are not transactional: read them before pg_dump does, so what it
            # stores is never below what the fingerprint says
            sequences = _sequences(conn)
            proc = pg_dump.process(["--format=custom", "--compress=0", f"--snapshot={snapshot}", "--no-password"],
                                   env=self._env(), secrets=self._secrets(), label="pg_dump")
            # the fingerprint runs on a second connection in the same snapshot, alongside pg_dump
            fp_conn = self.connect(autocommit=False)
            fp_conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            fp_conn.execute(f"SET TRANSACTION SNAPSHOT {_literal(snapshot)}")

            def compute() -> Fingerprint:
                fp = Fingerprint(self.name, sequences=sequences, method=method)
                _fill_fingerprint(fp_conn, fp)
                return fp

            streamed = StreamedDump("pg-custom", proc, Background(compute), version, tool=pg_dump.to_dict())
            streamed.schema_revision = schema_revision  # type: ignore[attr-defined]
            yield streamed
        finally:
            if proc is not None:
                proc.close()
            for c in (fp_conn, conn):
                if c is not None:
                    try:
                        c.rollback()
                    finally:
                        c.close()

    # -- restore -------------------------------------------------------------------

    def restore(self, chunks: Iterable[bytes], *, format: str, tables: list[str] | None = None,
                staged: Path | None = None) -> list[dict[str, str]]:
        """staged: the dump already whole in a private file (chunks then unused), restored with -j.

        With tables, only those; returns the foreign keys left out (see keys_left_out)."""
        if format != "pg-custom":
            raise DatabaseError(f"a {format} dump cannot be restored into PostgreSQL")
        pg_restore = self._tool("pg_restore", self._probed_version)
        argv = ["--no-password", f"--dbname={self.url.database}", "--exit-on-error"]
        if not self.restore_owners:
            argv += ["--no-owner", "--no-acl"]
        jobs = self.jobs or (restore_jobs(staged.stat().st_size) if staged is not None else 1)
        if jobs <= 1 and not tables and staged is None:
            pg_restore.feed(argv, chunks, env=self._env(), secrets=self._secrets(), label="pg_restore")
            return []
        # parallel restore and table selection read the archive more than once, so they
        # need a seekable file: the stream is spooled to a private temporary folder
        left: list[dict[str, str]] = []
        with tempfile.TemporaryDirectory(prefix="crmops-restore-") as tmp:
            path = Path(tmp) / "dump.pgc"
            if staged is not None:
                path = staged
                tmp = str(staged.parent)
            else:
                with open(path, "wb") as f:
                    for piece in chunks:
                        f.write(piece)
            if jobs > 1:
                argv.append(f"--jobs={jobs}")
                add_data_offsets(path)  # jobs by size, largest first, and no worker scanning for its data
            elif staged is not None and self.jobs is None and staged.stat().st_size <= ONE_TRANSACTION_LIMIT:
                argv.append("--single-transaction")
            if tables:
                toc = self._archive_text(pg_restore, ["--list", "--verbose"], path)
                (Path(tmp) / "selected.list").write_text(select_tables(toc, tables))
                argv.append(f"--use-list={Path(tmp) / 'selected.list'}")
                # the target is empty: a key to a table not chosen has nothing to point at
                entries, deps, _ = parse_toc(toc)
                left = keys_left_out(table_keys(entries, deps, tables), tables, set(), None)
            try:
                pg_restore.feed([*argv, str(path)], [], env=self._env(), secrets=self._secrets(),
                                label="pg_restore", mounts=[tmp])
            except DatabaseError as e:
                # one transaction locks every object it creates at once; a schema of thousands of
                # tables can outgrow the server's lock table. Nothing was committed: restore again
                # the usual way
                if "--single-transaction" not in argv or not any(
                        m in str(e) for m in ("max_locks_per_transaction", "out of shared memory")):
                    raise
                argv.remove("--single-transaction")
                pg_restore.feed([*argv, str(path)], [], env=self._env(), secrets=self._secrets(),
                                label="pg_restore", mounts=[tmp])
        return left

    def _archive_text(self, pg_restore: Tool, args: list[str], path: Path) -> str:
        """What pg_restore prints about an archive file (its listing, or its schema as SQL)."""
        out = pg_restore.process([*args, str(path)], env=self._env(), secrets=self._secrets(),
                                 label=f"pg_restore {args[0]}", mounts=[str(path.parent)])
        try:
            return b"".join(out.pieces()).decode("utf-8", "replace")
        finally:
            out.close()

    def describe_archive(self, staged: Path, version: str | None = None) -> tuple[str, str]:
        """(`pg_restore --list --verbose`, the tables' CREATE statements) of a staged dump: what an
        undo needs to know which tables its sandbox must hold, before restoring any. version: the
        server version whose pg_restore reads it (default: this server's, which asks it)."""
        pg_restore = self._tool("pg_restore", version)
        return (self._archive_text(pg_restore, ["--list", "--verbose"], staged),
                self._archive_text(pg_restore, ["--schema-only", "--section=pre-data", "--file=-"], staged))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sequences(conn: psycopg.Connection) -> dict[str, int]:
    """Each sequence's stored value (pg_sequences hides it until first use, e.g. after setval(.., false))."""
    names = conn.execute("""SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename)
                            FROM pg_sequences ORDER BY 1""").fetchall()
    return {n: int(conn.execute(f"SELECT last_value FROM {n}").fetchone()[0]) for (n,) in names}


#: built-in types whose hash functions depend on the value alone (not on OIDs a restore
#: renumbers, as enums' do), hashed as they are; all other columns are hashed as their text
#: (bit and varbit have no extended hash function: hash_record_extended refuses them)
_HASHED_AS_IS = (16, 17, 18, 20, 21, 23, 25, 650, 700, 701, 829, 869, 1042, 1043, 1082, 1083, 1114, 1184, 1186,
                 1266, 1700, 2950, 3802)


def _row_hash(conn: psycopg.Connection, qualified: str, method: str) -> str:
    """The SQL expression of a row's 64-bit hash in table alias t."""
    if method == CANONICAL:
        return canonical.pg_hash([v for _, v in canonical.pg_columns(conn, qualified)])
    if method != RECORD_HASH:
        return "hashtextextended(t::text, 0)"
    cols = conn.execute("""SELECT quote_ident(a.attname), a.atttypid = ANY(%(as_is)s)
                                  OR (ty.typcategory = 'A' AND ty.typelem = ANY(%(as_is)s)),
                                  CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END = 142
                           FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
                           WHERE a.attrelid = %(table)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
                           ORDER BY a.attnum""", {"as_is": list(_HASHED_AS_IS), "table": qualified}).fetchall()
    if not cols:
        return "hashtextextended(t::text, 0)"
    return f"hash_record_extended(ROW({', '.join(_as_hashed(c, as_is, xml) for c, as_is, xml in cols)}), 0)"


def _as_hashed(col: str, as_is: bool, xml: bool) -> str:
    """A column as record-hash hashes it. xml as its output function writes it, as pg_dump does: the
    cast to text keeps an `<?xml version="1.0"?>` declaration that the dump drops."""
    return col if as_is else f"xml_out(t.{col})::text" if xml else f"t.{col}::text"


def _table_checksum(conn: psycopg.Connection, qualified: str, method: str) -> tuple[int, int]:
    """Row count and the order-independent sum of each row's 64-bit hash.

    sum(bigint) adds in 128 bits and returns an exact numeric, so it cannot overflow.
    Tampering is the AEAD's job; this detects a restore that differs from what was dumped.
    """
    rows, checksum = conn.execute(f"SELECT count(*), COALESCE(sum({_row_hash(conn, qualified, method)}), 0) "
                                  f"FROM {qualified} t").fetchone()
    return int(rows), int(checksum)


def _partition_roots(conn: psycopg.Connection) -> dict[str, str]:
    """Each partition (as fingerprints name tables) -> the topmost partitioned table it belongs to."""
    if conn.info.server_version < 100000:
        return {}
    rows = conn.execute(f"""SELECT CASE WHEN cn.nspname = 'public' THEN c.relname ELSE cn.nspname || '.' || c.relname
                                   END, CASE WHEN pn.nspname = 'public' THEN p.relname
                                   ELSE pn.nspname || '.' || p.relname END
                            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                            JOIN pg_namespace cn ON cn.oid = c.relnamespace
                            JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace
                            WHERE c.relispartition AND cn.nspname NOT IN {SYSTEM_SCHEMAS}""").fetchall()
    parent = {str(c): str(p) for c, p in rows}
    out = {}
    for child in parent:
        top = parent[child]
        while top in parent:
            top = parent[top]
        out[child] = top
    return out


def _fill_fingerprint(conn: psycopg.Connection, fp: Fingerprint) -> None:
    tables = conn.execute(f"""SELECT quote_ident(schemaname) || '.' || quote_ident(tablename), schemaname, tablename
                              FROM pg_tables WHERE schemaname NOT IN {SYSTEM_SCHEMAS} ORDER BY 2, 3""").fetchall()
    if fp.method == CANONICAL:
        canonical.pg_settle(conn)
    fp.partitions = _partition_roots(conn)
    for qualified, schema, table in tables:
        name = table if schema == "public" else f"{schema}.{table}"
        if name in fp.partitions:
            continue  # its rows are in its partitioned table's entry: counted once
        rows, checksum = _table_checksum(conn, qualified, fp.method)
        fp.tables[name] = TableFingerprint(rows, format(checksum & (2**128 - 1), "032x"))
    user_ns = f"n.nspname NOT IN {SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg_temp%'"
    counts = {
        "tables": len(tables),
        "indexes": f"SELECT count(*) FROM pg_indexes WHERE schemaname NOT IN {SYSTEM_SCHEMAS}",
        "foreign_keys": f"""SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
                            WHERE c.contype = 'f' AND {user_ns}""",
        "views": f"SELECT count(*) FROM pg_views WHERE schemaname NOT IN {SYSTEM_SCHEMAS}",
        "materialized_views": f"SELECT count(*) FROM pg_matviews WHERE schemaname NOT IN {SYSTEM_SCHEMAS}",
        "triggers": f"""SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND {user_ns}""",
        # routines an extension brings are the extension's, not the CRM's
        "routines": f"""SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                        WHERE {user_ns} AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid
                        AND d.deptype = 'e')""",
        "sequences": f"SELECT count(*) FROM pg_sequences WHERE schemaname NOT IN {SYSTEM_SCHEMAS}",
        "enums": f"""SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                     WHERE t.typtype = 'e' AND {user_ns}""",
        "extensions": "SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql'",
        "large_objects": "SELECT count(*) FROM pg_largeobject_metadata",
    }
    for kind, sql in counts.items():
        fp.objects[kind] = sql if isinstance(sql, int) else int(conn.execute(sql).fetchone()[0])
    # large objects' content, order-independent like table rows
    lo = conn.execute("""SELECT COALESCE(sum(('x' || substr(md5(m.oid::text || ':' ||
                           encode(lo_get(m.oid), 'hex')), 1, 16))::bit(64)::bigint::numeric), 0)
                         FROM pg_largeobject_metadata m""").fetchone()[0]
    if fp.objects["large_objects"]:
        fp.tables["pg_largeobject"] = TableFingerprint(fp.objects["large_objects"],
                                                       format(int(lo) & (2**128 - 1), "032x"))


def libpq_env(url: Any, *, database: bool = True, app: str | None = None) -> dict[str, str]:
    """The connection for a client tool as PG* variables: nothing of it, the password least, on argv."""
    env = {"PGHOST": url.host or "127.0.0.1", "PGPORT": str(url.port or 5432), "PGCONNECT_TIMEOUT": "10"}
    if database:
        env["PGDATABASE"] = url.database or ""
    if app:
        env["PGAPPNAME"] = app
    if url.username:
        env["PGUSER"] = url.username
    if url.password:
        env["PGPASSWORD"] = url.password
    return env
