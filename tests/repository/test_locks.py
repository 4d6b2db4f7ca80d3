"""Locks left by killed runs block nothing once their process is gone; others wait for their refresh to lapse."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crmops.democrm.load import create
from crmops.errors import LockBusy
from crmops.repository import Credential, Repository
from crmops.repository.locks import LOCK_STALE, holder, lock_stale
from crmops.storage.local import LocalStore
from tests.services.test_backup_restore import PASSPHRASE, run, write_config


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalStore(tmp_path / "repo"), Credential(passphrase="pw"), chunk_avg=64 * 1024)


def _plant(repo: Repository, lock_id: str, **fields: object) -> None:
    doc = {"id": lock_id, "exclusive": False, "purpose": "backup", "refreshed": datetime.now(UTC).isoformat(),
           **holder(), **fields}
    repo.store.put(f"locks/{lock_id}", json.dumps(doc).encode())


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_lock_records_who_holds_it(repo: Repository) -> None:
    with repo.lock(exclusive=False, purpose="backup"):
        (lock,) = repo.locks()
        assert lock["host"] == socket.gethostname() and lock["pid"] == os.getpid()
        assert isinstance(lock["process_start"], int) and lock["stale"] is None
        with pytest.raises(LockBusy, match="backup"), repo.lock(exclusive=True, purpose="prune"):
            pass
    assert repo.locks() == []


def test_stale_verdicts(repo: Repository) -> None:
    now = datetime.now(UTC)
    me = {**holder(), "refreshed": now.isoformat()}
    assert lock_stale(me) is None
    assert lock_stale({**me, "refreshed": (now - LOCK_STALE * 3).isoformat()}) is None  # it still runs
    assert "no longer runs" in lock_stale({**me, "pid": _dead_pid()})
    assert "another process" in lock_stale({**me, "process_start": me["process_start"] - 1})
    assert "booted" in lock_stale({**me, "boot_id": "another-boot"})
    other = {**me, "host": "db-host-2", "pid": 1}
    assert lock_stale(other) is None  # another host: only time tells
    assert "not refreshed" in lock_stale({**other, "refreshed": (now - LOCK_STALE - timedelta(minutes=1)).isoformat()})


def test_a_dead_process_lock_is_removed_and_another_hosts_waits(repo: Repository, caplog) -> None:  # type: ignore[no-untyped-def]
    _plant(repo, "deadbeef0001", exclusive=True, pid=_dead_pid())
    crmops_log = logging.getLogger("crmops")  # another test's CLI run may have stopped it propagating
    crmops_log.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="crmops"), repo.lock(exclusive=True, purpose="prune"):
            pass
    finally:
        crmops_log.removeHandler(caplog.handler)
    assert "removed the lock of backup" in caplog.text and "stale: process" in caplog.text and repo.locks() == []
    _plant(repo, "elsewhere001", host="db-host-2", pid=1)
    with pytest.raises(LockBusy, match="db-host-2"), repo.lock(exclusive=True, purpose="prune"):
        pass
    assert [lock["id"] for lock in repo.locks()] == ["elsewhere001"]  # a refused lock leaves nothing behind


def test_unlock_command(tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path / 'crm.db'}"
    create(src, size="small")
    config = write_config(tmp_path, src)
    run(config, "repo", "init")
    repo = Repository.open(LocalStore(tmp_path / "repo"), Credential(passphrase=PASSPHRASE))
    _plant(repo, "dead00000001", pid=_dead_pid())
    _plant(repo, "elsewhere001", host="db-host-2", pid=1, exclusive=True)
    report = json.loads(run(config, "check").stdout)
    assert {lk["id"]: bool(lk["stale"]) for lk in report["locks"]} == {"dead00000001": True, "elsewhere001": False}
    out = json.loads(run(config, "unlock").stdout)
    assert [lk["id"] for lk in out["removed"]] == ["dead00000001"]
    assert [lk["id"] for lk in out["kept"]] == ["elsewhere001"]
    assert run(config, "backup", check=False).returncode == 27  # the other host's exclusive lock still holds
    out = json.loads(run(config, "unlock", "--remove-all").stdout)
    assert [lk["id"] for lk in out["removed"]] == ["elsewhere001"]
    run(config, "backup")


def test_twenty_kill_9_at_random_points_leave_nothing_that_blocks(tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path / 'crm.db'}"
    create(src, size="small")
    config = write_config(tmp_path, src)
    run(config, "repo", "init")
    run(config, "backup")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}, "TEST_PASSPHRASE": PASSPHRASE}
    rng = random.Random(13)
    commands = [["backup"], ["backup"], ["backup"], ["prune"], ["forget", "--keep-last", "3"]]
    killed_holding = 0
    locks = tmp_path / "repo" / "locks"

    def held() -> set[Path]:  # lock objects (a kill mid-write may also leave a .tmp- file, reported by check)
        return {p for p in locks.glob("*") if not p.name.startswith(".tmp-")} if locks.exists() else set()
    runs = 0
    # 20 runs at least; on a loaded machine a small repository's work can end before the kill lands,
    # so go on (up to 40) until enough runs were killed while holding their lock
    while runs < 20 or (killed_holding < 3 and runs < 40):
        runs += 1
        args = rng.choice(commands)
        proc = subprocess.Popen([sys.executable, "-m", "crmops", "--config", str(config), *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = held()
        if rng.random() < 0.6:  # mostly while it holds its lock, at a random point of its work
            deadline = time.monotonic() + 30  # start-up is slow on a loaded machine: wait for the lock
            while proc.poll() is None and time.monotonic() < deadline and not held() - before:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.04))  # a small backup holds its lock for about 50 ms
        else:  # anywhere: starting up, opening the repository, finishing
            time.sleep(rng.uniform(0.05, 1.2))
        proc.kill()
        proc.wait()
        killed_holding += bool(held() - before)
    assert killed_holding >= 3, "too few runs were killed while holding a lock to prove anything"
    # nothing left blocks the next backup, prune or forget
    for args in (["backup"], ["prune"], ["forget", "--keep-last", "2"], ["check", "--read-data"]):
        r = run(config, *args, check=False)
        assert r.returncode == 0, (args, r.stderr)
    assert held() == set()


def test_the_holder_refreshes_its_lock_while_it_runs(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    import crmops.repository.locks as repo_module

    monkeypatch.setattr(repo_module, "LOCK_REFRESH", 0.1)
    with repo.lock(exclusive=False, purpose="backup"):
        (first,) = repo.locks()
        time.sleep(0.5)  # no call from the work itself: the holder's thread keeps it fresh
        (later,) = repo.locks()
        assert later["refreshed"] > first["refreshed"]
    assert repo.locks() == []


def test_unlock_text_never_advises_removing_a_live_local_lock(tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path / 'crm.db'}"
    create(src, size="small")
    config = write_config(tmp_path, src)
    run(config, "repo", "init")
    repo = Repository.open(LocalStore(tmp_path / "repo"), Credential(passphrase=PASSPHRASE))
    _plant(repo, "livehere0001")  # this test's own process: alive, on this host
    _plant(repo, "elsewhere001", host="db-host-2", pid=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env.update(TEST_PASSPHRASE=PASSPHRASE, COLUMNS="80")
    r = subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "unlock"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) <= 80, r.stdout
    here, there = r.stdout.split("kept lock ")[1:]
    here, there = (here, there) if here.startswith("livehere") else (there, here)
    assert "--remove-all" not in here and "still runs on this host" in here, r.stdout
    assert "--remove-all" in there and "no crmops runs on that host" in " ".join(there.split()), r.stdout
