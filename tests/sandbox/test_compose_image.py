"""The crmops image beside a CRM in Docker Compose (docs/COMPOSE.md), on the real engine.

docs/compose/compose.yaml is run as `docker compose` would run it (no compose tool on the test
bed): its project network, the `db` service from postgres:15 with the file's environment, and
the `crmops` service's image, env file, environment and volumes (the Docker socket included) for
`docker compose run --rm crmops ARGS` and for its `loop`. Through the crmops container: the demo
CRM is written into `db`, backed up over the private network, verified in a sandbox that the
container reaches by joining its network, and restored into another database whose rows equal
the original's, which is untouched.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import crmops
from tests.conftest import ROOT, missing

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.xdist_group("compose")]

COMPOSE = ROOT / "docs" / "compose"
IMAGE = f"crmops:{crmops.__version__}"
PASSWORD = "compose-db-" + uuid.uuid4().hex[:8]


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"docker {' '.join(args[:3])}: {r.stderr[-2000:]}"
    return r


def _expand(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:?msg} and ${VAR:-default} for the values the example uses."""
    return re.sub(r"\$\{(\w+)(?::[?-][^}]*)?\}", lambda m: env[m.group(1)], value)


class Stack:
    """The example's services on a private network, as `docker compose -p NAME` names them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.spec: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
        self.project = f"crmops-compose-{uuid.uuid4().hex[:8]}"
        self.network = f"{self.project}_crm"
        self.env = {"CRM_DB_PASSWORD": PASSWORD}
        self.containers: list[str] = []

    def up_db(self) -> str:
        svc = self.spec["services"]["db"]
        name = f"{self.project}-db-1"
        env = [f"--env={k}={_expand(str(v), self.env)}" for k, v in svc["environment"].items()]
        docker("run", "-d", "--name", name, "--network", self.network, "--network-alias", "db", *env, svc["image"])
        self.containers.append(name)
        return name

    def crmops_args(self) -> list[str]:
        svc = self.spec["services"]["crmops"]
        assert svc["image"] == IMAGE, f"docs/compose/compose.yaml names {svc['image']}, the image is {IMAGE}"
        args = ["--network", self.network, "--env-file", str(self.folder / svc["env_file"])]
        for k, v in svc.get("environment", {}).items():
            args.append(f"--env={k}={v}")
        for vol in svc["volumes"]:
            src, dst, *mode = vol.split(":")
            if src.startswith("./"):
                src = str(self.folder / src[2:])
            elif not src.startswith("/"):
                continue  # a named volume: the container's own layer is enough for a test
            args += ["-v", ":".join([src, dst, *mode])]
        return args

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`docker compose run --rm crmops ARGV`."""
        name = f"{self.project}-crmops-run-{uuid.uuid4().hex[:6]}"
        self.containers.append(name)
        return docker("run", "--rm", "--name", name, *self.crmops_args(), IMAGE, *argv, check=check)

    def psql(self, db: str, sql: str) -> str:
        return docker("exec", f"{self.project}-db-1", "psql", "-X", "-qAt", "-U", "crm", "-d", db, "-c", sql).stdout


def _digest(stack: Stack, db: str) -> dict[str, str]:
    """Row count and an md5 of every row's text per table, read by psql inside the database container."""
    tables = stack.psql(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").split()
    rows = "count(*) || ' ' || md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), ''))"
    return {t: stack.psql(db, f'SELECT {rows} FROM "{t}" x').strip() for t in tables}


@pytest.fixture
def stack(tmp_path: Path, docker_client) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    from docker.errors import ImageNotFound

    try:
        docker_client.images.get(IMAGE)
    except ImageNotFound:
        missing(f"the crmops image {IMAGE} (scripts/images/build.sh crmops)")
    folder = tmp_path / "crm"
    folder.mkdir()
    (folder / "crmops.yaml").write_text((COMPOSE / "crmops.yaml").read_text())
    (folder / "crmops.env").write_text(f"CRM_DB_PASSWORD={PASSWORD}\nCRMOPS_PASSPHRASE=compose test passphrase\n")
    (folder / "crmops.env").chmod(0o600)
    (folder / "backups").mkdir()
    s = Stack(folder)
    docker("network", "create", "--internal", s.network)  # private: no route out, like the sandboxes'
    try:
        yield s
    finally:
        for name in reversed(s.containers):
            docker("rm", "-f", "-v", name, check=False)
        docker("network", "rm", s.network, check=False)


def test_the_crmops_container_backs_up_verifies_and_restores_a_database_in_another_container(stack: Stack) -> None:
    stack.up_db()
    deadline = time.monotonic() + 120
    while True:  # the database container initialises; then the demo CRM goes in through the crmops container
        r = stack.run("--quiet", "demo", "create", "--size", "small", "--no-attachments", check=False)
        if r.returncode == 0:
            break
        assert r.returncode == 10 and time.monotonic() < deadline, r.stderr  # 10: the server does not answer yet
        time.sleep(2)
    assert stack.run("--json", "repo", "init").returncode == 0
    before = _digest(stack, "crm")
    assert len(before) >= 5 and all(not v.startswith("0 ") for v in before.values())

    backup = json.loads(stack.run("--json", "backup", "--tag", "compose").stdout)
    assert backup["engine"] == "postgresql" and backup["server_version"].startswith("15")
    verify = stack.run("--json", "verify", "latest", check=False)
    assert verify.returncode == 0, verify.stderr + verify.stdout
    assert json.loads(verify.stdout)["ok"] is True
    # the sandbox and its network are gone, the crmops container detached from it first
    left = docker("network", "ls", "--filter", "label=crmops.sandbox=1", "--format", "{{.Name}}").stdout.split()
    for net in left:
        attached = docker("network", "inspect", net, "--format", "{{json .Containers}}", check=False).stdout
        assert stack.project not in attached, (net, attached)

    stack.psql("crm", "CREATE DATABASE restored")
    restore = stack.run("--json", "restore", "latest", "--to",
                        "postgresql://crm:${CRM_DB_PASSWORD}@db:5432/restored", check=False)
    assert restore.returncode == 0, restore.stderr
    assert PASSWORD not in restore.stdout + restore.stderr
    assert _digest(stack, "restored") == before
    assert _digest(stack, "crm") == before  # what was not asked for is untouched

    snaps = json.loads(stack.run("--json", "snapshots").stdout)
    assert [s["id"] for s in snaps] == [backup["snapshot_id"]]


def test_the_loop_runs_its_jobs_and_stops_cleanly(stack: Stack) -> None:
    stack.up_db()
    deadline = time.monotonic() + 120
    while stack.run("--quiet", "db", "check", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the database container did not start"
        time.sleep(2)
    stack.run("--quiet", "repo", "init")
    name = f"{stack.project}-crmops-1"
    stack.containers.append(name)
    docker("run", "-d", "--name", name, *stack.crmops_args(), "--env=CRMOPS_LOOP_JOBS=backup --tag loop; snapshots",
           IMAGE, *stack.spec["services"]["crmops"]["command"])
    deadline = time.monotonic() + 120
    while "crmops snapshots" not in docker("logs", name).stdout:
        assert time.monotonic() < deadline, docker("logs", name).stderr
        time.sleep(1)
    t0 = time.monotonic()
    docker("stop", "-t", "20", name)
    assert time.monotonic() - t0 < 15  # TERM ends the sleep at once, no 20 s kill
    assert docker("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
    logs = docker("logs", name)
    assert "exited" not in logs.stderr, logs.stderr
    snaps = json.loads(stack.run("--json", "snapshots").stdout)
    assert [s["tags"] for s in snaps] == [["loop"]]
