"""Docker sandboxes on the real engine: start, readiness, isolation, removal on every way out."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from crmops.config import VerifyConfig
from crmops.engines import open_engine
from crmops.errors import ImageMissing, SandboxUnavailable
from crmops.sandbox import open_sandbox
from crmops.sandbox.docker import docker_client
from crmops.sandbox.leftovers import cleanup, list_sandboxes

pytestmark = [pytest.mark.docker]

SERVERS = [("postgresql", "15.4", "PostgreSQL"), ("mysql", "10.11.6-MariaDB", "MariaDB")]


@pytest.mark.parametrize(("engine", "version", "label"), SERVERS, ids=["pg", "mariadb"])
def test_start_ready_and_removed(engine: str, version: str, label: str, docker_client, no_leftovers) -> None:  # type: ignore[no-untyped-def]
    with open_sandbox(VerifyConfig(), engine, version, database="crm_prod") as sb:
        # ready means a real login: a query works at once
        db = open_engine(sb.url)
        assert db.server_version().startswith(version.split(".")[0])
        assert db.database_name() == "crm_prod" and db.is_empty()
        c = docker_client.containers.get(sb.name)
        assert sb.name.startswith("crmops-sandbox-")
        assert c.labels["crmops.sandbox"] == "1" and c.labels["crmops.pid"] == str(os.getpid())
        assert c.labels["crmops.created"]
        host = c.attrs["HostConfig"]
        assert host["Memory"] == 2 * 1024**3 and host["NanoCpus"] > 0
        assert c.attrs["NetworkSettings"]["Ports"] in ({}, None) or all(
            not v for v in c.attrs["NetworkSettings"]["Ports"].values())  # nothing published
        net = docker_client.networks.get(sb.name)
        assert net.attrs["Internal"] is True
        _assert_no_way_out(c)
        assert "********" in sb.connect_info()["url"] and sb._password not in json.dumps(sb.connect_info())
    names = [e.name for e in list_sandboxes(docker_client)]
    assert sb.name not in names


def _default_gateway() -> str | None:
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    return None


def _assert_no_way_out(container) -> None:  # type: ignore[no-untyped-def]
    """The host's gateway answers the host at once (refused or accepted); from the sandbox nothing comes back."""
    gateway = _default_gateway()
    if gateway is None:
        pytest.skip("this host has no default route to compare with")
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((gateway, 80))
    except ConnectionRefusedError:
        pass  # an answer from beyond the host
    finally:
        s.close()
    out = container.exec_run(["timeout", "3", "bash", "-c", f"echo > /dev/tcp/{gateway}/80"])
    assert out.exit_code != 0 and b"refused" not in out.output.lower(), out.output


def test_missing_image_is_one_line_naming_the_fix(docker_client, no_leftovers) -> None:  # type: ignore[no-untyped-def]
    cfg = VerifyConfig(images={"postgresql": "crmops-no-such-image:{major}"})
    with pytest.raises(ImageMissing) as err:
        open_sandbox(cfg, "postgresql", "15.4").start()
    line = err.value.line()
    assert "crmops-no-such-image:15" in line and "docker pull" in line and "docker load" in line
    assert "\n" not in line


def test_docker_not_answering(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    with pytest.raises(SandboxUnavailable) as err:
        docker_client(timeout=5)
    assert "does not answer" in err.value.line() and "\n" not in err.value.line()
    r = subprocess.run([sys.executable, "-m", "crmops", "sandbox", "list"], capture_output=True, text=True,
                       env={**os.environ, "DOCKER_HOST": "tcp://127.0.0.1:1"}, cwd=tmp_path, timeout=60)
    assert r.returncode == 31
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


HOLDER = """
import sys, time
from crmops.config import VerifyConfig
from crmops.sandbox import open_sandbox
with open_sandbox(VerifyConfig(), sys.argv[1], sys.argv[2]) as sb:
    print(sb.name, flush=True)
    time.sleep(600)
"""


def _start_holder(engine: str = "postgresql", version: str = "15.4") -> tuple[subprocess.Popen, str]:
    # a shell's background job inherits SIGINT ignored, and Python keeps it so: restore the default
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, engine, version], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    name = proc.stdout.readline().strip()  # type: ignore[union-attr]
    assert name.startswith("crmops-sandbox-"), proc.stderr.read()  # type: ignore[union-attr]
    return proc, name


def _exists(client, name: str) -> bool:  # type: ignore[no-untyped-def]
    return bool(client.containers.list(all=True, filters={"name": name}, ignore_removed=True)) or bool(
        client.networks.list(names=[name]))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_signal_removes_the_sandbox(sig: int, docker_client) -> None:  # type: ignore[no-untyped-def]
    proc, name = _start_holder()
    assert _exists(docker_client, name)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert not _exists(docker_client, name)


# an unnamed cleanup removes every sandbox whose owner is gone, and --keep sandboxes outlive their owner:
# the tests doing either share one xdist worker (docs/TESTING.md), so none removes another's sandbox
@pytest.mark.xdist_group("sandbox-cleanup")
def test_sigkill_leaves_a_leftover_that_cleanup_removes(docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proc, name = _start_holder("mysql", "10.11.6-MariaDB")
    # while its owner runs, cleanup leaves it alone
    _removed, skipped = cleanup(docker_client)
    assert name in [e.name for e in skipped]
    proc.kill()
    proc.wait(timeout=30)
    entry = next(e for e in list_sandboxes(docker_client) if e.name == name)
    assert not entry.owner_running
    r = subprocess.run([sys.executable, "-m", "crmops", "--json", "sandbox", "cleanup"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert name in [e["name"] for e in json.loads(r.stdout)["removed"]]
    assert not _exists(docker_client, name)


def test_cleanup_by_name_removes_a_sandbox_still_in_use(docker_client) -> None:  # type: ignore[no-untyped-def]
    proc, name = _start_holder()
    try:
        # named: only this one, never a colleague's sandbox that happens to run right now
        removed, _ = cleanup(docker_client, names=[name])
        assert name in [e.name for e in removed]
        assert not _exists(docker_client, name)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_listing_survives_sandboxes_removed_meanwhile(docker_client, no_leftovers) -> None:  # type: ignore[no-untyped-def]
    """Another verify finishing while an administrator lists or cleans up must not break either."""
    import threading
    import uuid

    from docker.errors import APIError

    labels = {"crmops.sandbox": "1", "crmops.pid": str(os.getpid()), "crmops.host": socket.gethostname(),
              "crmops.created": "2000-01-01T00:00:00+00:00"}
    stop = threading.Event()
    churned: list[str] = []

    def churn() -> None:  # sandboxes of a live owner come and go, as in a busy drill
        while not stop.is_set():
            c = docker_client.containers.create("postgres:15", name=f"crmops-sandbox-churn-{uuid.uuid4().hex[:8]}",
                                                labels=labels)
            churned.append(c.name)
            try:
                c.remove(force=True)
            except APIError:  # the named cleanup below got there first
                pass

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        import time

        deadline, rounds = time.monotonic() + 120, 0  # a loaded machine churns slowly: race for longer, not less
        while (rounds < 40 or len(churned) <= 10) and time.monotonic() < deadline:
            list_sandboxes(docker_client)
            if churned:  # named: it races the owner's own removal, and never touches another test's sandbox
                cleanup(docker_client, names=[churned[-1]])
            rounds += 1
    finally:
        stop.set()
        worker.join(timeout=60)
    assert len(churned) > 10, "the containers did not come and go often enough to race the listing"
    assert not [e for e in list_sandboxes(docker_client) if e.name.startswith("crmops-sandbox-churn-")]
