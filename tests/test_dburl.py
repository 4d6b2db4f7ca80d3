"""Database URLs are read and written exactly as SQLAlchemy reads and writes them, without it.

Sources in manifests, retention groups and `latest` compare these strings, so a URL
rendered differently from before would split one database's history in two.
"""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from crmops.dburl import display, engine_kind, has_password, parse, safe
from crmops.errors import ConfigError

URLS = [
    "postgresql://u:p%40ss@h:5432/db", "postgresql://u:p+s s@[::1]:5432/d%2Fb?sslmode=require&a=1&a=2",
    "sqlite:///demo/crm.db", "sqlite://", "sqlite:////abs/path.db", "sqlite:///:memory:",
    "mysql://root@localhost/x?charset=utf8mb4", "postgresql://user@/db?host=/var/run/postgresql",
    "mariadb://a:b@c/d", "postgres:///db", "postgresql://u:@h/db", "postgresql://u%3Ax:pa%2Fss%3A@h:1/db name",
    "mysql+pymysql://crm:s3cr%23t@db.example.com:3306/crm", "postgresql+psycopg://x:y@z/w?options=-c%20a%3Db",
]


@pytest.mark.parametrize("url", URLS)
def test_parsed_and_rendered_as_sqlalchemy_does(url: str) -> None:
    ours = parse(url)
    theirs = make_url(url).set(drivername=ours.drivername)
    for hide in (True, False):
        assert ours.render_as_string(hide_password=hide) == theirs.render_as_string(hide_password=hide)
    for attr in ("username", "password", "host", "port", "database"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.query == dict(theirs.query)
    assert ours.to_sqlalchemy() == theirs
    assert parse(theirs) == ours  # an Alembic environment's URL object comes back the same
    assert has_password(url) == (make_url(url).password is not None)


def test_the_helpers_keep_their_answers() -> None:
    assert engine_kind("mariadb://a@b/c") == "mysql" and engine_kind("postgres://a@b/c") == "postgresql"
    assert safe("postgresql://u:secret@h/db") == "postgresql+psycopg://u:***@h/db"
    assert display("mysql://u:secret@h/db") == "mysql://u:***@h/db"
    assert not has_password("not a url")


@pytest.mark.parametrize("bad", ["no scheme here", "oracle://u@h/db", "postgresql://h:notaport/db"])
def test_a_bad_url_is_one_config_error(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse(bad)
