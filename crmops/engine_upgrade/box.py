"""pg_upgrade's rehearsal: a throwaway container holding both PostgreSQL versions.

The dry run restores the latest snapshot's copy into the old version inside the box,
then runs the same upgrade() as production against it.
"""

from __future__ import annotations

import time
from typing import Any

from crmops.config import Config
from crmops.engine_upgrade.evidence import other_databases, risk_line
from crmops.engine_upgrade.pg_upgrade import Layout, _major, _run, upgrade
from crmops.engines import open_engine
from crmops.engines.container_tools import image_hint
from crmops.errors import ConfigError, CrmopsError
from crmops.playbooks.steps import StepContext, StepFailed


class UpgradeBox:
    """A throwaway container holding both versions: the old server running, room for the new cluster.

    Its data lives on a tmpfs (both clusters on one file system, as --link needs), on a
    private network like the verify sandboxes, labelled so `crmops sandbox cleanup` finds it.
    """

    def __init__(self, image: str, old: str, new: str, *, database: str, memory_limit: str) -> None:
        import secrets
        import uuid

        from crmops.sandbox.docker import PREFIX, safe_database_name

        self.image, self.old, self.new = image, old, new
        self.database = safe_database_name(database)
        self.name = PREFIX + uuid.uuid4().hex[:10]
        self.memory_limit = memory_limit
        self._password = secrets.token_hex(16)
        self._ip = ""
        self._client: Any = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{self._password}@{self._ip}:5432/{self.database}"

    def layout(self, mode: str) -> Layout:
        ex = ["docker", "exec", "-u", "postgres", self.name]
        old_bin, new_bin = f"/usr/lib/postgresql/{self.old}/bin", f"/usr/lib/postgresql/{self.new}/bin"
        old_data, new_data = f"/var/lib/postgresql/{self.old}/data", f"/var/lib/postgresql/{self.new}/data"
        listen = "-c listen_addresses=*"
        return Layout(old_datadir=old_data, new_datadir=new_data, old_bindir=old_bin, new_bindir=new_bin,
                      exec_prefix=ex, mode=mode,
                      stop_old=ex + [f"{old_bin}/pg_ctl", "-D", old_data, "-m", "fast", "-w", "stop"],
                      start_old=ex + [f"{old_bin}/pg_ctl", "-D", old_data, "-l", "/tmp/old.log",
                                      "-o", listen, "-w", "start"],
                      start_new=ex + [f"{new_bin}/pg_ctl", "-D", new_data, "-l", "/tmp/new.log",
                                      "-o", listen, "-w", "start"])

    def __enter__(self) -> UpgradeBox:
        from docker.errors import DockerException, ImageNotFound

        from crmops.errors import ImageMissing, SandboxUnavailable
        from crmops.sandbox import guard
        from crmops.sandbox.docker import LABEL, docker_client

        self._client = docker_client()
        try:
            self._client.images.get(self.image)
        except ImageNotFound:
            raise ImageMissing(f"image {self.image} (PostgreSQL {self.old} and {self.new} together) is not present",
                               hint=image_hint(self.image, "the step's image:")) from None
        guard.register(self.name, self.remove)
        import os
        import socket
        from datetime import UTC, datetime

        # the verify sandboxes' labels: `crmops sandbox cleanup` tells a live owner from a dead one
        labels = {LABEL: "1", "crmops.created": datetime.now(UTC).isoformat(timespec="seconds"),
                  "crmops.pid": str(os.getpid()), "crmops.host": socket.gethostname(),
                  "crmops.engine": "postgresql", "crmops.database": self.database}
        old_bin = f"/usr/lib/postgresql/{self.old}/bin"
        start = (f'"{old_bin}/pg_ctl" -D "$PGDATA" -l /tmp/old.log -o "-c listen_addresses=*" '
                 "-w start >/dev/null && exec sleep infinity")
        try:
            self._client.networks.create(self.name, driver="bridge", internal=True, labels=labels)
            c = self._client.containers.run(
                self.image, ["sh", "-c", start], name=self.name, detach=True, labels=labels, network=self.name,
                init=True, mem_limit=self.memory_limit, tmpfs={"/var/lib/postgresql": "rw,size=8g"},
                environment={"POSTGRES_PASSWORD": self._password, "POSTGRES_DB": self.database,
                             "PG_BINDIR": old_bin, "PGDATA": f"/var/lib/postgresql/{self.old}/data"})
            c.reload()
            self._ip = c.attrs["NetworkSettings"]["Networks"][self.name]["IPAddress"]
            _run(["docker", "exec", self.name, "sh", "-c",
                  f"mkdir -p /var/lib/postgresql/{self.new} && chown postgres: /var/lib/postgresql "
                  f"/var/lib/postgresql/{self.new}"], timeout=60, check=True, what="preparing the box")
            self._wait()
        except DockerException as e:
            self.remove()
            raise SandboxUnavailable(f"Docker could not start {self.name}: "
                                     f"{str(e).replace(self._password, '********')}") from None
        except BaseException:
            self.remove()
            raise
        return self

    def _wait(self) -> None:
        from crmops.engines.connect import connect_engine

        deadline = time.monotonic() + 120
        while True:
            try:
                engine = connect_engine(self.url)
                try:
                    with engine.connect() as conn:
                        conn.exec_driver_sql("SELECT 1")
                    return
                finally:
                    engine.dispose()
            except CrmopsError:
                if time.monotonic() > deadline:
                    raise StepFailed(f"{self.name} ({self.image}) did not start within 120s") from None
                time.sleep(0.3)

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        from crmops.sandbox import guard
        from crmops.sandbox.docker import remove_by_name

        if self._client is not None:
            with guard.uninterrupted():
                remove_by_name(self._client, self.name)
                guard.forget(self.name)


def rehearse(config: Config, source_url: str, target_version: str, params: dict[str, Any], *,
             smoke: list[dict[str, Any]], ctx: StepContext, timeout: float) -> dict[str, Any]:
    """The latest snapshot's copy, upgraded by pg_upgrade in a box of both versions: findings, time, rows."""
    source = open_engine(source_url, config.database)
    src = source.server_version()
    old, new = _major(src), _major(target_version)
    if int(new) <= int(old):
        raise ConfigError(f"target_version {target_version} is not newer than the server ({src})")
    image = str(params.get("image") or f"crmops-pg-upgrade:{old}-{new}")
    mode = str(params.get("mode") or "link")
    with UpgradeBox(image, old, new, database=source.database_name(),
                    memory_limit=config.verify.memory_limit) as box:
        ctx.say(f"rehearsing pg_upgrade ({mode}) in {image} ({box.name})")
        t0 = time.monotonic()
        box_engine = open_engine(box.url, config.database)
        with source.dump() as dump:  # the copy the rehearsal restored, now in a PostgreSQL {old} cluster
            box_engine.restore(dump.chunks(), format=dump.format)
        load_s = time.monotonic() - t0
        report = upgrade(config, box.url, box.url, target_version, box.layout(mode), smoke=smoke, ctx=ctx,
                         timeout=timeout)
        report.update(image=image, load_seconds=round(load_s, 2))
    others = other_databases(source, source_url, config)
    report["risks"] = [risk_line(others, source.database_name())] if others else []
    for line in report["risks"]:
        ctx.say(f"warning: {line}")
    return report
