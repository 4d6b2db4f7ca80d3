"""Fixtures over the real test bed started by scripts/testbed.sh (see docs/TESTING.md).

Each test gets a fresh database, bucket or repository of its own. A service that is
missing fails the test in CI (CI=true) and skips it elsewhere, with the reason.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import ordering

# a run started as a background job of a non-interactive shell (`make test &`, nohup from a script)
# inherits SIGINT ignored, and so would every command the tests start: the Ctrl-C tests would then
# see a command finish where it should stop with 130. Each worker takes SIGINT back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent
BED = Path(os.environ.get("CRMOPS_TESTBED_DIR", ROOT / ".testbed"))


def _bed_env() -> dict[str, str]:
    env: dict[str, str] = {}
    f = BED / "env"
    if f.is_file():
        for line in f.read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip()
    return env


BED_ENV = _bed_env()


def missing(what: str) -> None:
    reason = f"{what} is not available: run `scripts/testbed.sh up` (or `make test`)"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def pytest_configure(config: pytest.Config) -> None:
    ordering.configure(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ordering.reorder(items)


# --- environment hygiene ----------------------------------------------------------

@pytest.fixture(autouse=True)
def _clean_crmops_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own CRMOPS_* settings must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("CRMOPS_") and not name.startswith("CRMOPS_TEST") and name != "CRMOPS_TESTBED_DIR":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")



@pytest.fixture(autouse=True)
def _crmops_logger_as_new() -> None:
    """A command run in this process (click's CliRunner, tests/matrix/cli.py) sets the crmops logger up
    for its own stderr and stops it propagating; the next test in the worker finds it as a new process
    would, or its caplog stays empty."""
    logger = logging.getLogger("crmops")
    logger.handlers.clear()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True

# --- SQLite ------------------------------------------------------------------------

@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'crm.db'}"


# --- PostgreSQL --------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    url = BED_ENV.get("CRMOPS_TEST_PG_URL")
    if not url:
        missing("PostgreSQL 15 test server")
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError as e:
        missing(f"PostgreSQL 15 test server ({str(e).splitlines()[0]})")
    return url


def _with_db(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def pg_url_factory(pg_admin_url: str) -> Iterator[Callable[[], str]]:
    import psycopg

    made: list[str] = []

    def make() -> str:
        name = _unique("t")
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0')
        made.append(name)
        return _with_db(pg_admin_url, name)

    yield make
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_url_factory: Callable[[], str]) -> str:
    return pg_url_factory()


# --- MariaDB -----------------------------------------------------------------------

def _mysql_connect(url: str, database: str | None = None):  # type: ignore[no-untyped-def]
    import pymysql
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
                           database=database, charset="utf8mb4", autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def mysql_admin_url() -> str:
    url = BED_ENV.get("CRMOPS_TEST_MYSQL_URL")
    if not url:
        missing("MariaDB 10.11 test server")
    import pymysql

    try:
        _mysql_connect(url).close()
    except pymysql.MySQLError as e:
        missing(f"MariaDB 10.11 test server ({e})")
    return url


@pytest.fixture
def mysql_url_factory(mysql_admin_url: str) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name = _unique("t")
        conn = _mysql_connect(mysql_admin_url)
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        conn.close()
        made.append(name)
        return _with_db(mysql_admin_url, name)

    yield make
    conn = _mysql_connect(mysql_admin_url)
    with conn.cursor() as cur:
        for name in made:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@pytest.fixture
def mysql_url(mysql_url_factory: Callable[[], str]) -> str:
    return mysql_url_factory()


# --- S3 ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    url = BED_ENV.get("CRMOPS_TEST_S3_ENDPOINT")
    if not url:
        missing("S3 test server (moto_server)")
    import urllib.request

    try:
        urllib.request.urlopen(f"{url}/moto-api/", timeout=5).close()
    except OSError as e:
        missing(f"S3 test server at {url} ({e})")
    return url


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing",
                        config=BotoConfig(s3={"addressing_style": "path"}))


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    name = _unique("crm").replace("_", "-")
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_lock_bucket(s3_endpoint: str) -> str:
    name = _unique("crmlock").replace("_", "-")
    s3_client(s3_endpoint).create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


# --- Docker ------------------------------------------------------------------------

SANDBOX_IMAGES = ("postgres:15", "mariadb:10.11")


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    import docker
    from docker.errors import DockerException, ImageNotFound

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except DockerException as e:
        missing(f"Docker engine ({e})")
    for image in SANDBOX_IMAGES:
        try:
            client.images.get(image)
        except ImageNotFound:
            missing(f"sandbox image {image}")
    return client
