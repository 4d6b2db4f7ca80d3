"""MariaDB: the logical backup records its binlog position; `binlog setup` checks the server's settings.

A MariaDB of the test's own with binary logging on (the shared server runs without it and
must keep its settings), started as the mysql OS user and stopped by its pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import yaml

from tests.conftest import BED_ENV
from tests.pitr.conftest import result_of
from tests.ports import free_port


@pytest.fixture
def binlog_server() -> Iterator[str]:
    if not shutil.which("mariadbd") and not Path("/usr/sbin/mariadbd").exists():
        pytest.skip("mariadbd is not installed")
    base = Path(tempfile.mkdtemp(prefix="crmops-mdb-", dir="/tmp"))
    os.chmod(base, 0o755)
    data, tmp = base / "data", base / "tmp"
    for d in (data, tmp):  # a temporary folder of its own: nothing else in /tmp can touch its temporary tables
        d.mkdir()
        shutil.chown(d, "mysql", "mysql")
    subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=mysql", f"--tmpdir={tmp}",
                    "--auth-root-authentication-method=normal"], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={data}/sock",
                             f"--port={port}", "--bind-address=127.0.0.1", "--user=mysql", f"--tmpdir={tmp}",
                             f"--log-bin={data}/mariadb-bin", "--binlog-format=ROW", "--server-id=7",
                             f"--pid-file={data}/pid"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                pymysql.connect(host="127.0.0.1", port=port, user="root").close()
                break
            except pymysql.err.OperationalError:
                assert time.monotonic() < deadline and proc.poll() is None, "mariadbd did not start"
                time.sleep(0.3)
        with pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=True) as conn:
            conn.cursor().execute("CREATE DATABASE crm")
        yield f"mysql://root@127.0.0.1:{port}/crm"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def _crmops(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    config = tmp_path / "crmops.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": url}, "repository": {"url": f"file://{tmp_path / 'repo'}"},
                                      "state_dir": str(tmp_path / "state")}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env["CRMOPS_PASSPHRASE"] = "binlog test"
    return subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "--json", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_logical_backup_records_the_binlog_position_it_is_consistent_with(binlog_server: str,
                                                                            tmp_path: Path) -> None:
    from crmops.config import load_config
    from crmops.repository import open_repository

    with pymysql.connect(host="127.0.0.1", port=int(binlog_server.split(":")[2].split("/")[0]), user="root",
                         database="crm", autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE contacts (id int PRIMARY KEY, name varchar(40))")
        cur.execute("INSERT INTO contacts VALUES (1, 'a'), (2, 'b')")
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
        cur.execute("SELECT @@gtid_binlog_pos")
        gtid = cur.fetchone()[0]
    assert _crmops(tmp_path, binlog_server, "repo", "init").returncode == 0
    r = _crmops(tmp_path, binlog_server, "backup")
    assert r.returncode == 0, r.stderr
    os.environ["CRMOPS_PASSPHRASE"] = "binlog test"
    try:
        manifest = open_repository(load_config(tmp_path / "crmops.yaml")).manifest("latest")
    finally:
        del os.environ["CRMOPS_PASSPHRASE"]
    assert manifest["binlog"] == {"file": file, "position": pos, "gtid": gtid, "server_id": "7"}

    ready = _crmops(tmp_path, binlog_server, "binlog", "setup")
    assert ready.returncode == 0, ready.stderr
    assert json.loads(ready.stdout)["ready"] is True

    # retention: binary logs older than every kept snapshot's position go, the rest stay
    assert _crmops(tmp_path, binlog_server, "binlog", "push").returncode == 0
    with pymysql.connect(host="127.0.0.1", port=_port_of(binlog_server), user="root", database="crm",
                         autocommit=True) as conn:
        conn.cursor().execute("FLUSH BINARY LOGS")
        conn.cursor().execute("INSERT INTO contacts VALUES (3, 'c')")
    second = _crmops(tmp_path, binlog_server, "backup")
    assert second.returncode == 0, second.stderr
    assert _crmops(tmp_path, binlog_server, "binlog", "push").returncode == 0
    archived = sorted(p.name for p in (tmp_path / "repo" / "binlog" / "7").iterdir())
    dry = json.loads(_crmops(tmp_path, binlog_server, "forget", "--keep-last", "1", "--keep-daily", "0",
                             "--keep-weekly", "0", "--keep-monthly", "0", "--keep-yearly", "0", "--dry-run").stdout)
    assert dry["pitr"]["binlog_files_deleted"] >= 1
    done = _crmops(tmp_path, binlog_server, "forget", "--keep-last", "1", "--keep-daily", "0", "--keep-weekly", "0",
                   "--keep-monthly", "0", "--keep-yearly", "0")
    assert done.returncode == 0, done.stderr
    left = sorted(p.name for p in (tmp_path / "repo" / "binlog" / "7").iterdir())
    assert file in archived and file not in left and left == archived[-len(left):] and left


def test_binlog_setup_names_what_the_server_lacks(tmp_path: Path) -> None:
    url = BED_ENV.get("CRMOPS_TEST_MYSQL_URL")
    if not url:
        pytest.skip("MariaDB test server is not available")
    r = _crmops(tmp_path, url, "binlog", "setup")
    doc = result_of(r.stdout)
    if doc.get("ready"):
        pytest.skip("the shared server logs binlogs already")
    assert r.returncode == 3 and "log_bin" in r.stderr and "Traceback" not in r.stderr
    assert {c["setting"]: c["ok"] for c in doc["checks"]}["log_bin"] is False


def _port_of(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


def test_restore_at_rolls_the_snapshot_forward_to_one_second_before_the_disaster(
        binlog_server: str, tmp_path: Path, docker_client) -> None:  # type: ignore[no-untyped-def]
    import threading
    from datetime import UTC, datetime

    port = _port_of(binlog_server)

    def connect():  # type: ignore[no-untyped-def]
        return pymysql.connect(host="127.0.0.1", port=port, user="root", database="crm", autocommit=True)

    with connect() as conn:
        conn.cursor().execute("CREATE TABLE markers (id int AUTO_INCREMENT PRIMARY KEY, at datetime NOT NULL)")
        conn.cursor().execute("CREATE TABLE other (id int PRIMARY KEY)")
        conn.cursor().execute("INSERT INTO other VALUES (1), (2), (3)")
    stop = threading.Event()

    def write() -> None:
        with connect() as conn:
            cur = conn.cursor()
            while not stop.is_set():
                cur.execute("INSERT INTO markers (at) VALUES (UTC_TIMESTAMP())")
                time.sleep(0.01)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        time.sleep(1.5)
        assert _crmops(tmp_path, binlog_server, "repo", "init").returncode == 0
        r = _crmops(tmp_path, binlog_server, "backup")
        assert r.returncode == 0, r.stderr
        time.sleep(2)
        cutoff = datetime.now(UTC).replace(microsecond=0)  # T-1s, on a second boundary (binlog time is whole seconds)
        time.sleep(2)
    finally:
        stop.set()
        writer.join()
    with connect() as conn:
        cur = conn.cursor()
        cur.execute("SELECT id FROM markers WHERE at < %s ORDER BY id", (cutoff.replace(tzinfo=None),))
        expected = [str(r[0]) for r in cur.fetchall()]
        cur.execute("SELECT count(*) FROM markers WHERE at >= %s", (cutoff.replace(tzinfo=None),))
        later = cur.fetchone()[0]
        cur.execute("DELETE FROM markers")  # the disaster, one second after the target
        cur.execute("INSERT INTO other VALUES (4)")  # work after it, which must stay
        cur.execute("CHECKSUM TABLE other")
        other_before = cur.fetchone()[1]
    assert len(expected) > 100 and later > 10
    pushed = _crmops(tmp_path, binlog_server, "binlog", "push")
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["stored"]

    r = _crmops(tmp_path, binlog_server, "restore", "--at", cutoff.isoformat(sep=" "),
                "--sandbox", "--keep")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    name = result["sandbox"]
    try:
        code, out = docker_client.containers.get(name).exec_run(
            ["sh", "-c", 'mariadb -uroot -p"$MARIADB_ROOT_PASSWORD" crm -N -e "SELECT id FROM markers ORDER BY id"'])
        assert code == 0, out
        assert out.decode().split() == expected
    finally:
        from crmops.sandbox.docker import remove_by_name

        remove_by_name(docker_client, name)

    status = result_of(_crmops(tmp_path, binlog_server, "status").stdout)
    (w,) = [x for x in status["pitr"] if x.get("kind") == "binlog"]
    assert w["system_id"] == "7" and w["gap"] is None and w["archive_lag_seconds"] < 120
    verdict = next(v for v in status["verdicts"] if v["name"] == "binlog archive")
    assert verdict["level"] == "green", verdict

    # table-level: the mass-deleted table comes back as at T-1s, the other keeps its current rows
    args = ("restore", "--at", cutoff.isoformat(sep=" "), "--tables", "markers", "--to", binlog_server)
    busy = _crmops(tmp_path, binlog_server, *args)
    assert busy.returncode == 60 and "--force" in busy.stderr
    forced = _crmops(tmp_path, binlog_server, *args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["replaced"] == ["markers"]
    with connect() as conn:
        cur = conn.cursor()
        cur.execute("SELECT id FROM markers ORDER BY id")
        assert [str(r[0]) for r in cur.fetchall()] == expected
        cur.execute("CHECKSUM TABLE other")
        assert cur.fetchone()[1] == other_before
        cur.execute("SELECT id FROM other ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == [1, 2, 3, 4]

    # verify --at on MariaDB: the same roll-forward, with the configured assertion checked in the sandbox
    config = tmp_path / "crmops.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["verify"] = {"assertions": [{"name": "markers", "sql": "SELECT count(*) FROM markers",
                                     "expect": len(expected)}]}
    config.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env["CRMOPS_PASSPHRASE"] = "binlog test"
    verified = subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "--json", "verify", "--at",
                               cutoff.isoformat(sep=" ")], capture_output=True, text=True, env=env, timeout=300)
    assert verified.returncode == 0, verified.stderr
    assert all(c["ok"] for c in json.loads(verified.stdout)["checks"])

    refused = _crmops(tmp_path, binlog_server, "restore", "--at", "2020-01-01 00:00:00+00", "--sandbox")
    assert refused.returncode == 82 and "recoverable window is" in refused.stderr


def test_a_dump_whose_snapshot_missed_the_lock_is_refused_not_stored(binlog_server: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers are held only until the dump's snapshot is seen open. Were another connection taken for
    the dump's, writers would be let go early and the dump would hold rows the fingerprint and binlog
    position do not: the dump's own stated position must catch that, and nothing may be stored.

    No timing is left to chance: the dump tool (a wrapper found through CRMOPS_TOOLS_PATH) stops
    itself before the real mariadb-dump starts, the wait for its snapshot is skipped, and it is let
    go only once a write held by the lock has committed after the lock's release."""
    import threading

    from crmops.config import Config
    from crmops.engines import mysql
    from crmops.errors import DatabaseError
    from crmops.services.backup import backup

    port = _port_of(binlog_server)

    def connect() -> pymysql.Connection:
        return pymysql.connect(host="127.0.0.1", port=port, user="root", database="crm", autocommit=True)

    with connect() as conn:
        conn.cursor().execute("CREATE TABLE ticks (id int AUTO_INCREMENT PRIMARY KEY, at double)")
    config = Config.model_validate({"database": {"url": binlog_server},
                                    "repository": {"url": f"file://{tmp_path / 'repo'}"},
                                    "state_dir": str(tmp_path / "state")})
    monkeypatch.setenv("CRMOPS_PASSPHRASE", "binlog test")
    assert _crmops(tmp_path, binlog_server, "repo", "init").returncode == 0
    stop = threading.Event()

    def write() -> None:  # held by the backup's lock, then commits the moment it is let go
        with connect() as c:
            while not stop.is_set():
                c.cursor().execute("INSERT INTO ticks (at) VALUES (%s)", (time.time(),))

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        good = backup(config)  # the real wait: writers held until the dump's snapshot is open
        assert good.snapshot_id
    finally:
        stop.set()
        writer.join(timeout=10)

    # the dump tool stops itself (SIGSTOP) before the real one can open a snapshot
    real = shutil.which("mariadb-dump") or shutil.which("mysqldump")
    assert real
    tools = tmp_path / "tools"
    tools.mkdir()
    wrapper = tools / "mariadb-dump"
    wrapper.write_text('#!/bin/sh\ncase " $* " in *" --single-transaction "*) kill -STOP $$ ;; esac\n'
                       f'exec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CRMOPS_TOOLS_PATH", str(tools))
    slipped: list[int] = []

    def missed(cur: object, known: set[int], proc: object, **_: object) -> None:
        """The wait taken for done at once; a write and then the dump are let go in that order."""
        pid = proc.proc.pid  # type: ignore[attr-defined]

        def let_go() -> None:
            try:
                with connect() as c:  # blocks behind the lock held now; commits right after its release
                    c.cursor().execute("INSERT INTO ticks (at) VALUES (%s)", (time.time(),))
                    slipped.append(1)
            finally:
                os.waitid(os.P_PID, pid, os.WSTOPPED | os.WNOWAIT)  # the wrapper holds itself before the dump
                os.kill(pid, signal.SIGCONT)

        threading.Thread(target=let_go, daemon=True).start()

    monkeypatch.setattr(mysql, "_await_dump_snapshot", missed)
    with pytest.raises(DatabaseError, match="slipped in"):
        backup(config)
    assert slipped  # the write that committed between the lock's release and the dump's snapshot
    assert [s["id"] for s in _snapshots(tmp_path, binlog_server)] == [good.snapshot_id]


def _snapshots(tmp_path: Path, url: str) -> list[dict]:  # type: ignore[type-arg]
    r = _crmops(tmp_path, url, "snapshots")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_follow_archives_as_the_log_grows_and_stops_cleanly_on_sigterm(binlog_server: str, tmp_path: Path) -> None:
    """What `schedule install --binlog-follow` runs: a round every --interval, exit 0 on SIGTERM."""
    assert _crmops(tmp_path, binlog_server, "repo", "init").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env["CRMOPS_PASSPHRASE"] = "binlog test"
    follow = subprocess.Popen([sys.executable, "-m", "crmops", "--config", str(tmp_path / "crmops.yaml"), "--json",
                               "binlog", "follow", "--interval", "1"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        with pymysql.connect(host="127.0.0.1", port=_port_of(binlog_server), user="root", database="crm",
                             autocommit=True) as conn:
            conn.cursor().execute("CREATE TABLE notes (id int PRIMARY KEY)")
            conn.cursor().execute("INSERT INTO notes VALUES (1), (2), (3)")
            active = conn.cursor()
            active.execute("SHOW MASTER STATUS")
            file = active.fetchone()[0]
        deadline = time.monotonic() + 60
        while not (tmp_path / "repo" / "binlog" / "7" / file).exists():
            assert time.monotonic() < deadline and follow.poll() is None, follow.stderr.read() if follow.stderr else ""
            time.sleep(0.3)
    finally:
        follow.send_signal(signal.SIGTERM)
        out, err = follow.communicate(timeout=60)
    assert follow.returncode == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True and doc["rounds"] >= 1 and doc["stored"] >= 1
