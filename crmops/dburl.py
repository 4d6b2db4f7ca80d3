"""Database URLs: the user writes postgresql:// or mysql://, we pick the drivers we ship.

Users copy URLs from their CRM's settings; they should not need to know that
crmops talks to PostgreSQL through psycopg 3 and to MySQL/MariaDB through PyMySQL.

The URL is parsed and rendered here exactly as SQLAlchemy's make_url() and
render_as_string() do (same grammar, same quoting), without importing SQLAlchemy:
a backup or restore on PostgreSQL never needs it, and it cost 0.16 CPU-s of imports
per command. Where SQLAlchemy or Alembic takes a URL, to_sqlalchemy() hands one over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote

from crmops.errors import ConfigError

_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
    "sqlite": "sqlite",
}

#: SQLAlchemy's own URL grammar (sqlalchemy.engine.url._parse_url), so both read a URL alike
_PATTERN = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
        """,
    re.X,
)


@dataclass(frozen=True)
class DbUrl:
    """A parsed database URL with the attributes (and methods) of SQLAlchemy's URL that crmops uses."""

    drivername: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    #: key -> value, or a tuple of values when the key repeats
    query: dict[str, str | tuple[str, ...]] = field(default_factory=dict)

    def get_backend_name(self) -> str:
        return self.drivername.split("+", 1)[0]

    def set(self, **changes: Any) -> DbUrl:
        return replace(self, **changes)

    def render_as_string(self, hide_password: bool = True) -> str:
        s = self.drivername + "://"
        if self.username is not None:
            s += quote(self.username, safe=" +")
            if self.password is not None:
                s += ":" + ("***" if hide_password else quote(str(self.password), safe=" +"))
            s += "@"
        if self.host is not None:
            s += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            s += ":" + str(self.port)
        if self.database is not None:
            s += "/" + quote(self.database, safe=" +/")
        if self.query:
            s += "?" + "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k in sorted(self.query)
                                for v in _as_list(self.query[k]))
        return s

    def __str__(self) -> str:
        return self.render_as_string()

    def to_sqlalchemy(self) -> Any:
        """The same URL as SQLAlchemy's URL object, for create_engine and Alembic environments."""
        from sqlalchemy.engine import URL

        return URL.create(self.drivername, self.username, self.password, self.host, self.port, self.database,
                          self.query)


def _as_list(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _make_url(text: str) -> DbUrl:
    m = _PATTERN.match(text)
    if m is None:
        raise ValueError(text)
    c = m.groupdict()
    query: dict[str, str | tuple[str, ...]] = {}
    if c["query"] is not None:
        for key, value in parse_qsl(c["query"]):
            old = query.get(key)
            query[key] = value if old is None else (*_as_list(old), value)
    port = int(c["port"]) if c["port"] else None
    return DbUrl(c["name"], *(unquote(c[k]) if c[k] is not None else None for k in ("username", "password")),
                 host=c["ipv4host"] or c["ipv6host"], port=port,
                 database=unquote(c["database"]) if c["database"] is not None else None, query=query)


def engine_kind(url: str | Any) -> str:
    """'postgresql', 'mysql' or 'sqlite' (MariaDB counts as mysql)."""
    backend = parse(url).get_backend_name()
    return "postgresql" if backend == "postgresql" else "mysql" if backend == "mysql" else "sqlite"


def parse(url: str | Any) -> DbUrl:
    """The URL with our driver chosen; one ConfigError line when malformed.

    Takes text, a DbUrl, or a SQLAlchemy URL (as Alembic environments hand one over)."""
    try:
        if isinstance(url, DbUrl):
            u = url
        else:
            text = url if isinstance(url, str) else url.render_as_string(hide_password=False)
            u = _make_url(text)
    except ValueError:
        raise ConfigError("database URL is not a valid URL (expected e.g. postgresql://user@host/db)") from None
    dialect = u.drivername.split("+", 1)[0]
    if dialect not in _DRIVERS:
        raise ConfigError(f"database URL scheme {dialect!r} is not supported (postgresql, mysql, sqlite)")
    if "+" not in u.drivername or dialect in {"postgres", "mariadb"}:
        u = u.set(drivername=_DRIVERS[dialect])
    return u


def has_password(url: str) -> bool:
    """Whether url carries a password (False for text that is no URL at all)."""
    try:
        return _make_url(url).password is not None
    except ValueError:
        return False


def safe(url: str | Any) -> str:
    """The URL as text with the password hidden, for logs, reports and manifests."""
    return parse(url).render_as_string(hide_password=True)


def display(url: str | Any) -> str:
    """The URL as people wrote it, password hidden: `postgresql://`, not the driver we picked
    (`postgresql+psycopg://`). For what people read; records keep safe()'s stable form."""
    u = parse(url)
    if u.drivername in {"postgresql+psycopg", "mysql+pymysql"}:
        u = u.set(drivername=u.drivername.split("+", 1)[0])
    return u.render_as_string(hide_password=True)
