"""Set-up for the undo tests: a demo CRM 2.0 with a snapshot, a deletion, colleagues, native digests."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from crmops.config import Config
from crmops.democrm.load import create
from crmops.engines.connect import connect_engine
from crmops.undo.source import PastState
from tests.verify.verify_helpers import load, ok, run, write_config

#: tables the deletion of an account reaches in the demo CRM 2.0, parents first
TOUCHED = ("accounts", "contacts", "opportunities", "activities", "attachments", "customer_feedback")


#: a live-side trigger that refuses new activities: the undo fails half-way, after its first inserts
FAIL_ACTIVITIES = {
    "postgresql": ["CREATE FUNCTION refuse_activity() RETURNS trigger AS $$ BEGIN "
                   "RAISE EXCEPTION 'activities are frozen'; END $$ LANGUAGE plpgsql",
                   "CREATE TRIGGER refuse_activity BEFORE INSERT ON activities FOR EACH ROW "
                   "EXECUTE FUNCTION refuse_activity()"],
    "mysql": ["CREATE TRIGGER refuse_activity BEFORE INSERT ON activities FOR EACH ROW "
              "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'activities are frozen'"],
    "sqlite": ["CREATE TRIGGER refuse_activity BEFORE INSERT ON activities BEGIN "
               "SELECT RAISE(ABORT, 'activities are frozen'); END"],
}
UNFAIL_ACTIVITIES = {
    "postgresql": ["DROP TRIGGER refuse_activity ON activities", "DROP FUNCTION refuse_activity()"],
    "mysql": ["DROP TRIGGER refuse_activity"],
    "sqlite": ["DROP TRIGGER refuse_activity"],
}


def demo_with_snapshot(tmp_path: Path, url: str) -> tuple[Path, Config, str]:
    create(url, size="small", version="2.0", attachments_dir=tmp_path / "files")
    path = write_config(tmp_path, url)
    ok(run(path, "repo", "init"))
    snap = ok(run(path, "--json", "backup"))["snapshot_id"]
    return path, load(path), snap


@contextmanager
def shared(past: PastState) -> Iterator[PastState]:
    """One sandbox serves several undo runs: the source's context stays open around them all."""
    yield past


def ids(conn: sa.Connection, sql: str, **params: Any) -> list[int]:
    stmt = sa.text(sql)
    for name, value in params.items():
        if isinstance(value, list | tuple | set):
            stmt = stmt.bindparams(sa.bindparam(name, expanding=True))
            params[name] = list(value) or [-1]
    return sorted(r[0] for r in conn.execute(stmt, params))


def account_with_attachments(conn: sa.Connection, skip: tuple[int, ...] = ()) -> int:
    rows = conn.execute(sa.text(
        "SELECT o.account_id, COUNT(*) FROM attachments a JOIN opportunities o ON o.id = a.opportunity_id "
        "GROUP BY o.account_id ORDER BY COUNT(*) DESC, o.account_id")).all()
    return next(a for a, _ in rows if a not in skip)


def closure(conn: sa.Connection, account: int) -> dict[str, list[int]]:
    """Everything that hangs on an account, computed by hand (not by undo's code)."""
    c = ids(conn, "SELECT id FROM contacts WHERE account_id = :a", a=account)
    o = ids(conn, "SELECT id FROM opportunities WHERE account_id = :a OR contact_id IN :c", a=account, c=c)
    return {
        "accounts": [account], "contacts": c, "opportunities": o,
        "activities": ids(conn, "SELECT id FROM activities WHERE contact_id IN :c OR opportunity_id IN :o", c=c, o=o),
        "attachments": ids(conn, "SELECT id FROM attachments WHERE opportunity_id IN :o", o=o),
        "customer_feedback": ids(conn, "SELECT id FROM customer_feedback WHERE opportunity_id IN :o "
                                       "OR contact_id IN :c", o=o, c=c),
    }


def rows_of(conn: sa.Connection, table: str, keys: list[int]) -> list[dict[str, Any]]:
    t = sa.Table(table, sa.MetaData(), autoload_with=conn)
    return [dict(r) for r in conn.execute(sa.select(t).where(t.c.id.in_(keys or [-1])).order_by(t.c.id)).mappings()]


def delete(conn: sa.Connection, gone: dict[str, list[int]]) -> None:
    """What the CRM does when a salesperson deletes the customer: children first."""
    for table in reversed(TOUCHED):
        if gone[table]:
            conn.execute(sa.text(f"DELETE FROM {table} WHERE id IN :k").bindparams(
                sa.bindparam("k", expanding=True)), {"k": gone[table]})


def native_digest(url: str, *, skip_rows: dict[str, list[int]] | None = None) -> dict[str, str]:
    """The schema as the engine's own dump tool prints it, and a checksum per table computed by the
    server; for tables in skip_rows, the rows outside those keys (hashed in key order)."""
    skip_rows = skip_rows or {}
    u = make_url(url)
    out: dict[str, str] = {}
    engine = connect_engine(url)
    try:
        with engine.connect() as conn:
            tables = sorted(sa.inspect(conn).get_table_names())
            if u.get_backend_name() == "postgresql":
                env = {**os.environ, "PGPASSWORD": u.password or ""}
                dump = subprocess.run(
                    ["pg_dump", "--schema-only", "-h", u.host, "-p", str(u.port), "-U", u.username, u.database],
                    env=env, capture_output=True, check=True).stdout
                # pg_dump 15.14+ fences the script with a random \restrict key on every run
                out["schema"] = _sha(b"\n".join(line for line in dump.splitlines()
                                                 if not line.startswith((b"\\restrict", b"\\unrestrict"))))
                for t in tables:
                    if t not in skip_rows:
                        out[t] = conn.execute(sa.text(
                            f'SELECT md5(string_agg(x::text, E\'\\n\' ORDER BY x::text)) FROM "{t}" x')).scalar() or ""
            elif u.get_backend_name() == "mysql":
                env = {**os.environ, "MYSQL_PWD": u.password or ""}
                out["schema"] = _sha(subprocess.run(
                    ["mariadb-dump", "--no-data", "--skip-dump-date", "-h", u.host, "-P", str(u.port), "-u",
                     u.username, u.database], env=env, capture_output=True, check=True).stdout)
                for t in tables:
                    if t not in skip_rows:
                        out[t] = str(conn.execute(sa.text(f"CHECKSUM TABLE `{t}`")).one()[1])
            else:
                out["schema"] = _sha(subprocess.run(["sqlite3", u.database, ".schema"], capture_output=True,
                                                    check=True).stdout)
                for t in tables:
                    if t not in skip_rows:
                        out[t] = _sha(subprocess.run(["sqlite3", u.database, f'SELECT * FROM "{t}" ORDER BY 1'],
                                                     capture_output=True, check=True).stdout)
            for t, keys in skip_rows.items():
                tbl = sa.Table(t, sa.MetaData(), autoload_with=conn)
                rows = conn.execute(sa.select(tbl).where(tbl.c.id.not_in(keys or [-1])).order_by(tbl.c.id)).all()
                out[t] = _sha(repr([tuple(r) for r in rows]).encode())
    finally:
        engine.dispose()
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def counters(url: str) -> dict[str, int]:
    """Next-id counters of the touched tables, read natively."""
    engine = connect_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                out = {}
                for t in TOUCHED:
                    seq = conn.execute(sa.text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": t}).scalar()
                    if seq:
                        last, called = conn.execute(sa.text(f"SELECT last_value, is_called FROM {seq}")).one()
                        out[t] = last if called else last - 1
                return out
            if engine.dialect.name == "mysql":
                return {t: v for t, v in conn.execute(sa.text(
                    "SELECT table_name, auto_increment FROM information_schema.tables "
                    "WHERE table_schema = DATABASE()")) if t in TOUCHED}
            return {}
    finally:
        engine.dispose()
