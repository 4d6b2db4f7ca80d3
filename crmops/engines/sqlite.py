"""SQLite: the online backup API into a private temporary copy, then stream that copy.

SQLite has no dump server to stream from, so this engine needs one temporary copy
of the database (on the same disk as the system temp folder). The copy is a single
consistent point even while the CRM writes, and it is what the fingerprint reads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crmops.dburl import DbUrl, parse
from crmops.engines.base import Fingerprint, TableFingerprint, check_method
from crmops.engines.tools import PIECE
from crmops.errors import DatabaseError, DatabaseNotFound

OBJECT_KINDS = {"index": "indexes", "view": "views", "trigger": "triggers"}


class SqliteDump:
    format = "sqlite-db"

    def __init__(self, path: Path, fingerprint: Fingerprint, version: str) -> None:
        self._path = path
        self.fingerprint = fingerprint
        self.server_version = version

    def chunks(self) -> Iterator[bytes]:
        with open(self._path, "rb") as f:
            while piece := f.read(PIECE):
                yield piece


class SqliteEngine:
    name = "sqlite"

    def __init__(self, url: str | DbUrl, **_: Any) -> None:
        self.url = parse(url)
        self.path = Path(self.url.database or "")

    def _open(self, path: Path | None = None) -> sqlite3.Connection:
        p = path or self.path
        if not p.exists():
            raise DatabaseNotFound(f"{p}: SQLite database file not found")
        try:
            return sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error as e:
            raise DatabaseError(f"{p}: cannot open: {e}") from None

    def server_version(self) -> str:
        return sqlite3.sqlite_version

    def server_major(self) -> int:
        return int(sqlite3.sqlite_version.split(".")[0])

    def database_name(self) -> str:
        return self.path.name

    def check(self) -> dict[str, Any]:
        conn = self._open()
        try:
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                                  "AND name NOT LIKE 'sqlite_%'").fetchone()[0]
        finally:
            conn.close()
        return {"engine": self.name, "url": f"sqlite:///{self.path}", "server_version": self.server_version(),
                "size_bytes": self.path.stat().st_size, "tables": tables,
                "tools": {"backup": "sqlite3 online backup API (built in)"}, "tools_ok": True}

    def is_empty(self) -> bool:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return True
        conn = self._open()
        try:
            sql = "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            return conn.execute(sql).fetchone()[0] == 0
        finally:
            conn.close()

    def existing_tables(self, tables: list[str]) -> list[str]:
        """Which of these names already exist in the file (as a table, view, index or trigger)."""
        from crmops.engines.sqlite_tables import existing

        return existing(self.path, tables)

    def restore_tables(self, chunks: Iterable[bytes], *, format: str, tables: list[str],
                       prefix: str | None = None) -> dict[str, list[str]]:
        """Replace the chosen tables of this live file in one transaction (or add them beside, renamed)."""
        if format != "sqlite-db":
            raise DatabaseError(f"a {format} dump cannot be restored into SQLite")
        from crmops.engines.sqlite_tables import restore_tables

        return restore_tables(self.path, chunks, tables, prefix)

    def schema_revision(self) -> str | None:
        conn = self._open()
        try:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone():
                return None
            return ",".join(r[0] for r in conn.execute("SELECT version_num FROM alembic_version ORDER BY 1")) or None
        finally:
            conn.close()

    def fingerprint(self, path: Path | None = None, *, method: str | None = None) -> Fingerprint:
        check_method(self.name, method)
        conn = self._open(path)
        try:
            return _fingerprint(conn)
        finally:
            conn.close()

    @contextmanager
    def dump(self) -> Iterator[SqliteDump]:
        source = self._open()
        tmp = tempfile.TemporaryDirectory(prefix="crmops-sqlite-")
        copy_path = Path(tmp.name) / "snapshot.db"
        try:
            target = sqlite3.connect(copy_path)
            try:
                # one step: a stepwise backup restarts whenever the CRM writes, and may never finish
                source.backup(target, pages=-1)
            finally:
                target.close()
            yield SqliteDump(copy_path, self.fingerprint(copy_path), self.server_version())
        except sqlite3.Error as e:
            raise DatabaseError(f"{self.path}: online backup failed: {e}") from None
        finally:
            source.close()
            tmp.cleanup()

    def restore(self, chunks: Iterable[bytes], *, format: str, tables: list[str] | None = None) -> None:
        if format != "sqlite-db":
            raise DatabaseError(f"a {format} dump cannot be restored into SQLite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".crmops-restore-", dir=self.path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                for piece in chunks:
                    f.write(piece)
                f.flush()
                os.fsync(f.fileno())
            if tables:
                tmp = _only_tables(tmp, tables)
            os.replace(tmp, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()


def _only_tables(full: Path, tables: list[str]) -> Path:
    """A new database file holding just the chosen tables (schema, rows and their indexes)."""
    part = full.with_suffix(".part")
    conn = sqlite3.connect(part)
    try:
        conn.execute("ATTACH DATABASE ? AS src", (str(full),))
        known = {r[0] for r in conn.execute("SELECT name FROM src.sqlite_master WHERE type = 'table'")}
        missing = sorted(set(tables) - known)
        if missing:
            raise DatabaseError(f"not in the snapshot: {', '.join(missing)}")
        for t in tables:
            sql = conn.execute("SELECT sql FROM src.sqlite_master WHERE type = 'table' AND name = ?",
                               (t,)).fetchone()[0]
            conn.execute(sql)
            conn.execute(f'INSERT INTO main."{t}" SELECT * FROM src."{t}"')
            for (idx,) in conn.execute("SELECT sql FROM src.sqlite_master WHERE type = 'index' AND tbl_name = ? "
                                       "AND sql IS NOT NULL", (t,)).fetchall():
                conn.execute(idx)
        conn.commit()
        conn.execute("DETACH DATABASE src")
    finally:
        conn.close()
    full.unlink()
    shutil.move(part, full)
    return full


def _fingerprint(conn: sqlite3.Connection) -> Fingerprint:
    fp = Fingerprint("sqlite")
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                         "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    for t in tables:
        rows = 0
        total = 0
        for row in conn.execute(f'SELECT * FROM "{t}"'):
            # repr keeps types apart (1 vs '1' vs b'1'); the sum makes row order irrelevant
            total += int.from_bytes(hashlib.md5(repr(row).encode(), usedforsecurity=False).digest()[:8], "big")
            rows += 1
        fp.tables[t] = TableFingerprint(rows, format(total & (2**128 - 1), "032x"))
    fp.objects["tables"] = len(tables)
    for kind, name in OBJECT_KINDS.items():
        fp.objects[name] = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = ? "
                                        "AND name NOT LIKE 'sqlite_%'", (kind,)).fetchone()[0]
    fp.objects["foreign_keys"] = sum(len(conn.execute(f'PRAGMA foreign_key_list("{t}")').fetchall()) for t in tables)
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        fp.sequences = {name: int(seq) for name, seq in conn.execute("SELECT name, seq FROM sqlite_sequence")}
    return fp
