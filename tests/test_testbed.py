"""The test bed itself: every real service answers, and the sandbox images honour
the official images' environment contract."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import s3_client


def test_postgresql_15(pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        encoding = conn.execute("SHOW server_encoding").fetchone()[0]
    assert version.startswith("15.") and encoding == "UTF8"


def test_mariadb_10_11(mysql_url: str) -> None:
    from sqlalchemy.engine import make_url

    from tests.conftest import _mysql_connect

    conn = _mysql_connect(mysql_url, make_url(mysql_url).database)
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION(), @@character_set_database")
        version, charset = cur.fetchone()
    conn.close()
    assert version.startswith("10.11.") and "MariaDB" in version and charset == "utf8mb4"


def test_s3_put_get(s3_endpoint: str, s3_bucket: str) -> None:
    s3 = s3_client(s3_endpoint)
    s3.put_object(Bucket=s3_bucket, Key="a/b", Body=b"\x00crm\xff")
    assert s3.get_object(Bucket=s3_bucket, Key="a/b")["Body"].read() == b"\x00crm\xff"


def _run(docker_client, image: str, env: dict[str, str]):  # type: ignore[no-untyped-def]
    return docker_client.containers.run(image, detach=True, environment=env, labels={"crmops.test": "1"},
                                        name=f"crmops-test-{uuid.uuid4().hex[:8]}")


def _wait_exec(container, cmd: list[str], env: dict[str, str] | None = None, timeout: float = 90) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        code, out = container.exec_run(cmd, environment=env or {})
        if code == 0:
            return out.decode()
        if time.monotonic() > deadline:
            raise AssertionError(f"{cmd} never succeeded: {out.decode()[-500:]}\n{container.logs().decode()[-2000:]}")
        time.sleep(0.5)


@pytest.mark.docker
def test_postgres_image_contract(docker_client) -> None:  # type: ignore[no-untyped-def]
    env = {"POSTGRES_PASSWORD": "pw-" + uuid.uuid4().hex[:6], "POSTGRES_USER": "crm", "POSTGRES_DB": "crmdb"}
    c = _run(docker_client, "postgres:15", env)
    try:
        # a password login over TCP, as a sandbox client would make it
        out = _wait_exec(c, ["psql", "-h", "127.0.0.1", "-U", "crm", "-d", "crmdb", "-tAc",
                             "SELECT current_user || ' ' || current_database() || ' ' || version()"],
                         env={"PGPASSWORD": env["POSTGRES_PASSWORD"]})
        assert out.startswith("crm crmdb PostgreSQL 15.")
        # as in the official image, loopback inside the container is trusted; the network is not
        c.reload()
        ip = next(iter(c.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        code, out = c.exec_run(["psql", "-h", ip, "-U", "crm", "-d", "crmdb", "-c", "SELECT 1"],
                               environment={"PGPASSWORD": "wrong"})
        assert code != 0 and b"password authentication failed" in out
        code, _ = c.exec_run(["psql", "-h", ip, "-U", "crm", "-d", "crmdb", "-c", "SELECT 1"],
                             environment={"PGPASSWORD": env["POSTGRES_PASSWORD"]})
        assert code == 0
    finally:
        c.remove(force=True)


@pytest.mark.docker
def test_postgres_image_refuses_without_password(docker_client) -> None:  # type: ignore[no-untyped-def]
    c = _run(docker_client, "postgres:15", {})
    try:
        assert c.wait(timeout=60)["StatusCode"] != 0
        assert b"POSTGRES_PASSWORD" in c.logs()
    finally:
        c.remove(force=True)


@pytest.mark.docker
def test_mariadb_image_contract(docker_client) -> None:  # type: ignore[no-untyped-def]
    pw = "pw-" + uuid.uuid4().hex[:6]
    c = _run(docker_client, "mariadb:10.11", {"MARIADB_ROOT_PASSWORD": pw, "MARIADB_DATABASE": "crm"})
    try:
        out = _wait_exec(c, ["mariadb", "-h", "127.0.0.1", "-uroot", "-N", "-e",
                             "SELECT CONCAT(DATABASE(), ' ', VERSION()) FROM DUAL", "crm"],
                         env={"MYSQL_PWD": pw})
        assert out.startswith("crm 10.11.")
        code, _ = c.exec_run(["mariadb", "-h", "127.0.0.1", "-uroot", "-e", "SELECT 1"],
                             environment={"MYSQL_PWD": "wrong"})
        assert code != 0
    finally:
        c.remove(force=True)
