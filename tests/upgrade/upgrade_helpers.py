"""Set-up for the upgrade tests: a demo CRM, its repository, and the demo app in a real container."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crmops.engines import Fingerprint, open_engine
from crmops.journal import Journal
from tests.ports import free_port
from tests.verify.verify_helpers import ok, run, write_config

ROOT = Path(__file__).resolve().parents[2]
DEMO_PLAYBOOK = ROOT / "playbooks" / "democrm-1-to-2.yaml"
LABEL = "crmops.test"


@dataclass
class App:
    """The demo CRM app (crmops-demo-app) in a labelled container on a private network, port on loopback."""

    client: Any
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def image(self) -> str:
        c = self.client.containers.get(self.name)
        return c.attrs["Config"]["Image"] if c.status == "running" else f"{c.attrs['Config']['Image']} ({c.status})"

    def version(self) -> str:
        with urllib.request.urlopen(f"{self.url}/version", timeout=5) as r:
            return json.loads(r.read())["version"]


@contextmanager
def app_container(client: Any, image: str = "crmops-demo-app:1.0", *, env: dict[str, str] | None = None,
                  volume: bool = False) -> Iterator[App]:
    """volume: a named volume at /data holding one file, as a CRM keeps its uploads."""
    tag = uuid.uuid4().hex[:8]
    name, labels = f"crmops-test-app-{tag}", {LABEL: "1", f"{LABEL}.run": tag}
    net = client.networks.create(f"crmops-test-net-{tag}", driver="bridge", labels=labels)
    port = free_port()
    volumes = {}
    if volume:
        client.volumes.create(f"crmops-test-vol-{tag}", labels=labels)
        volumes = {f"crmops-test-vol-{tag}": {"bind": "/data", "mode": "rw"}}
    try:
        client.containers.run(image, name=name, detach=True, labels=labels, network=net.name, volumes=volumes,
                              ports={"8080/tcp": ("127.0.0.1", port)},
                              environment={"CRM_SETTING": "kept", **(env or {})})
        if volume:
            client.containers.get(name).exec_run(["sh", "-c", "echo contract > /data/upload.txt"])
        app = App(client, name, port)
        wait_http(app)
        yield app
    finally:
        for c in client.containers.list(all=True, ignore_removed=True, filters={"label": f"{LABEL}.run={tag}"}):
            c.remove(force=True, v=True)
        net.remove()
        for v in client.volumes.list(filters={"label": f"{LABEL}.run={tag}"}):
            v.remove(force=True)


def wait_http(app: App, seconds: float = 30) -> None:
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            app.version()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def derived_image(client: Any, base: str, tag: str, change: str) -> str:
    """base with one Dockerfile change (ENV …, CMD …), built by committing a stopped container."""
    try:
        client.images.get(tag)
        return tag
    except Exception:  # docker.errors.ImageNotFound
        pass
    c = client.containers.create(base, labels={LABEL: "1"})
    try:
        repo, _, version = tag.partition(":")
        c.commit(repository=repo, tag=version, changes=[change])
    finally:
        c.remove(force=True)
    return tag


def playbook_for(tmp: Path, app: App, *, name: str = "upgrade.yaml", edit: Any = None, **vars: Any) -> Path:
    """The shipped demo playbook pointed at this test's container, URL and maintenance flag."""
    doc = yaml.safe_load(DEMO_PLAYBOOK.read_text())
    doc["window"] = {"timezone": "UTC"}  # any day, any hour: the tests do not wait for a weekend night
    doc["vars"].update({"app_container": app.name, "app_url": app.url,
                        "maintenance_flag": str(tmp / "maintenance.flag"), **vars})
    for stage in doc["stages"]:
        for step in stage["steps"]:
            if step.get("id") == "health":
                step.update(retries=2, retry_delay=0.5)  # fail a broken app in seconds, not ten
    if edit is not None:
        edit(doc)
    path = tmp / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def prepared(tmp: Path, url: str, *, size: str = "small", verify: bool = True) -> Path:
    """A demo CRM 1.0 with one (verified) snapshot; returns the config file."""
    from crmops.democrm.load import create

    if size == "medium" and url.startswith("postgres"):  # copied from one build (tests/democache.py)
        from tests.democache import medium_pg

        medium_pg(url)
    else:
        create(url, size=size)
    config = write_config(tmp, url, attachments=False, verify={"checks": {"fk_orphans": True}})
    doc = yaml.safe_load(config.read_text())
    doc["migrations"] = {"lock_timeout_seconds": 120}  # the crash test holds a lock on purpose
    config.write_text(yaml.safe_dump(doc))
    ok(run(config, "repo", "init"))
    ok(run(config, "backup"))
    if verify:
        ok(run(config, "verify"))
    return config


def fingerprint(url: str) -> Fingerprint:
    return open_engine(url).fingerprint()


def same(a: Fingerprint, b: Fingerprint) -> list[str]:
    return [f"{d.kind} {d.name}: {d.reason} ({d.expected} -> {d.found})" for d in a.compare(b)]


def last_journal(tmp: Path) -> list[dict[str, Any]]:
    paths = sorted((tmp / "state" / "upgrades").glob("*.jsonl"), key=os.path.getmtime)
    j = Journal(paths[-1])
    j.verify()
    return list(j.records())
