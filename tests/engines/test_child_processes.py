"""Client tools never outlive crmops: a kill -9 of crmops takes its pg_dump down with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from crmops.democrm.load import create
from tests.services.test_backup_restore import PASSPHRASE, run, write_config


def _children(pid: int, name: str, arg: str = "") -> list[int]:
    """Children of pid named name whose command line holds arg."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid and comm == name:
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if arg in cmdline:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def test_kill_9_of_a_backup_ends_its_pg_dump(pg_url: str, tmp_path: Path) -> None:
    create(pg_url, size="small")
    config = write_config(tmp_path, pg_url)
    run(config, "repo", "init")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}, "TEST_PASSPHRASE": PASSPHRASE}
    # a session holding a table keeps pg_dump waiting mid-dump for as long as the test needs
    with psycopg.connect(pg_url) as blocker:
        table = blocker.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                 "AND tablename <> 'alembic_version' ORDER BY tablename LIMIT 1").fetchone()[0]
        blocker.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        proc = subprocess.Popen([sys.executable, "-m", "crmops", "--config", str(config), "backup"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            dumps: list[int] = []
            while not dumps and time.monotonic() < deadline and proc.poll() is None:
                dumps = _children(proc.pid, "pg_dump", "--snapshot")  # the dump, not the --version probe
                time.sleep(0.05)
            assert dumps, "pg_dump was never started"
            time.sleep(0.3)  # pg_dump is now waiting for the table, mid-dump
            assert _alive(dumps[0])
            proc.kill()
            killed = time.monotonic()
            proc.wait()
            while _alive(dumps[0]) and time.monotonic() - killed < 2:
                time.sleep(0.01)
            gone_after = time.monotonic() - killed
            assert not _alive(dumps[0]), "pg_dump outlived crmops"
            assert gone_after < 0.5, f"pg_dump lived {gone_after:.2f} s after crmops was killed"
        finally:
            if proc.poll() is None:
                proc.kill()
            blocker.rollback()


def test_a_loading_tool_dies_with_crmops_too(tmp_path: Path) -> None:
    """feed() (pg_restore, mariadb) starts its child the same way: kill -9 the parent, the child goes."""
    script = ("import time\nfrom crmops.engines.tools import feed\n"
              "def pieces():\n    yield b'x'\n    time.sleep(60)\n"
              "feed(['sleep', '60'], pieces(), env={})\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        children: list[int] = []
        while not children and time.monotonic() < deadline:
            children = _children(proc.pid, "sleep")
            time.sleep(0.02)
        assert children
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        while _alive(children[0]) and time.monotonic() - killed < 2:
            time.sleep(0.01)
        assert not _alive(children[0]) and time.monotonic() - killed < 0.5
    finally:
        if proc.poll() is None:
            proc.kill()


def _container_running(name: str) -> bool:
    r = subprocess.run(["docker", "ps", "-q", "--filter", f"name=^{name}$"], capture_output=True, text=True,
                       timeout=30)
    return bool(r.stdout.strip())


@pytest.mark.docker
@pytest.mark.matrix
def test_kill_9_of_a_backup_ends_pg_dump_run_from_the_servers_image(docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A PostgreSQL 17 server is dumped by pg_dump from postgres:17 in a container: killing crmops
    kills the docker client, which alone would leave the container dumping to the end."""
    from tests.matrix.servers import BY_ID, run_server

    with run_server(docker_client, BY_ID["pg17"]) as server:
        url = server.create_database()
        create(url, size="small")
        config = write_config(tmp_path, url)
        run(config, "repo", "init")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}, "TEST_PASSPHRASE": PASSPHRASE}
        with psycopg.connect(url) as blocker:  # keeps pg_dump waiting mid-dump for as long as the test needs
            blocker.execute('LOCK TABLE "accounts" IN ACCESS EXCLUSIVE MODE')
            proc = subprocess.Popen([sys.executable, "-m", "crmops", "--config", str(config), "backup"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            name = ""
            try:
                deadline = time.monotonic() + 60
                while not name and time.monotonic() < deadline and proc.poll() is None:
                    for pid in _children(proc.pid, "docker", "--snapshot"):
                        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                        name = argv[argv.index(b"--name") + 1].decode()
                    time.sleep(0.05)
                assert name, "pg_dump was never started in a container"
                while not _container_running(name) and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.5)  # pg_dump is now waiting for the table, mid-dump
                proc.kill()
                proc.wait()
                killed = time.monotonic()
                while _container_running(name) and time.monotonic() - killed < 10:
                    time.sleep(0.1)
                gone_after = time.monotonic() - killed
                assert not _container_running(name), "pg_dump's container outlived crmops"
                assert gone_after < 3, f"pg_dump's container lived {gone_after:.1f} s after crmops was killed"
                dumps = blocker.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump'"
                                        ).fetchone()[0]
                assert dumps == 0, "pg_dump's session is still on the server"
            finally:
                if proc.poll() is None:
                    proc.kill()
                if name:
                    subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
                blocker.rollback()
