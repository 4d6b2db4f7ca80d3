"""Database URLs: the user writes postgresql:// or mysql://, we pick the drivers we ship.

Users copy URLs from their CRM's settings; they should not need to know that
crmops talks to PostgreSQL through psycopg 3 and to MySQL/MariaDB through PyMySQL.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from crmops.errors import ConfigError

_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
    "sqlite": "sqlite",
}


def engine_kind(url: str | URL) -> str:
    """'postgresql', 'mysql' or 'sqlite' (MariaDB counts as mysql)."""
    backend = parse(url).get_backend_name()
    return "postgresql" if backend == "postgresql" else "mysql" if backend == "mysql" else "sqlite"


def parse(url: str | URL) -> URL:
    """A SQLAlchemy URL with our driver chosen; one ConfigError line when malformed."""
    try:
        u = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        raise ConfigError("database URL is not a valid URL (expected e.g. postgresql://user@host/db)") from None
    dialect = u.drivername.split("+", 1)[0]
    if dialect not in _DRIVERS:
        raise ConfigError(f"database URL scheme {dialect!r} is not supported (postgresql, mysql, sqlite)")
    if "+" not in u.drivername or dialect in {"postgres", "mariadb"}:
        u = u.set(drivername=_DRIVERS[dialect])
    return u


def safe(url: str | URL) -> str:
    """The URL as text with the password hidden, for logs, reports and manifests."""
    return parse(url).render_as_string(hide_password=True)


def display(url: str | URL) -> str:
    """The URL as people wrote it, password hidden: `postgresql://`, not the driver we picked
    (`postgresql+psycopg://`). For what people read; records keep safe()'s stable form."""
    u = parse(url)
    if u.drivername in {"postgresql+psycopg", "mysql+pymysql"}:
        u = u.set(drivername=u.drivername.split("+", 1)[0])
    return u.render_as_string(hide_password=True)
