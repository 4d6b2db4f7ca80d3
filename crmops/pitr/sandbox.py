"""A sandbox that recovers a physical base backup: the PostgreSQL image over a prepared data directory.

The data directory (the base backup's tar, extracted, with recovery settings) and a
folder of WAL files fetched from the archive are bind-mounted into a container of the
same major version; restore_command copies from that folder (crmops itself does not run
inside the image). The container joins an internal network like every other sandbox.
Recovery runs to the target, PostgreSQL promotes, and only then is the superuser given a
fresh password for the host to log in with.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from crmops.config import VerifyConfig
from crmops.errors import RecoveryFailed, SandboxUnavailable
from crmops.sandbox import guard
from crmops.sandbox.docker import FLAVORS, DockerSandbox

PGDATA = "/var/lib/postgresql/data"
WALDIR = "/crmops-wal"
STOP_RE = re.compile(r"recovery stopping (?:before|after) (.*)")
#: lines PostgreSQL logs when replay could not reach the target
FAILED_RE = re.compile(r"FATAL:\s+(.*)")


class RecoverySandbox(DockerSandbox):
    def __init__(self, cfg: VerifyConfig, server_version: str, *, datadir: Path, waldir: Path, superuser: str,
                 database: str | None, timeout_s: float = 600, client: Any = None) -> None:
        super().__init__(cfg, "postgresql", server_version, database=database, client=client)
        self.datadir = datadir
        self.waldir = waldir
        self.superuser = superuser
        self.timeout_s = timeout_s
        self.stopped_at: str | None = None

    @property
    def url(self) -> str:
        if self._ip is None:
            raise RuntimeError("the sandbox is not started")
        return f"postgresql://{self.superuser}:{self._password}@{self._ip}:5432/{self.database}"

    @property
    def masked_url(self) -> str:
        return self.url.replace(f":{self._password}@", ":***@")

    def start(self) -> None:
        from docker.errors import DockerException, ImageNotFound

        from crmops.errors import ImageMissing

        t0 = time.monotonic()
        client = self.client
        try:
            self.image_id = client.images.get(self.image).id
        except ImageNotFound:
            raise ImageMissing(f"sandbox image {self.image} is not present locally",
                               hint=f"docker pull {self.image}; the image is set in verify.images.postgresql"
                               ) from None
        guard.register(self.name, self.remove)
        labels = self._labels()
        command = [*FLAVORS["postgresql"].command, "-c", "archive_mode=off", "-c", "port=5432",
                   "-c", "unix_socket_directories=/run/postgresql", "-c", "hba_file=" + PGDATA + "/pg_hba.conf",
                   "-c", "ident_file=" + PGDATA + "/pg_ident.conf"]
        try:
            client.networks.create(self.name, driver="bridge", internal=True, labels=labels, check_duplicate=True)
            self._container = client.containers.create(
                self.image, command=command, name=self.name, labels=labels, network=self.name,
                mem_limit=self.cfg.memory_limit, detach=True, shm_size="256m",
                volumes={str(self.datadir): {"bind": PGDATA, "mode": "rw"},
                         str(self.waldir): {"bind": WALDIR, "mode": "ro"}})
            self._container.start()
            self._container.reload()
            self._ip = self._container.attrs["NetworkSettings"]["Networks"][self.name]["IPAddress"]
            self._finish()
        except DockerException as e:
            self.remove()
            raise SandboxUnavailable(f"Docker could not start recovery sandbox {self.name}: {e}") from None
        except RecoveryFailed as e:
            if not (self.ended_early(e) and self.allow_retry):
                self.remove()
            raise
        except BaseException:
            self.remove()
            raise
        self.started_s = round(time.monotonic() - t0, 3)

    #: set by the caller: keep the container when replay ran out of WAL before the target
    allow_retry = False

    @staticmethod
    def ended_early(e: Exception) -> bool:
        return "before configured recovery target was reached" in str(e)

    def _finish(self) -> None:
        self._wait_promoted()
        self._psql(f"ALTER ROLE \"{self.superuser}\" PASSWORD '{self._password}'")

    def resume_to_end(self) -> None:
        """Start the stopped container again (its settings rewritten by the caller) and replay to the end."""
        t0 = time.monotonic()
        try:
            self._container.start()
            self._container.reload()
            self._ip = self._container.attrs["NetworkSettings"]["Networks"][self.name]["IPAddress"]
            self._finish()
        except BaseException:
            self.remove()
            raise
        self.started_s = round((self.started_s or 0) + time.monotonic() - t0, 3)

    def _psql(self, sql: str) -> str:
        code, out = self._container.exec_run(
            ["psql", "-h", "/run/postgresql", "-U", self.superuser, "-d", "postgres", "-XAtqc", sql], user="postgres")
        text = out.decode("utf-8", "replace").strip()
        if code != 0:
            raise RecoveryFailed(f"recovery sandbox {self.name}: {text.splitlines()[-1] if text else 'psql failed'}")
        return text

    def logs(self) -> str:
        return self._container.logs().decode("utf-8", "replace")

    def _wait_promoted(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            self._container.reload()
            if self._container.status in ("exited", "dead"):
                fatal = FAILED_RE.findall(self.logs())
                raise RecoveryFailed(f"PostgreSQL stopped during recovery: {fatal[-1] if fatal else 'no FATAL line'}",
                                     hint="the archive may not reach the target (see `crmops wal status`), "
                                          "or the target lies before the base backup's end")
            code, out = self._container.exec_run(
                ["psql", "-h", "/run/postgresql", "-U", self.superuser, "-d", "postgres", "-XAtqc",
                 "SELECT pg_is_in_recovery()"], user="postgres")
            if code == 0 and out.decode().strip() == "f":
                stops = STOP_RE.findall(self.logs())
                self.stopped_at = stops[-1].strip() if stops else None
                return
            if time.monotonic() > deadline:
                raise RecoveryFailed(f"recovery did not finish within {self.timeout_s:g} s")
            time.sleep(0.5)
