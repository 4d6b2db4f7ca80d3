"""`crmops wal stream` on a real PostgreSQL 15 cluster: pg_receivewal, partial segments, restarts, restore."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.pitr.conftest import PASSPHRASE, Cluster

ROLE_PASSWORD = "stream secret 93"


def _replication_role(cluster: Cluster) -> str:
    """A REPLICATION role that must give its password (scram), unlike the trust the rest of the cluster uses."""
    cluster.sql(f"CREATE ROLE streamer LOGIN REPLICATION PASSWORD '{ROLE_PASSWORD}'")
    hba = cluster.data / "pg_hba.conf"
    hba.write_text("host replication streamer 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    cluster.sql("SELECT pg_reload_conf()")
    return f"postgresql://streamer:{ROLE_PASSWORD.replace(' ', '%20')}@127.0.0.1:{cluster.port}/postgres"


class Stream:
    """`crmops wal stream` as a child process, the URL with its password in its environment only."""

    def __init__(self, cluster: Cluster, url: str, interval: int = 1) -> None:
        self.spool = cluster.base / "spool"
        env = cluster.env()
        env["CRMOPS_STREAM_URL"] = url
        env["PYTHONPATH"] = cluster.pythonpath
        self.err = open(cluster.base / "stream.err", "w+")  # noqa: SIM115
        # as the user archive_command runs as: both write and read the same archive files
        self.proc = subprocess.Popen(
            [cluster.python, "-m", "crmops", "--config", str(cluster.config), "--json", "wal", "stream",
             "--spool", str(self.spool), "--slot", "crmops_test", "--interval", str(interval)],
            stdout=subprocess.PIPE, stderr=self.err, text=True, env=env, cwd=cluster.base, user="postgres",
            group="postgres", extra_groups=[])

    def receiver(self, timeout: float = 30, other_than: int | None = None) -> int:
        """The pid of the pg_receivewal this streamer runs now (a killed one lingers until reaped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stderr()
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            for pid in kids:
                try:
                    if int(pid) != other_than and Path(f"/proc/{pid}/comm").read_text().strip() == "pg_receivewal":
                        return int(pid)
                except OSError:
                    continue
            time.sleep(0.2)
        raise AssertionError(f"no pg_receivewal under the streamer: {self.stderr()}")

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, out


def _promote(cluster: Cluster, system_id: str, timeline: int, history: bytes) -> None:
    """`wal promote` without a promoted server: the same record, written through the archive's API."""
    from crmops.config import load_config
    from crmops.pitr.timeline import GuardedArchive, promote
    from crmops.repository import open_repository

    os.environ["CRMOPS_PASSPHRASE"] = PASSPHRASE
    try:
        archive = GuardedArchive(open_repository(load_config(cluster.config)), system_id)
        promote(archive, timeline, history, segment_size=16 * 1024 * 1024, server="test")
    finally:
        del os.environ["CRMOPS_PASSPHRASE"]


def _archived(cluster: Cluster, system_id: str) -> list[str]:
    keys = sorted(p.name for p in (cluster.repo / "wal" / system_id).rglob("*") if p.is_file())
    return keys


def _wait_for(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_stream_survives_a_killed_pg_receivewal_and_coexists_with_archive_command(cluster: Cluster) -> None:
    sysid = cluster.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
    url = _replication_role(cluster)
    # archive_command fails for now: whatever reaches the archive, the stream brought
    cluster.sql("ALTER SYSTEM SET archive_command = '/bin/false'")
    cluster.sql("ALTER SYSTEM SET archive_timeout = 3600")
    cluster.sql("SELECT pg_reload_conf()")
    cluster.sql("CREATE TABLE t (id int, v text)")
    stream = Stream(cluster, url)
    try:
        active = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'crmops_test' AND active"
        _wait_for(lambda: cluster.sql(active)[0][0] == 1, 30, f"the slot is not in use: {stream.stderr()}")
        first = stream.receiver()
        cmdline = Path(f"/proc/{first}/cmdline").read_bytes().decode()
        assert ROLE_PASSWORD not in cmdline and "secret" not in cmdline  # the password is in its environment
        assert "secret" not in Path(f"/proc/{stream.proc.pid}/cmdline").read_bytes().decode()
        names = []
        for _ in range(2):
            cluster.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
            names.append(cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
        _wait_for(lambda: names[-1] in _archived(cluster, sysid), 30, f"{names[-1]} not streamed: {stream.stderr()}")

        os.kill(first, signal.SIGKILL)  # what a server restart or a crash of the tool looks like
        for _ in range(3):  # written while pg_receivewal is down: the slot keeps it on the server
            cluster.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
            names.append(cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
        second = stream.receiver(other_than=first)
        assert second != first
        _wait_for(lambda: names[-1] in _archived(cluster, sysid), 60, f"{names[-1]} not streamed: {stream.stderr()}")

        # the store refuses writes for a while: the segment waits in the spool, one warning, then it goes
        folder = cluster.repo / "wal" / sysid / "00000001"
        mode = folder.stat().st_mode & 0o777
        folder.chmod(0o555)
        try:
            cluster.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
            names.append(cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
            _wait_for(lambda: "retrying every" in stream.stderr(), 30, f"no warning: {stream.stderr()}")
            assert (stream.spool / names[-1]).exists() and names[-1] not in _archived(cluster, sysid)
        finally:
            folder.chmod(mode)
        _wait_for(lambda: names[-1] in _archived(cluster, sysid), 30, f"{names[-1]} not pushed: {stream.stderr()}")
        cluster.sql("INSERT INTO t VALUES (-1, 'in the partial segment')")
        current = cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        _wait_for(lambda: current + ".partial" in _archived(cluster, sysid), 30, "no partial pushed")
    finally:
        code, out = stream.stop()
    assert code == 0, stream.stderr()
    result = json.loads(out)
    assert result["ok"] and result["restarts"] == 1 and result["system_id"] == sysid
    assert result["stored"] >= len(names) and result["partial_pushes"] >= 1
    warnings = [ln for ln in stream.stderr().splitlines() if "warning" in ln]
    assert len(warnings) == 2 and "pg_receivewal exited" in warnings[0], stream.stderr()
    assert "cannot write" in warnings[1] and "retrying every 5 s" in warnings[1]
    assert not list(stream.spool.glob("*.partial.tmp"))
    # every segment from the first streamed on is archived: nothing was lost while pg_receivewal was down
    segments = [n for n in _archived(cluster, sysid) if len(n) == 24]
    assert set(names) <= set(segments)
    status = cluster.crmops_json("wal", "status")
    assert status["newest_segment"] == current and status["gap"] is None
    # only the newest finished segment stays in the spool, so pg_receivewal knows where to go on
    assert [p.name for p in stream.spool.iterdir() if len(p.name) == 24] == [max(segments)]

    # archive_command back on: it offers the same segments, finds them stored, succeeds
    failed_before = cluster.sql("SELECT failed_count FROM pg_stat_archiver")[0][0]
    cluster.sql(f"ALTER SYSTEM SET archive_command = '{cluster.wal_command('push')} %p'")
    cluster.sql("SELECT pg_reload_conf()")
    done = cluster.switch_and_wait()
    assert done == current  # the segment that was streamed as a partial is now full
    assert cluster.sql("SELECT failed_count FROM pg_stat_archiver")[0][0] <= failed_before + 1  # one retry race
    # the full segment superseded the streamed partial
    archived = _archived(cluster, sysid)
    assert current in archived and current + ".partial" not in archived
    again = cluster.crmops("wal", "push", str(cluster.data / "pg_wal" / done), "--system-id", sysid)
    assert json.loads(again.stdout)["outcome"] == "already"


@pytest.mark.usefixtures("docker_client")
def test_partial_segments_bring_the_rpo_to_seconds_with_archive_timeout_an_hour(cluster: Cluster,
                                                                              docker_client) -> None:
    from tests.pitr.test_restore_at import Writer, _remove, _sandbox_rows

    sysid = cluster.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
    cluster.sql("ALTER SYSTEM SET track_commit_timestamp = on")
    cluster.stop()
    cluster.start()
    url = _replication_role(cluster)
    cluster.sql("CREATE TABLE markers (id bigserial PRIMARY KEY, note text)")
    cluster.crmops_json("backup", "--physical")
    cluster.sql("ALTER SYSTEM SET archive_timeout = 3600")  # archive_command ships nothing more on its own
    cluster.sql("SELECT pg_reload_conf()")
    archived_before = cluster.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
    interval = 1
    stream = Stream(cluster, url, interval=interval)
    writer = Writer(cluster.url)
    try:
        active = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'crmops_test' AND active"
        _wait_for(lambda: cluster.sql(active)[0][0] == 1, 30, f"the slot is not in use: {stream.stderr()}")
        writer.start()
        time.sleep(6)
        killed_at = cluster.sql("SELECT clock_timestamp()")[0][0]
        stream.proc.kill()  # no last push on the way out: only the periodic ones count
        stream.proc.wait()
        time.sleep(1)
    finally:
        writer.stop.set()
        writer.join()
        if stream.proc.poll() is None:
            stream.stop()
    current = cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
    # nothing reached the archive through archive_command: the markers' segment is there only as a partial
    assert cluster.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0] == archived_before < current
    files = _archived(cluster, sysid)
    assert current + ".partial" in files and current not in files
    ids = "SELECT id FROM markers WHERE pg_xact_commit_timestamp(xmin) <= %s ORDER BY id"
    from datetime import timedelta

    # what committed up to the interval (and a margin for a loaded machine) before the stop
    expected = [str(r[0]) for r in cluster.sql(ids, killed_at - timedelta(seconds=interval + 2))]
    total = cluster.sql("SELECT count(*) FROM markers")[0][0]
    assert len(expected) > 100, (len(expected), total)

    # restore_command asks for the segment by name: the partial stands in for it as the last one
    out = cluster.base / "fetched"
    fetched = cluster.crmops_json("wal", "fetch", current, str(out), "--system-id", sysid)
    assert fetched["bytes"] == 16 * 1024 * 1024

    end = cluster.crmops_json("wal", "status")["end"]
    r = cluster.crmops("restore", "--at", end, "--sandbox", "--keep")
    result = json.loads(r.stdout)
    name = result["sandbox"]
    try:
        got = _sandbox_rows(docker_client, name, "SELECT id FROM markers ORDER BY id")
        assert got[:len(expected)] == expected  # every one of them, in order
        assert len(got) < total  # what was written after the last push is not there: nothing else delivered
        newest = cluster.sql("SELECT pg_xact_commit_timestamp(xmin) FROM markers WHERE id = %s", int(got[-1]))[0][0]
        lost = (killed_at - newest).total_seconds()
        print(f"restored {len(got)} of {total} markers; the newest committed {lost:.2f} s before the stop")
        assert lost < interval + 3
    finally:
        _remove(docker_client, name)
        import shutil

        shutil.rmtree(result["sandbox_info"]["folder"], ignore_errors=True)


def test_partial_rules_extend_supersede_and_serve_only_the_last(cluster: Cluster) -> None:
    sysid = cluster.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
    seg = 16 * 1024 * 1024
    name = "000000010000000500000010"
    work = cluster.base / "partials"
    work.mkdir()

    def push(fname: str, content: bytes) -> subprocess.CompletedProcess:
        path = work / fname
        path.write_bytes(content.ljust(seg, b"\0"))
        return cluster.crmops("wal", "push", str(path), "--system-id", sysid, check=False)

    def outcome(r: subprocess.CompletedProcess) -> str:
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["outcome"]

    assert outcome(push(name + ".partial", b"A" * 1000)) == "stored"
    assert outcome(push(name + ".partial", b"A" * 3000)) == "stored"  # it grew
    assert outcome(push(name + ".partial", b"A" * 2000)) == "already"  # an older copy of the same WAL
    clash = push(name + ".partial", b"B" * 4000)
    assert clash.returncode == 80 and "does not extend" in clash.stderr

    fetched = cluster.base / "fetched"
    # the partial stands in for its segment while it is the last one
    cluster.crmops("wal", "fetch", name, str(fetched), "--system-id", sysid)
    assert fetched.read_bytes().rstrip(b"\0") == b"A" * 3000
    # a newer full segment of its timeline: the partial is no longer the end, and is not served
    newer = "000000010000000500000011"
    assert outcome(push(newer, b"C" * 100)) == "stored"
    missing = cluster.crmops("wal", "fetch", name, str(fetched), "--system-id", sysid, check=False)
    assert missing.returncode == 81
    # the full segment supersedes the partial: stored, the partial deleted, a late partial not stored
    assert outcome(push(name, b"A" * 5000)) == "stored"
    files = _archived(cluster, sysid)
    assert name in files and name + ".partial" not in files
    assert outcome(push(name + ".partial", b"A" * 5000)) == "superseded"
    assert name + ".partial" not in _archived(cluster, sysid)
    # a partial of an older timeline is never served once a later timeline's history exists
    old = "000000010000000500000012"
    assert outcome(push(old + ".partial", b"D" * 100)) == "stored"
    cluster.crmops("wal", "fetch", old, str(fetched), "--system-id", sysid)
    history = b"1\t5/12000000\tno recovery target specified\n"
    (work / "00000002.history").write_bytes(history)
    refused = cluster.crmops("wal", "push", str(work / "00000002.history"), "--system-id", sysid, check=False)
    assert refused.returncode == 84 and "not production's" in refused.stderr  # a copy's promotion
    _promote(cluster, sysid, 2, history)  # what `crmops wal promote` records for a real new production
    assert cluster.crmops("wal", "fetch", old, str(fetched), "--system-id", sysid, check=False).returncode == 81
