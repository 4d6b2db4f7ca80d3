"""Create a demo CRM: run its migrations, then bulk-load deterministic data.

PostgreSQL loads through COPY, MariaDB and SQLite through batched multi-row
inserts; rows stream in batches, so a 2 GB `large` CRM needs no more memory than
`small`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command

from crmops.dburl import display, parse
from crmops.democrm import VERSIONS, alembic_config, data
from crmops.errors import ConfigError, TargetNotEmpty

BATCH = 5000


@dataclass
class DemoResult:
    url: str
    size: str
    seed: int
    version: str
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rows_per_second: float = 0.0
    database_mb: float | None = None
    attachments_dir: str | None = None
    attachment_files: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def create(url: str, *, size: str = "small", seed: int = 1, version: str = "1.0",
           attachments_dir: Path | None = None, force: bool = False,
           progress: Callable[[str, int], None] | None = None) -> DemoResult:
    """Build the demo CRM at url; refuses a database that already holds tables unless force."""
    if size not in data.SIZES:
        raise ConfigError(f"unknown demo size {size!r} (small, medium or large)")
    if version not in VERSIONS:
        raise ConfigError(f"unknown demo CRM version {version!r} ({', '.join(VERSIONS)})")
    from crmops.engines.connect import connect_engine

    engine = connect_engine(url, must_exist=False)
    plan = data.Plan(size, seed)
    started = time.monotonic()
    try:
        _prepare_empty(engine, url, force)
        cfg = alembic_config(url)
        command.upgrade(cfg, VERSIONS["1.0"])
        result = DemoResult(url=display(url), size=size, seed=seed,
                            version=version)
        for table, rows in data.TABLES:
            result.rows[table] = _load(engine, table, rows(plan), progress)
        result.rows["audit_log"] = _move_stages(engine, plan)
        _reset_sequences(engine)
        if version != "1.0":
            command.upgrade(cfg, VERSIONS[version])
        if attachments_dir is not None:
            result.attachment_files = write_attachments(plan, attachments_dir)
            result.attachments_dir = str(attachments_dir)
        result.seconds = round(time.monotonic() - started, 2)
        result.rows_per_second = round(sum(result.rows.values()) / max(result.seconds, 1e-6))
        result.database_mb = _size_mb(engine, url)
        return result
    finally:
        engine.dispose()


def _prepare_empty(engine: sa.Engine, url: str, force: bool) -> None:
    tables = sa.inspect(engine).get_table_names()
    if not tables:
        return
    if not force:
        raise TargetNotEmpty(f"the database already has {len(tables)} tables",
                             hint="use an empty database, or --force to replace a demo CRM")
    if "alembic_version" not in tables:
        raise TargetNotEmpty("the database holds tables that are not a demo CRM; refusing to drop them")
    command.downgrade(alembic_config(url), "base")


def _batches(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    while batch := list(itertools.islice(rows, BATCH)):
        yield batch


def _load(engine: sa.Engine, table: str, rows: Iterator[dict[str, Any]],
          progress: Callable[[str, int], None] | None) -> int:
    meta = sa.Table(table, sa.MetaData(), autoload_with=engine)
    count = 0
    if engine.dialect.name == "postgresql":
        count = _copy_postgres(engine, meta, rows, progress)
    else:
        with engine.begin() as conn:
            native = {c.name for c in meta.columns if isinstance(c.type, sa.JSON)}
            for batch in _batches(_json_as_text(rows, native)):
                conn.execute(meta.insert(), batch)
                count += len(batch)
                if progress:
                    progress(table, len(batch))
    return count


def _json_as_text(rows: Iterator[dict[str, Any]], native: set[str]) -> Iterator[dict[str, Any]]:
    """MariaDB reflects JSON columns as LONGTEXT: hand those serialised JSON (native ones serialise themselves)."""
    for row in rows:
        yield {k: json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) and k not in native else v
               for k, v in row.items()}


def _copy_postgres(engine: sa.Engine, table: sa.Table, rows: Iterator[dict[str, Any]],
                   progress: Callable[[str, int], None] | None) -> int:
    from psycopg.types.json import Jsonb

    json_cols = {c.name for c in table.columns if isinstance(c.type, sa.JSON)}
    columns = [c.name for c in table.columns]
    count = 0
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy(f'COPY "{table.name}" ({", ".join(columns)}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row([Jsonb(row[c]) if c in json_cols and row[c] is not None else row[c]
                                for c in columns])
                count += 1
                if progress and count % BATCH == 0:
                    progress(table.name, BATCH)
        raw.commit()
    finally:
        raw.close()
    return count


def _move_stages(engine: sa.Engine, plan: data.Plan) -> int:
    """Walk opportunities along the pipeline with UPDATEs, so the audit trigger fills audit_log."""
    stmt = sa.text("UPDATE opportunities SET stage_id = :stage WHERE id = :id")
    with engine.begin() as conn:
        for batch in _batches({"id": i, "stage": s} for i, s in data.stage_changes(plan)):
            conn.execute(stmt, batch)
        return conn.execute(sa.text("SELECT COUNT(*) FROM audit_log")).scalar_one()


def _reset_sequences(engine: sa.Engine) -> None:
    """Rows were loaded with explicit ids: move PostgreSQL's sequences past them."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        inspector = sa.inspect(conn)
        for table in inspector.get_table_names():
            if "id" not in {c["name"] for c in inspector.get_columns(table)}:
                continue
            seq = conn.execute(sa.text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table}).scalar()
            if seq:
                conn.execute(sa.text(f"SELECT setval('{seq}', COALESCE((SELECT MAX(id) FROM \"{table}\"), 0) + 1, "
                                     "false)"))


def write_attachments(plan: data.Plan, folder: Path) -> int:
    count = 0
    for f in data.attachment_files(plan):
        path = folder / f.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.content)
        count += 1
    return count


def _size_mb(engine: sa.Engine, url: str) -> float | None:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            size = conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one()
        elif engine.dialect.name == "mysql":
            size = conn.execute(sa.text(
                "SELECT SUM(data_length + index_length) FROM information_schema.tables "
                "WHERE table_schema = DATABASE()")).scalar_one()
        else:
            path = parse(url).database
            size = Path(path).stat().st_size if path else 0
    return round(int(size or 0) / 1e6, 1)
