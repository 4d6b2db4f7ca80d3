"""Database engines behind one protocol (see base.py): PostgreSQL, MySQL/MariaDB, SQLite."""

from __future__ import annotations

from crmops.config import DatabaseConfig
from crmops.dburl import engine_kind
from crmops.engines.base import Difference, Dump, Engine, Fingerprint, TableFingerprint

__all__ = ["Difference", "Dump", "Engine", "Fingerprint", "TableFingerprint", "open_engine"]


def open_engine(url: str, cfg: DatabaseConfig | None = None) -> Engine:
    """The engine for a database URL; options (parallel jobs, owners) from the config."""
    kind = engine_kind(url)
    jobs = cfg.jobs if cfg else None
    owners = cfg.restore_owners if cfg else True
    if kind == "postgresql":
        from crmops.engines.postgres import PostgresEngine

        return PostgresEngine(url, jobs=jobs, restore_owners=owners)
    if kind == "mysql":
        from crmops.engines.mysql import MysqlEngine

        return MysqlEngine(url, jobs=jobs, hold_seconds=cfg.hold_writers_seconds) if cfg else MysqlEngine(url)
    from crmops.engines.sqlite import SqliteEngine

    return SqliteEngine(url)
