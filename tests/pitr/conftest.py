"""A PostgreSQL 15 cluster of the test's own, archiving into a crmops repository.

The shared test server must keep its settings, so each test here runs initdb into a
temporary folder as the postgres OS user, on a free loopback port, with archive_command
calling this checkout's crmops; it is stopped by pg_ctl (its own pid) at the end.
The system python runs crmops for the postgres user (the venv's interpreter lives under
/root, which that user cannot enter): `bin/crmops` in the cluster's folder is the console
script pip writes for the `crmops` entry point, its interpreter /usr/bin/python3 with this
checkout and the venv's packages on its path, and archive_command names it as
`wal setup` writes it. The folders are made by root, as on a real host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.conftest import ROOT
from tests.ports import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSPHRASE = "pitr test passphrase 7"
SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def result_of(stdout: str) -> dict:  # type: ignore[type-arg]
    """The command's result from its one JSON document: a failure wraps it in the error envelope."""
    doc = json.loads(stdout)
    if doc.get("ok") is False and "exit_code" in doc and "result" in doc:
        return doc["result"] or {}
    return doc


def as_postgres(argv: list[str], **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], **kw)


def start_as_printed(result: dict) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    """Run the start command `restore --to-datadir` printed (as root, as an administrator would)."""
    line = next(ln for ln in result["lines"] if ln.startswith("start it"))
    command = line.split("): ", 1)[1]
    assert "pg_ctl" in command and "wal wait-promoted" in command
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=300)


def copy_sql(cluster: Cluster, port: int, sql: str) -> str:
    """psql as the postgres OS user over the socket (a copy's pg_hba.conf: local peer, loopback scram)."""
    r = as_postgres([str(PG_BIN / "psql"), "-h", str(cluster.base), "-p", str(port), "-U", "postgres", "-d",
                     "postgres", "-XAtqc", sql], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.repo = base / "repo"
        self.config = base / "crmops.yaml"
        self.env_file = base / "crmops.env"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        self.pythonpath = f"{ROOT}:{SITE}"
        self.exe = base / "bin" / "crmops"

    # -- crmops, as root (the tests) or as postgres (what archive_command does) ------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
        env["CRMOPS_PASSPHRASE"] = PASSPHRASE
        env["COLUMNS"] = "80"
        return env

    def crmops(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "crmops", "--config", str(self.config), "--json", *args],
                           capture_output=True, text=True, env=self.env(), timeout=timeout)
        if check:
            assert r.returncode == 0, r.stderr + r.stdout
        return r

    def crmops_json(self, *args: str) -> dict:  # type: ignore[type-arg]
        return json.loads(self.crmops(*args).stdout)

    def wal_command(self, verb: str) -> str:
        """What `wal setup --crmops bin/crmops` writes (archive_command: verb push)."""
        return f"CRMOPS_ENV_FILE={self.env_file} {self.exe} --config {self.config} --quiet wal {verb}"

    def console_script(self, path: Path) -> Path:
        """The script pip writes for the entry point crmops = crmops.cli.main:main."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!{self.python}\nimport sys\nsys.path[:0] = [{str(ROOT)!r}, {str(SITE)!r}]\n"
                        "from crmops.cli.main import main\nif __name__ == '__main__':\n    sys.exit(main())\n")
        path.chmod(0o755)
        return path

    # -- the server -------------------------------------------------------------------

    def init(self) -> None:
        self.config.write_text(yaml.safe_dump({
            "database": {"url": self.url}, "repository": {"url": f"file://{self.repo}", "chunk_avg_kib": 256},
            "state_dir": str(self.base / "state"),
            "verify": {"ready_timeout_seconds": 60}}))
        self.env_file.write_text(f"CRMOPS_PASSPHRASE={PASSPHRASE}\n")
        self.console_script(self.exe)
        self.crmops("repo", "init")
        shutil.chown(self.base, "postgres", "postgres")
        subprocess.run(["chown", "-R", "postgres:postgres", str(self.repo), str(self.env_file)], check=True)
        os.chmod(self.env_file, 0o600)
        as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                     "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"], check=True, capture_output=True)
        with open(self.data / "postgresql.auto.conf", "a") as f:
            f.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.base}'\n"
                    "fsync = off\nwal_level = replica\narchive_mode = on\narchive_timeout = 5\n"
                    f"archive_command = '{self.wal_command('push')} %p'\nmax_wal_senders = 4\n")

    def start(self) -> None:
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "server.log"), "-w",
                     "-t", "60", "start"], check=True, capture_output=True)

    def stop(self) -> None:
        pidfile = self.data / "postmaster.pid"
        if pidfile.exists():
            as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                        capture_output=True)

    def sql(self, query: str, *params: object) -> list[tuple]:  # type: ignore[type-arg]
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def switch_and_wait(self, timeout: float = 60) -> str:
        """Close the current segment and wait until archive_command has stored it."""
        # a record first: with nothing written since the last switch, pg_switch_wal() does not switch
        self.sql("SELECT pg_logical_emit_message(false, 'crmops-test', 'tick')")
        name = self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
            if done is not None and done >= name:
                return name
            time.sleep(0.2)
        raise AssertionError(f"{name} was not archived: {self.log_tail()}")

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join((self.base / "server.log").read_text().splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 server binaries are not installed")
    base = Path(tempfile.mkdtemp(prefix="crmops-pitr-", dir="/tmp"))
    os.chmod(base, 0o755)
    c = Cluster(base)
    try:
        c.init()
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)
