"""The demo CRM: a realistic CRM schema under Alembic, and data that stresses a backup tool.

It exists so every crmops capability can be shown and tested end to end on
SQLite, PostgreSQL and MariaDB without anyone's production CRM.
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config as AlembicConfig

from crmops.dburl import parse

SCRIPT_LOCATION = str(Path(__file__).parent / "migrations")

#: demo CRM release -> the Alembic revision that completes it
VERSIONS: dict[str, str] = {"1.0": "d1_0003", "2.0": "d2_0003"}


def alembic_config(url: str) -> AlembicConfig:
    """An Alembic config for the shipped migrations; the URL is kept off every log line."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.attributes["url"] = parse(url).to_sqlalchemy()
    return cfg
