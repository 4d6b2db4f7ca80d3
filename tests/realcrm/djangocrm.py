"""Set-up for the real Django CRM tests: the CRM (crmops-djangocrm:VERSION) in a container on
the test bed's database, its data made by the CRM's own ORM, and the shipped playbook pointed
at this test's container, port and database."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crmops.dburl import parse
from tests.ports import free_port
from tests.realschemas.dbcache import made_once

ROOT = Path(__file__).resolve().parents[2]
OLD, NEW = "2.4.0", "3.1.0"
IMAGE = "crmops-djangocrm:{}"
LABEL = "crmops.test"
USER_HEADER = {"X-CRM-User": "IamSUPER"}
#: what the test bed's database is, for the CRM's settings (crmops_settings.py reads DB_*)
DB_ENGINES = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}


@dataclass
class Crm:
    """One Django CRM container; it shares the host's network to reach the test bed's server on 127.0.0.1."""

    client: Any
    name: str
    port: int
    media: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, *, timeout: float = 60, signed_in: bool = True) -> tuple[int, str]:
        """signed_in: as the CRM's first user (a sign-in writes a session and the user's last_login)."""
        req = urllib.request.Request(self.url + path, headers=USER_HEADER if signed_in else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def version(self) -> str:
        status, body = self.get("/healthz", timeout=10, signed_in=False)
        assert status == 200, body
        return json.loads(body)["version"]

    def wait(self, seconds: float = 180) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.version()
                return
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    logs = self.client.containers.get(self.name).logs(tail=20).decode(errors="replace")
                    raise AssertionError(f"{self.name} did not answer /healthz: {logs}") from None
                time.sleep(1)

    def exec(self, *argv: str, timeout: float = 900) -> str:
        code, out = self.client.containers.get(self.name).exec_run(list(argv))
        text = out.decode(errors="replace")
        assert code == 0, text[-3000:]
        return text

    def image(self) -> str:
        c = self.client.containers.get(self.name)
        return str(c.attrs["Config"]["Image"])


def crm_env(url: str) -> dict[str, str]:
    u = parse(url)
    return {"DB_ENGINE": DB_ENGINES[u.get_backend_name()], "DB_HOST": "127.0.0.1", "DB_PORT": str(u.port),
            "DB_NAME": u.database or "", "DB_USER": u.username or "", "DB_PASSWORD": str(u.password or "")}


@contextmanager
def crm_container(client: Any, url: str, media: Path, version: str = OLD) -> Iterator[Crm]:
    """The CRM at version, serving on a free loopback port, its uploads in media (a bind mount)."""
    tag = uuid.uuid4().hex[:8]
    name, port = f"crmops-test-djangocrm-{tag}", free_port()
    media.mkdir(parents=True, exist_ok=True)
    try:
        client.containers.run(IMAGE.format(version), name=name, detach=True, network_mode="host",
                              labels={LABEL: "1", f"{LABEL}.run": tag},
                              volumes={str(media): {"bind": "/srv/crm/media", "mode": "rw"}},
                              environment={**crm_env(url), "PORT": str(port), "CRM_USER_HEADER": "X-CRM-User"})
        yield Crm(client, name, port, media)
    finally:
        for c in client.containers.list(all=True, ignore_removed=True, filters={"label": f"{LABEL}.run={tag}"}):
            c.remove(force=True, v=True)


def setupdata(crm: Crm, url: str, version: str = OLD) -> bool:
    """The CRM's own `setupdata` (Django's first migrate, reference data, the first users) on the empty
    database: one to three minutes, so run once per image and engine and loaded from its dump after
    that (tests/realschemas/dbcache.py). It writes nothing into the media folder. True when loaded."""
    image_id = crm.client.images.get(IMAGE.format(version)).id.split(":")[-1][:16]
    return made_once(url, f"djangocrm-{version}-{image_id}-setupdata",
                     lambda: crm.exec("python3", "/opt/crmops/fixture.py", "0"))


def config_for(tmp: Path, url: str, media: Path) -> Path:
    """crmops's configuration for the CRM: its database, its media folder as the attachments, the CRM's
    verify checks from docs/examples/django-crm-verify.yaml."""
    cfg: dict[str, Any] = {
        "database": {"url": url}, "repository": {"url": f"file://{tmp / 'repo'}", "chunk_avg_kib": 256},
        "encryption": {"passphrase": "${TEST_PASSPHRASE}"}, "state_dir": str(tmp / "state"),
        "attachments": {"path": str(media)},
        # the shipped snippet for Django CRM: its checks and assertions, as an operator would copy them
        "verify": yaml.safe_load((ROOT / "docs" / "examples" / "django-crm-verify.yaml").read_text())["verify"],
        "migrations": {"lock_timeout_seconds": 120},
    }
    path = tmp / "crmops.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def playbook_for(tmp: Path, crm: Crm, engine: str) -> Path:
    """The shipped playbook for the engine, pointed at this test's container and port, any day and hour."""
    src = ROOT / "playbooks" / f"django-crm-{'postgres' if engine == 'postgresql' else 'mariadb'}.yaml"
    doc = yaml.safe_load(src.read_text())
    doc["window"] = {"timezone": "UTC"}
    doc["vars"].update({"app_container": crm.name, "app_url": crm.url})
    doc["rehearsal"]["port"] = crm.port
    path = tmp / src.name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
