"""wal push under faults: killed at random points, or facing a store it cannot write."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from tests.pitr.conftest import Cluster


def test_kill_9_at_random_points_never_stores_a_partial_segment(cluster: Cluster) -> None:
    name = cluster.switch_and_wait()
    sysid = cluster.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
    src = cluster.base / "segment"
    cluster.crmops("wal", "fetch", name, str(src), "--system-id", sysid)
    payload = bytearray(src.read_bytes())
    payload[:64] = os.urandom(64)  # not the archived content: a segment far ahead on production's timeline
    fake = cluster.base / "0000000100000009000000AB"
    fake.write_bytes(bytes(payload))
    key = cluster.repo / "wal" / sysid / "00000001" / fake.name
    argv = [sys.executable, "-m", "crmops", "--config", str(cluster.config), "wal", "push", str(fake),
            "--system-id", sysid]
    # the kills land at random points of a whole push, however long one takes here (the
    # stored segment is removed before each try below)
    t0 = time.monotonic()
    subprocess.run(argv, env=cluster.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    whole = time.monotonic() - t0
    rng = random.Random(1234)
    killed_before_done = 0
    for _ in range(6):
        if key.exists():
            key.unlink()
        proc = subprocess.Popen(argv, env=cluster.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.9) * whole)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_before_done += 1
        proc.wait()
        if key.exists():  # whatever is stored under the real name is the whole, authentic segment
            got = cluster.base / "check"
            cluster.crmops("wal", "fetch", fake.name, str(got), "--system-id", sysid)
            assert got.read_bytes() == bytes(payload)
    assert killed_before_done >= 2
    # the retry PostgreSQL would make succeeds and stores exactly the segment
    done = cluster.crmops("wal", "push", str(fake), "--system-id", sysid)
    assert done.returncode == 0
    got = cluster.base / "final"
    cluster.crmops("wal", "fetch", fake.name, str(got), "--system-id", sysid)
    assert got.read_bytes() == bytes(payload)


def test_unwritable_store_fails_the_push_and_postgresql_retries(cluster: Cluster) -> None:
    first = cluster.switch_and_wait()
    sysid = cluster.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
    folder = cluster.repo / "wal" / sysid / first[:8]
    failed_before = cluster.sql("SELECT failed_count FROM pg_stat_archiver")[0][0]
    os.chmod(folder, 0o555)  # the postgres user can no longer add segments
    try:
        cluster.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        pending = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        deadline = time.monotonic() + 30
        while cluster.sql("SELECT failed_count FROM pg_stat_archiver")[0][0] <= failed_before:
            assert time.monotonic() < deadline, cluster.log_tail()
            time.sleep(0.3)
        assert not (folder / pending).exists()
        assert (cluster.data / "pg_wal" / pending).exists()  # PostgreSQL keeps it until archived
        assert "cannot write" in cluster.log_tail(40)
    finally:
        os.chmod(folder, 0o755)
    deadline = time.monotonic() + 90
    while (cluster.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0] or "") < pending:
        assert time.monotonic() < deadline, cluster.log_tail()
        time.sleep(0.3)
    assert (folder / pending).exists()
