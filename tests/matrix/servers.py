""""Production" database servers of every supported version, each a container from its sandbox image.

The images are the ones scripts/images/build.sh makes from Debian bullseye, bookworm and
trixie. A server publishes its port on the host's loopback only, like a CRM's database
on the same machine, and keeps its data on a tmpfs: these servers live for one module.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

LABEL = "crmops.test"


@dataclass(frozen=True)
class Version:
    id: str  # pytest parameter id: `-k pg17`
    engine: str  # postgresql or mysql
    image: str
    major: str  # what the server reports first: 13, 10.5 ...


VERSIONS = [
    Version("pg13", "postgresql", "postgres:13", "13"),
    Version("pg15", "postgresql", "postgres:15", "15"),
    Version("pg17", "postgresql", "postgres:17", "17"),
    Version("mariadb10_5", "mysql", "mariadb:10.5", "10.5"),
    Version("mariadb10_11", "mysql", "mariadb:10.11", "10.11"),
    Version("mariadb11_8", "mysql", "mariadb:11.8", "11.8"),
]
BY_ID = {v.id: v for v in VERSIONS}


def params(*ids: str) -> list[Any]:
    """pytest params for these versions (all when none are named), with ids for `-k`."""
    return [pytest.param(BY_ID[i], id=i) for i in (ids or BY_ID)]


@dataclass
class Server:
    version: Version
    name: str
    port: int
    password: str

    @property
    def admin_url(self) -> str:
        if self.version.engine == "postgresql":
            return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"
        return f"mysql://root:{self.password}@127.0.0.1:{self.port}/mysql"

    def url(self, database: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + f"/{database}"

    def create_database(self) -> str:
        """A fresh empty database on this server; its URL."""
        name = f"t_{uuid.uuid4().hex[:10]}"
        if self.version.engine == "postgresql":
            import psycopg

            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0')
        else:
            conn = _mysql(self.admin_url)
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            conn.close()
        return self.url(name)

    def server_version(self) -> str:
        if self.version.engine == "postgresql":
            import psycopg

            with psycopg.connect(self.admin_url) as conn:
                return conn.execute("SHOW server_version").fetchone()[0]
        conn = _mysql(self.admin_url)
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            v = cur.fetchone()[0]
        conn.close()
        return str(v)


def _mysql(url: str):  # type: ignore[no-untyped-def]
    import pymysql
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return pymysql.connect(host=u.host, port=u.port, user=u.username, password=u.password or "",
                           database=u.database, autocommit=True, connect_timeout=5)


def _ready(server: Server) -> bool:
    try:
        server.server_version()
        return True
    except Exception:
        return False


@contextmanager
def run_server(client: Any, version: Version, *, network: str | None = None) -> Iterator[Server]:
    """Start a server of version; removed (with its data) when the block ends."""
    from docker.errors import ImageNotFound

    try:
        client.images.get(version.image)
    except ImageNotFound:
        from tests.conftest import missing

        missing(f"image {version.image} (build it: scripts/images/build.sh {version.image})")
    tag = uuid.uuid4().hex[:8]
    name = f"crmops-test-{version.id.replace('_', '-')}-{tag}"
    password = secrets.token_hex(12)
    if version.engine == "postgresql":
        env, port, data = {"POSTGRES_PASSWORD": password}, 5432, "/var/lib/postgresql/data"
        command = ["postgres", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    else:
        env, port, data = {"MARIADB_ROOT_PASSWORD": password}, 3306, "/var/lib/mysql"
        command = ["mariadbd", "--innodb-flush-log-at-trx-commit=0", "--innodb-buffer-pool-size=64M"]
    container = client.containers.run(
        version.image, command, name=name, detach=True, environment=env, labels={LABEL: "1", f"{LABEL}.run": tag},
        ports={f"{port}/tcp": ("127.0.0.1", None)}, tmpfs={data: "rw,size=1g"}, network=network)
    try:
        container.reload()
        host_port = int(container.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"][0]["HostPort"])
        server = Server(version, name, host_port, password)
        deadline = time.monotonic() + 120
        while not _ready(server):
            container.reload()
            if container.status != "running" or time.monotonic() > deadline:
                raise RuntimeError(f"{version.image} did not start: {container.logs(tail=10).decode()}")
            time.sleep(0.5)
        yield server
    finally:
        container.remove(force=True, v=True)


PG_UPGRADE_IMAGE = "crmops-pg-upgrade:13-17"


@dataclass
class UpgradeHost:
    """A PostgreSQL 13 server in the image that also holds 17, as a database host set up for pg_upgrade."""

    server: Server
    container: str

    def exec(self, *argv: str, user: str = "postgres") -> Any:
        import subprocess

        return subprocess.run(["docker", "exec", "-u", user, self.container, *argv], capture_output=True, text=True,
                              timeout=120)

    def prefix(self) -> list[str]:
        return ["docker", "exec", "-u", "postgres", self.container]

    def pg_ctl(self, version: str, action: str) -> list[str]:
        data = f"/var/lib/postgresql/{version}/data"
        argv = [f"/usr/lib/postgresql/{version}/bin/pg_ctl", "-D", data, "-w"]
        if action == "start":
            argv += ["-l", f"/tmp/{version}.log", "-o", "-c listen_addresses=* -c fsync=off", "start"]
        else:
            argv += ["-m", "fast", "stop"]
        return self.prefix() + argv


@contextmanager
def run_upgrade_host(client: Any) -> Iterator[UpgradeHost]:
    """PostgreSQL 13 running under pg_ctl (not as PID 1, so it can stop while the container stays), both
    data directories on one tmpfs; the port is published on loopback and stays when 17 takes over."""
    from docker.errors import ImageNotFound

    try:
        client.images.get(PG_UPGRADE_IMAGE)
    except ImageNotFound:
        from tests.conftest import missing

        missing(f"image {PG_UPGRADE_IMAGE} (build it: scripts/images/build.sh {PG_UPGRADE_IMAGE})")
    tag = uuid.uuid4().hex[:8]
    name = f"crmops-test-pgupgrade-{tag}"
    password = secrets.token_hex(12)
    start = ('"$PG_BINDIR/pg_ctl" -D "$PGDATA" -l /tmp/13.log '
             '-o "-c listen_addresses=* -c fsync=off" -w start >/dev/null && exec sleep infinity')
    container = client.containers.run(
        PG_UPGRADE_IMAGE, ["sh", "-c", start], name=name, detach=True, init=True, labels={LABEL: "1",
                                                                                         f"{LABEL}.run": tag},
        environment={"POSTGRES_PASSWORD": password, "PG_BINDIR": "/usr/lib/postgresql/13/bin",
                     "PGDATA": "/var/lib/postgresql/13/data"},
        ports={"5432/tcp": ("127.0.0.1", None)}, tmpfs={"/var/lib/postgresql": "rw,size=2g"})
    try:
        container.reload()
        host_port = int(container.attrs["NetworkSettings"]["Ports"]["5432/tcp"][0]["HostPort"])
        host = UpgradeHost(Server(BY_ID["pg13"], name, host_port, password), name)
        deadline = time.monotonic() + 120
        while not _ready(host.server):
            container.reload()
            if container.status != "running" or time.monotonic() > deadline:
                raise RuntimeError(f"{PG_UPGRADE_IMAGE} did not start: {container.logs(tail=10).decode()}")
            time.sleep(0.5)
        r = host.exec("sh", "-c", "mkdir -p /var/lib/postgresql/17 && chown postgres: /var/lib/postgresql "
                      "/var/lib/postgresql/17", user="root")
        assert r.returncode == 0, r.stderr
        yield host
    finally:
        container.remove(force=True, v=True)
