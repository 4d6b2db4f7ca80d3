"""Set-up for the real Tryton upgrade test: Tryton (crmops-tryton:SERIES) in a container on the test
bed's PostgreSQL, its database made by its own trytond-admin and filled through its ORM, its
filestore a host folder crmops backs up as the attachments, and the shipped staged playbook
pointed at this test's container, port and database."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.ports import free_port
from tests.realschemas.packages import CACHE, PG_BIN

ROOT = Path(__file__).resolve().parents[2]
SERIES = ("7.0", "7.2", "7.4", "7.6", "7.8", "8.0")
IMAGE = "crmops-tryton:{}"
LABEL = "crmops.test"
#: the admin password of the throwaway test databases (kept in the cached 7.0 dump's res_user)
ADMIN_PASSWORD = "admin of a throwaway Tryton test database"
AUTH = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()


def server_and_db(url: str) -> tuple[str, str]:
    """A PostgreSQL URL split into trytond's database URI (the server) and the database name."""
    base, _, name = url.rpartition("/")
    return base + "/", name.split("?")[0]


@dataclass
class Tryton:
    """One trytond container; it shares the host's network to reach the test bed's server on 127.0.0.1."""

    client: Any
    name: str
    port: int
    database: str
    filestore: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rpc(self, method: str, *params: Any, database: bool = True, timeout: float = 60) -> Any:
        """One JSON-RPC call, signed in as admin (HTTP Basic) when it goes to the database."""
        body = json.dumps({"id": 1, "method": method, "params": list(params)}).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": AUTH} if database else {})}
        path = (f"/{self.database}/" if database else "/") + ("rpc/" if self.image().endswith(":8.0") else "")
        req = urllib.request.Request(self.url + path, data=body,
                                     headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            answer = json.loads(r.read())
        assert "error" not in answer or answer["error"] is None, answer
        return answer["result"]

    def version(self) -> str:
        return str(self.rpc("common.server.version", database=False, timeout=10))

    def wait(self, seconds: float = 120) -> str:
        deadline = time.monotonic() + seconds
        while True:
            try:
                return self.version()
            except (OSError, AssertionError, ValueError):
                if time.monotonic() > deadline:
                    logs = self.client.containers.get(self.name).logs(tail=20).decode(errors="replace")
                    raise AssertionError(f"{self.name} did not answer: {logs}") from None
                time.sleep(1)

    def exec(self, *argv: str) -> str:
        code, out = self.client.containers.get(self.name).exec_run(list(argv))
        text = out.decode(errors="replace")
        assert code == 0, text[-3000:]
        return text

    def image(self) -> str:
        return str(self.client.containers.get(self.name).attrs["Config"]["Image"])


@contextmanager
def tryton_container(client: Any, url: str, filestore: Path, series: str = "7.0") -> Iterator[Tryton]:
    """trytond at series on a free port, its filestore in filestore (a bind mount)."""
    tag = uuid.uuid4().hex[:8]
    name, port = f"crmops-test-tryton-{tag}", free_port()
    server, database = server_and_db(url)
    filestore.mkdir(parents=True, exist_ok=True)
    try:
        client.containers.run(IMAGE.format(series), name=name, detach=True, network_mode="host",
                              labels={LABEL: "1", f"{LABEL}.run": tag},
                              volumes={str(filestore): {"bind": "/var/lib/trytond", "mode": "rw"}},
                              environment={"TRYTOND_DATABASE__URI": server, "TRYTOND_WEB__LISTEN": f"0.0.0.0:{port}"},
                              # -d: the server loads the database's pool at start (7.8 and 8.0 do not load
                              # it for a request signed in with HTTP Basic: KeyError 'res.user')
                              command=["trytond", "-d", database])
        yield Tryton(client, name, port, database, filestore)
    finally:
        for c in client.containers.list(all=True, ignore_removed=True, filters={"label": f"{LABEL}.run={tag}"}):
            c.remove(force=True, v=True)


def _psql(url: str, *args: str, stdin: Any = None) -> None:
    subprocess.run([str(PG_BIN / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-d", url, *args], check=True,
                   capture_output=True, timeout=600, stdin=stdin)


def install(app: Tryton, url: str, scratch: Callable[[], str]) -> None:
    """Tryton 7.0's tables as its trytond-admin makes them (parties, opportunities, sales), admin's password set,
    loaded into url from a pg_dump of them: every run starts from the same database, made or cached.

    trytond-admin's first run takes minutes on a busy machine, so it runs once per image, into a
    scratch database (from scratch()), and its dump is cached (keyed by the image's id). url is always
    loaded from that dump, never made by trytond-admin itself: PostgreSQL stores an index predicate
    Tryton writes as `state IN (...)` on a varchar column in a form that a dump prints and a restore
    re-parses differently (pg_dump then prints `ARRAY[('a'::character varying)::text, ...]` where it
    printed `(ARRAY['a'::character varying, ...])::text[]`). A database trytond-admin made is therefore
    not what any logical restore of it gives back, while one loaded from a dump is: the rollback
    test's native digest before the upgrade must be of the latter (tests/services/test_restore_reparse.py).
    Two workers starting cold wait for one trytond-admin (a lock on the cache folder).
    """
    image_id = app.client.images.get(IMAGE.format("7.0")).id.split(":")[-1][:16]
    home = CACHE / f"tryton-7.0-{image_id}"
    dump = home / "installed.sql"
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not dump.is_file():
            _make_dump(app, scratch(), dump)
    with open(dump) as f:
        _psql(url, stdin=f)


def _make_dump(app: Tryton, scratch_url: str, dump: Path) -> None:
    """trytond-admin --all into the scratch database (in app's container), then its pg_dump to dump."""
    _, scratch_db = server_and_db(scratch_url)
    container = app.client.containers.get(app.name)
    code, out = container.exec_run(
        ["sh", "-c", 'printf "%s\\n" "$ADMIN_PASSWORD" > /tmp/admin.pass && TRYTONPASSFILE=/tmp/admin.pass '
         f'trytond-admin -d {scratch_db} --all --activate-dependencies --email admin@example.org '
         '-u sale_opportunity; s=$?; rm -f /tmp/admin.pass; exit $s'],
        environment={"ADMIN_PASSWORD": ADMIN_PASSWORD})
    assert code == 0, out.decode(errors="replace")[-3000:]
    tmp = dump.with_name(f"{dump.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        subprocess.run([str(PG_BIN / "pg_dump"), "--no-owner", "--no-privileges", "-d", scratch_url], stdout=f,
                       check=True, timeout=600)
    os.replace(tmp, dump)


def config_for(tmp: Path, url: str, filestore: Path) -> Path:
    """crmops's configuration for Tryton: its database, its filestore as the attachments, Tryton checks."""
    cfg: dict[str, Any] = {
        "database": {"url": url}, "repository": {"url": f"file://{tmp / 'repo'}", "chunk_avg_kib": 256},
        "encryption": {"passphrase": "${TEST_PASSPHRASE}"}, "state_dir": str(tmp / "state"),
        "attachments": {"path": str(filestore)},
        "verify": {"checks": {"fk_orphans": True},
                   "assertions": [
                       {"name": "every opportunity has a party",
                        "sql": "SELECT count(*) FROM sale_opportunity o LEFT JOIN party_party p ON p.id = o.party "
                               "WHERE p.id IS NULL", "expect": 0},
                       {"name": "every attachment's file is in the filestore's index",
                        "sql": "SELECT count(*) FROM ir_attachment WHERE type = 'data' AND file_id IS NULL",
                        "expect": 0}]},
        "migrations": {"lock_timeout_seconds": 120},
    }
    path = tmp / "crmops.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def playbook_for(tmp: Path, app: Tryton, *, plant: str | None = None) -> Path:
    """The shipped playbook pointed at this test's container, port and database, any day and hour.

    plant: SQL run as an extra step right before the 7.6 stage's trytond-admin (a failure half-way).
    """
    src = ROOT / "playbooks" / "tryton-7.0-to-8.0.yaml"
    doc = yaml.safe_load(src.read_text())
    doc["window"] = {"timezone": "UTC"}
    doc["vars"].update({"app_container": app.name, "app_url": app.url, "database": app.database})
    doc["rehearsal"]["port"] = app.port
    if plant:
        stage = next(s for s in doc["stages"] if s["name"] == "to_7_6")
        at = next(i for i, s in enumerate(stage["steps"]) if s.get("id") == "admin_7_6")
        stage["steps"].insert(at, {"id": "plant", "type": "sql", "sql": plant})
    path = tmp / (src.stem + ("-planted" if plant else "") + ".yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
