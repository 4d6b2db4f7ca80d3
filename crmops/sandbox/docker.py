"""Docker sandboxes: the engine's official image, a private network, labels, limits.

The container joins a bridge network created with internal=True: it has no route to
the outside world, yet on Linux the host still reaches it by its IP on that bridge,
so no port is published and nothing else on the machine can reach it by a port.
Nothing here pulls an image: a missing image is the user's to `docker pull` or
`docker load`.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from crmops.config import MASK, VerifyConfig
from crmops.engines.container_tools import image_hint
from crmops.errors import ConfigError, CrmopsError, ImageMissing, SandboxUnavailable
from crmops.sandbox import guard, selfnet
from crmops.sandbox.base import flavor_of, image_for

LABEL = "crmops.sandbox"
#: on what a dry run's rehearsal stack adds to a sandbox (a copy of the app, its volumes): the sandbox's name
STACK_LABEL = "crmops.stack"
PREFIX = "crmops-sandbox-"


@dataclass(frozen=True)
class Flavor:
    """One image family's contract: port, superuser, environment, a shell line for people."""

    port: int
    scheme: str
    user: str
    env: dict[str, str]  # {password} and {database} are filled in
    #: server options for a throwaway copy: durability is worth nothing here, restore speed is;
    #: skip-name-resolve, because the internal network has no DNS and each login would wait for it
    command: list[str] = field(default_factory=list)
    shell: str = ""


FLAVORS: dict[str, Flavor] = {
    "postgresql": Flavor(
        5432, "postgresql", "postgres", {"POSTGRES_PASSWORD": "{password}", "POSTGRES_DB": "{database}",
                                             # a throwaway copy: initdb need not fsync its files
                                             "POSTGRES_INITDB_ARGS": "--no-sync"},
        ["postgres", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
         "-c", "maintenance_work_mem=256MB", "-c", "max_wal_size=4GB"],
        "docker exec -it {name} psql -U postgres -d {database}"),
    "mariadb": Flavor(
        3306, "mysql", "root", {"MARIADB_ROOT_PASSWORD": "{password}", "MARIADB_DATABASE": "{database}"},
        ["mariadbd", "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
         "--skip-log-bin"],
        "docker exec -it {name} sh -c 'mariadb -uroot -p\"$MARIADB_ROOT_PASSWORD\" {database}'"),
    "mysql": Flavor(
        3306, "mysql", "root", {"MYSQL_ROOT_PASSWORD": "{password}", "MYSQL_DATABASE": "{database}"},
        ["mysqld", "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=0", "--skip-log-bin"],
        "docker exec -it {name} sh -c 'mysql -uroot -p\"$MYSQL_ROOT_PASSWORD\" {database}'"),
}


def docker_client(timeout: float = 60) -> Any:
    """A docker SDK client that has answered a ping; SandboxUnavailable in one line otherwise."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:  # pragma: no cover - a dependency of crmops
        raise SandboxUnavailable("the docker Python package is not installed") from None
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except DockerException as e:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise SandboxUnavailable(f"the Docker engine at {where} does not answer: {why_unreachable(e)}",
                                 hint="start Docker (systemctl start docker) or set DOCKER_HOST; "
                                      "the user needs access to the Docker socket") from None
    return client


def why_unreachable(error: BaseException) -> str:
    """The reason in a few words, read from the exception chain, not the SDK's nested reprs."""
    seen: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(x) for x in seen)
    for cls, found, words in ((PermissionError, "Permission denied", "permission denied on the socket"),
                              (FileNotFoundError, "No such file or directory", "no socket there"),
                              (ConnectionRefusedError, "Connection refused", "connection refused"),
                              (TimeoutError, "timed out", "timed out")):
        if any(isinstance(x, cls) for x in seen) or found in text:
            return words
    if "NewConnectionError" in text or "Max retries exceeded" in text:
        return "cannot connect"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return first if len(first) <= 100 else first[:first.rfind(" ", 0, 100)] + " ..."


def safe_database_name(name: str | None) -> str:
    """The source's database name where the image contract allows it, else 'crm'."""
    cleaned = "".join(ch for ch in (name or "") if ch.isalnum() or ch == "_")[:63]
    return cleaned if cleaned and not cleaned[0].isdigit() else "crm"


class DockerSandbox:
    kind = "docker"

    def __init__(self, cfg: VerifyConfig, engine: str, server_version: str, *, database: str | None = None,
                 client: Any = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.flavor = flavor_of(engine, server_version)
        if self.flavor not in FLAVORS:
            raise ConfigError(f"no Docker sandbox for a {engine} database")
        self.spec = FLAVORS[self.flavor]
        self.image = image_for(cfg.images, engine, server_version)
        self.image_id = ""
        self.database = safe_database_name(database)
        self.name = PREFIX + uuid.uuid4().hex[:10]
        self._password = secrets.token_hex(16)
        self._client = client
        self._container: Any = None
        self._ip: str | None = None
        self.started_s: float | None = None
        #: set by whoever gave up on this sandbox (its start ran on another thread): stop waiting for it
        self.abandoned = False

    # -- the URL -----------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._ip is None:
            raise RuntimeError("the sandbox is not started")
        return f"{self.spec.scheme}://{self.spec.user}:{self._password}@{self._ip}:{self.spec.port}/{self.database}"

    @property
    def masked_url(self) -> str:
        return self.url.replace(f":{self._password}@", f":{MASK}@")

    def connect_info(self) -> dict[str, Any]:
        return {"name": self.name, "image": self.image, "url": self.masked_url,
                "shell": self.spec.shell.format(name=self.name, database=self.database),
                "remove": f"crmops sandbox cleanup {self.name}  (or: docker rm -f -v {self.name})"}

    # -- life cycle ----------------------------------------------------------------

    def __enter__(self) -> DockerSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client()
        return self._client

    def _labels(self) -> dict[str, str]:
        return {LABEL: "1", "crmops.created": datetime.now(UTC).isoformat(timespec="seconds"),
                "crmops.pid": str(os.getpid()), "crmops.host": socket.gethostname(),
                "crmops.engine": self.flavor, "crmops.database": self.database}

    def start(self) -> None:
        """Create network and container, then wait until a real login runs SELECT 1."""
        from docker.errors import APIError, DockerException, ImageNotFound

        t0 = time.monotonic()
        client = self.client
        try:
            image = client.images.get(self.image)
        except ImageNotFound:
            raise ImageMissing(f"sandbox image {self.image} is not present locally",
                               hint=image_hint(self.image, f"verify.images.{self.flavor}")) from None
        except DockerException as e:
            raise SandboxUnavailable(f"the Docker engine failed while looking up {self.image}: {e}") from None
        self.image_id = image.id
        guard.register(self.name, self.remove)  # before creating: an interrupted start is removed too
        labels = self._labels()
        env = {k: v.format(password=self._password, database=self.database) for k, v in self.spec.env.items()}
        cpus = min(self.cfg.cpus, float(os.cpu_count() or 1))
        try:
            client.networks.create(self.name, driver="bridge", internal=True, labels=labels, check_duplicate=True)
            self._container = client.containers.create(
                self.image, command=self.spec.command, name=self.name, environment=env, labels=labels,
                network=self.name, mem_limit=self.cfg.memory_limit, nano_cpus=int(cpus * 1e9),
                detach=True, shm_size="256m")
            self._container.start()
            self._container.reload()
            self._ip = self._container.attrs["NetworkSettings"]["Networks"][self.name]["IPAddress"]
            selfnet.join(client, self.name)  # crmops in a container reaches the sandbox through its network
        except APIError as e:
            self.remove()
            text = self._scrub(str(e.explanation or e))
            if e.status_code == 400:
                raise ConfigError(f"Docker refused the sandbox settings: {text}",
                                  hint="check verify.memory_limit and verify.cpus") from None
            raise SandboxUnavailable(f"Docker could not start sandbox {self.name}: {text}") from None
        except DockerException as e:
            self.remove()
            raise SandboxUnavailable(f"Docker could not start sandbox {self.name}: {self._scrub(str(e))}") from None
        except BaseException:
            self.remove()
            raise
        try:
            self._wait_ready()
        except BaseException:
            self.remove()
            raise
        self.started_s = round(time.monotonic() - t0, 3)

    def _wait_ready(self) -> None:
        from crmops.engines.connect import connect_engine

        deadline = time.monotonic() + self.cfg.ready_timeout_seconds
        last = "no answer yet"
        tries = 0
        while True:
            tries += 1
            # the images' entrypoints set up the server with TCP closed: until the port accepts, a
            # socket is the cheap question (a login builds an engine, about 20 ms of CPU each try),
            # and the container's state is asked about once a second
            if tries % 10 and not self.abandoned and time.monotonic() < deadline and not self._port_open():
                time.sleep(0.1)
                continue
            try:
                engine = connect_engine(self.url)
                try:
                    with engine.connect() as conn:
                        conn.exec_driver_sql("SELECT 1").fetchone()
                    return
                finally:
                    engine.dispose()
            except CrmopsError as e:
                last = e.message
            self._container.reload()
            if self._container.status in ("exited", "dead"):
                tail = self._scrub(self._container.logs(tail=3).decode(errors="replace")).strip().splitlines()
                raise SandboxUnavailable(f"sandbox {self.name} ({self.image}) stopped during start-up: "
                                         f"{tail[-1] if tail else 'no log output'}",
                                         hint="`docker logs` is gone with the container; run the image by hand "
                                              "to see why it exits")
            if self.abandoned:
                raise SandboxUnavailable(f"sandbox {self.name} was given up before it was ready")
            if time.monotonic() > deadline:
                raise SandboxUnavailable(f"sandbox {self.name} ({self.image}) was not ready within "
                                         f"{self.cfg.ready_timeout_seconds:g}s ({self._scrub(last)})",
                                         hint="raise verify.ready_timeout_seconds or check the image")
            time.sleep(0.1)

    def _port_open(self) -> bool:
        import socket

        try:
            socket.create_connection((self._ip, self.spec.port), timeout=1).close()
            return True
        except OSError:
            return False

    def alive(self) -> bool:
        from docker.errors import DockerException

        try:
            self._container.reload()
        except DockerException:
            return False
        return self._container.status == "running"

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, MASK)

    def keep(self) -> None:
        guard.forget(self.name)
        self._kept = True

    def remove(self) -> None:
        """Container (with its anonymous volumes) and network; quietly done if already gone."""
        if getattr(self, "_kept", False):
            return
        with guard.uninterrupted():
            remove_by_name(self.client, self.name)
            guard.forget(self.name)


def remove_by_name(client: Any, name: str) -> None:
    """A sandbox container, network or volume by name; a sandbox goes with its rehearsal stack (first: it
    holds the network)."""
    from docker.errors import APIError, NotFound

    for c in client.containers.list(all=True, ignore_removed=True, filters={"label": f"{STACK_LABEL}={name}"}):
        try:
            c.remove(force=True, v=True)
        except NotFound:
            pass
        except APIError as e:  # its owner is removing it at this moment
            if e.status_code != 409:
                raise
    try:
        client.containers.get(name).remove(force=True, v=True)
    except NotFound:
        pass
    except APIError as e:
        # two cleanups at once (or a cleanup and the owner's own exit): the other one is removing it already;
        # wait for it to be gone so that its network can go too
        if e.status_code != 409 or "already in progress" not in str(e):
            raise
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                client.containers.get(name)
            except NotFound:
                break
            time.sleep(0.2)
    try:
        net = client.networks.get(name)
        selfnet.detach_all(net)
        net.remove()
    except NotFound:
        pass
    volumes = client.volumes.list(filters={"label": f"{STACK_LABEL}={name}"})
    try:
        volumes.append(client.volumes.get(name))
    except NotFound:
        pass
    for v in volumes:
        if (v.attrs.get("Labels") or {}).get(LABEL) != "1":
            continue  # only what crmops labelled
        try:
            v.remove(force=True)
        except (NotFound, APIError):
            pass
