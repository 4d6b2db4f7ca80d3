"""What a revision expects the schema to be, and how a live database differs from it.

The expected schema is built for real: the migrations up to the revision run into a
scratch database of the same engine (a temporary file for SQLite; a scratch database
on the same server for PostgreSQL and MariaDB, or a sandbox when the user may not
create one). The two are then compared with SQLAlchemy reflection and Alembic's
autogenerate comparison, plus views and triggers, which autogenerate does not see.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from crmops.dburl import engine_kind, parse
from crmops.engines.connect import connect_engine
from crmops.errors import DatabaseError
from crmops.migrations.runner import Session
from crmops.migrations.scripts import Scripts

VERSION_TABLE = "alembic_version"


class ScratchUnavailable(Exception):
    """The server refused a scratch database (no CREATE privilege)."""


@dataclass(frozen=True)
class SchemaDifference:
    kind: str  # table | column | index | unique | foreign-key | type | nullable | view | trigger | other
    name: str
    table: str | None
    change: str  # missing (expected, not in the database) | unexpected (in the database only) | differs
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = f"{self.table}." if self.table and self.kind not in ("index", "unique", "foreign-key") else ""
        on = f" on {self.table}" if self.table and self.kind in ("index", "unique", "foreign-key") else ""
        words = {"missing": "expected but missing from the database",
                 "unexpected": "in the database but not in the migrations (added by hand?)",
                 "differs": "differs from the migrations"}[self.change]
        return f"{self.kind} {where}{self.name}{on}: {words}" + (f" ({self.detail})" if self.detail else "")


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A new empty database beside url's (same server, same encoding), dropped afterwards."""
    kind = engine_kind(url)
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="crmops-expected-") as folder:
            yield f"sqlite:///{Path(folder) / 'expected.db'}"
        return
    name = f"crmops_scratch_{uuid.uuid4().hex[:10]}"
    engine = connect_engine(url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            try:
                if kind == "postgresql":
                    encoding = conn.exec_driver_sql("SELECT pg_encoding_to_char(encoding) FROM pg_database "
                                                    "WHERE datname = current_database()").scalar_one()
                    conn.exec_driver_sql(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING '{encoding}'")
                else:
                    charset, collation = conn.exec_driver_sql(
                        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                        "WHERE SCHEMA_NAME = DATABASE()").one()
                    conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET {charset} COLLATE {collation}")
            except sa.exc.DBAPIError as e:
                raise ScratchUnavailable(str(getattr(e, "orig", e)).strip().splitlines()[0]) from None
        try:
            yield parse(url).set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                if kind == "postgresql":
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                else:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        engine.dispose()


def build(scripts: Scripts, url: str, revision: str | None, *, lock_timeout: float = 30) -> None:
    """Run the migrations from nothing up to revision into the (empty) database at url."""
    with Session(url, lock_timeout=lock_timeout, must_exist=False) as session:
        steps = scripts.steps(session.current(), revision)
        if steps:
            session.run(scripts, steps)


def compare(live_url: str, expected_url: str) -> list[SchemaDifference]:
    """Differences of the live schema from the expected one (both the same engine), alembic_version aside."""
    expected_engine = connect_engine(expected_url)
    live_engine = connect_engine(live_url)
    try:
        with expected_engine.connect() as exp, live_engine.connect() as live:
            metadata = sa.MetaData()
            metadata.reflect(exp)
            if VERSION_TABLE in metadata.tables:
                metadata.remove(metadata.tables[VERSION_TABLE])
            context = MigrationContext.configure(live, opts={
                "compare_type": True, "compare_server_default": False,
                "include_name": lambda name, type_, parent: not (type_ == "table" and name == VERSION_TABLE),
            })
            try:
                diffs = _translate(compare_metadata(context, metadata))
            except sa.exc.DBAPIError as e:
                raise DatabaseError(f"comparing schemas failed: {str(getattr(e, 'orig', e)).splitlines()[0]}") \
                    from None
            for kind, finder in (("view", _views), ("trigger", _triggers)):
                want, have = finder(exp), finder(live)
                diffs += [SchemaDifference(kind, n, None, "missing") for n in sorted(want - have)]
                diffs += [SchemaDifference(kind, n, None, "unexpected") for n in sorted(have - want)]
            return diffs
    finally:
        expected_engine.dispose()
        live_engine.dispose()


def _views(conn: sa.Connection) -> set[str]:
    return set(sa.inspect(conn).get_view_names())


def _triggers(conn: sa.Connection) -> set[str]:
    name = conn.dialect.name
    if name == "postgresql":
        sql = "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
    elif name in ("mysql", "mariadb"):
        sql = "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
    return {r[0] for r in conn.exec_driver_sql(sql)}


def _translate(ops: list[Any]) -> list[SchemaDifference]:
    """Alembic's diff tuples (what to do to the database to match) -> what differs, in words."""
    found: list[SchemaDifference] = []
    for item in ops:
        if isinstance(item, list):  # column modifications come grouped
            for mod in item:
                _, _schema, table, column, _kw, old, new = mod
                kind = mod[0].replace("modify_", "")
                kind = {"type": "type", "nullable": "nullable"}.get(kind, kind)
                found.append(SchemaDifference(kind, column, table, "differs", f"database: {old}, expected: {new}"))
            continue
        op = item[0]
        if op in ("add_table", "remove_table"):
            found.append(SchemaDifference("table", item[1].name, None, _change(op)))
        elif op in ("add_column", "remove_column"):
            col = item[3]
            found.append(SchemaDifference("column", col.name, item[2], _change(op), str(col.type)))
        elif op in ("add_index", "remove_index"):
            index = item[1]
            cols = ", ".join(c.name for c in index.columns) or ", ".join(str(e) for e in index.expressions)
            found.append(SchemaDifference("index", index.name or "?", index.table.name if index.table is not None
                                          else None, _change(op), f"({cols})" + (" unique" if index.unique else "")))
        elif op in ("add_constraint", "remove_constraint"):
            cons = item[1]
            kind = "unique" if isinstance(cons, sa.UniqueConstraint) else "constraint"
            cols = ", ".join(c.name for c in cons.columns)
            found.append(SchemaDifference(kind, cons.name or "?", cons.table.name, _change(op), f"({cols})"))
        elif op in ("add_fk", "remove_fk"):
            fk = item[1]
            cols = ", ".join(c.name for c in fk.columns)
            found.append(SchemaDifference("foreign-key", fk.name or "?", fk.table.name, _change(op),
                                          f"({cols}) -> {fk.referred_table.name}"))
        else:
            found.append(SchemaDifference("other", str(op), None, "differs", repr(item[1:])[:200]))
    return found


def _change(op: str) -> str:
    # autogenerate says what to do to the database: "add" = the migrations have it and the database not
    return "missing" if op.startswith("add_") else "unexpected"
