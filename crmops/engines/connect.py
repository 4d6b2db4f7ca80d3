"""Open a SQLAlchemy engine and turn connection failures into one line each.

A wrong password, a host that does not answer and a database that does not exist
need different fixes, so they get different errors (and exit codes).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from crmops.dburl import display, parse
from crmops.errors import (
    CrmopsError,
    DatabaseAuthFailed,
    DatabaseError,
    DatabaseNotFound,
    DatabaseUnreachable,
    db_said,
)

if TYPE_CHECKING:  # SQLAlchemy is imported where an engine is made: the dump/restore path needs none
    import sqlalchemy as sa

_MYSQL_CODES = {1045: DatabaseAuthFailed, 1044: DatabaseAuthFailed, 1049: DatabaseNotFound,
                2003: DatabaseUnreachable, 2002: DatabaseUnreachable, 2005: DatabaseUnreachable,
                2013: DatabaseUnreachable}

#: where a database URL comes from, for the hints
_WHERE = "database.url or the --to/--url option"


def classify(exc: BaseException, url: Any) -> CrmopsError:
    """Map a driver error to the crmops error a user can act on (never echoing the password)."""
    where = display(url)
    orig = getattr(exc, "orig", exc)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_CODES:
        cls = _MYSQL_CODES[args[0]]
    else:
        text = str(orig).lower()
        if "password authentication failed" in text or "access denied" in text or "no password supplied" in text:
            cls = DatabaseAuthFailed
        elif "does not exist" in text and "database" in text:
            cls = DatabaseNotFound
        elif any(s in text for s in ("connection refused", "could not connect", "timeout", "timed out",
                                     "no route to host", "name or service not known", "could not translate",
                                     "connection is bad", "server closed the connection")):
            cls = DatabaseUnreachable
        else:
            cls = DatabaseError
    hint = {
        # the URL may be the configured one or an option's (restore --to, demo create --url)
        DatabaseAuthFailed: f"check the user and password in {_WHERE}",
        DatabaseNotFound: f"crmops does not create databases: create it (PostgreSQL: createdb; MariaDB: "
                          f"CREATE DATABASE), or check the database name in {_WHERE}",
        DatabaseUnreachable: f"check that the server runs and that host and port in {_WHERE} are right",
    }.get(cls)
    first_line = db_said(orig)
    message = {
        DatabaseAuthFailed: f"{where}: the database rejected the credentials",
        DatabaseNotFound: f"{where}: the database does not exist",
        DatabaseUnreachable: f"{where}: the database server does not answer",
    }.get(cls, f"{where}: {first_line}")
    return cls(message, hint=hint)


def connect_engine(url: Any, *, must_exist: bool = True,
                   connect_args: dict[str, Any] | None = None) -> sa.Engine:
    """An engine that has proven it can connect; SQLite files must exist unless told otherwise.

    connect_args go to the driver (e.g. session settings such as a lock timeout).
    """
    import sqlalchemy as sa
    from sqlalchemy.exc import DBAPIError

    u = parse(url)
    if u.get_backend_name() == "sqlite":
        path = u.database
        if must_exist and path and path != ":memory:" and not Path(path).exists():
            raise DatabaseNotFound(f"{path}: SQLite database file not found")
        engine = sa.create_engine(u.to_sqlalchemy(), connect_args=dict(connect_args or {}))
    else:
        args = {"connect_timeout": 10, **(connect_args or {})}
        engine = sa.create_engine(u.to_sqlalchemy(), connect_args=args, pool_pre_ping=True)
    try:
        with engine.connect():
            pass
    except DBAPIError as e:
        engine.dispose()
        raise classify(e, u) from None
    return engine
