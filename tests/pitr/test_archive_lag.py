"""The archive lag as the server sees it: an idle server is not red however old its last push, a
failing archive_command is red naming the file, binlog writes not yet pushed are red; the
metrics carry the judged lag, and the status page charts the lag from the archive's push records.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pymysql
import yaml

from crmops.pitr.pushlog import RESOLUTION, record, sawtooth
from tests.conftest import BED_ENV
from tests.pitr.conftest import PASSPHRASE, Cluster, result_of
from tests.pitr.test_binlog import _port_of, binlog_server  # noqa: F401  (the fixture)

LIMIT = 40  # seconds: above the 35 s after which an unswitched segment counts as idle (archive_timeout 5 s)


class Charts(HTMLParser):
    """Each <svg> with its attributes, its polyline's points and its red dots' titles."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: dict[str, dict] = {}  # type: ignore[type-arg]
        self._svg: dict | None = None  # type: ignore[type-arg]
        self._in_dot = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg":
            self._svg = {"attrs": a, "points": [], "dots": []}
            self.svgs[a["id"] or ""] = self._svg
        elif self._svg is not None and tag == "polyline":
            self._svg["points"] = [tuple(map(float, p.split(","))) for p in (a["points"] or "").split()]
        elif self._svg is not None and tag == "circle" and "bad" in (a.get("class") or ""):
            self._in_dot = True

    def handle_data(self, data: str) -> None:
        if self._in_dot:
            self._svg["dots"].append(data)  # type: ignore[index]
            self._in_dot = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg = None


def chart_values(svg: dict) -> list[tuple[float, float]]:  # type: ignore[type-arg]
    """(Unix time, seconds) read back from the drawn polyline through the chart's scale."""
    from crmops.status.page import BOTTOM, LEFT, RIGHT, TOP, H, W

    a = svg["attrs"]
    top, t0, t1 = float(a["data-top"]), float(a["data-t0"]), float(a["data-t1"])
    inner_w, inner_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    return [(t0 + (x - LEFT) / inner_w * (t1 - t0), (1 - (y - TOP) / inner_h) * top) for x, y in svg["points"]]


def check_chart(html: str, chart_id: str, pushes: list[int], now: datetime, limit: float) -> list[tuple[float, float]]:
    """The chart holds exactly the sawtooth of the recorded pushes, point for point; returns its values."""
    charts = Charts()
    charts.feed(html)
    svg = charts.svgs[chart_id]
    expected = sawtooth(pushes, now, now - timedelta(hours=24))
    drawn = chart_values(svg)
    assert len(drawn) == len(expected) >= 3, (drawn, expected)
    top = float(svg["attrs"]["data-top"])
    span = float(svg["attrs"]["data-t1"]) - float(svg["attrs"]["data-t0"])
    for (t, v), (et, ev) in zip(drawn, expected, strict=True):
        assert abs(t - et.timestamp()) <= span / 600 + 1, (t, et)  # a tenth of a pixel, plus rounding
        assert abs(v - min(ev, top)) <= top / 1500 + 0.1, (v, ev)
    assert float(svg["attrs"]["data-limit"]) == limit
    assert len(svg["dots"]) == sum(1 for _, v in expected if v > limit)
    return drawn


def _status(cluster: Cluster) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = cluster.crmops("status", check=False)
    return r.returncode, result_of(r.stdout)


def _run(cluster: Cluster, config: Path, *args: str):  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "--json", *args],
                          capture_output=True, text=True, env=cluster.env(), timeout=120)


def _wal(doc: dict) -> tuple[dict, dict]:  # type: ignore[type-arg]
    (w,) = doc["pitr"]
    return w, next(v for v in doc["verdicts"] if v["name"] == "wal archive")


def _pushes(config: Path, key: str) -> list[int]:
    """The push times the archive recorded, read from the repository itself."""
    import json

    from crmops.config import load_config
    from crmops.repository import open_repository

    os.environ["CRMOPS_PASSPHRASE"] = PASSPHRASE
    try:
        repo = open_repository(load_config(config))
        return json.loads(repo.sealer.open(repo.store.get(key), key.replace("/", ":"), key))["pushes"]
    finally:
        del os.environ["CRMOPS_PASSPHRASE"]


def _metric(path: Path, name: str) -> float:
    line = next(x for x in path.read_text().splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


def test_idle_postgres_is_green_a_failing_archive_command_is_red(cluster: Cluster) -> None:
    cfg = yaml.safe_load(cluster.config.read_text())
    cfg["status"] = {"max_archive_lag_seconds": LIMIT}
    cfg["notify"] = {"metrics_file": str(cluster.base / "metrics.prom")}
    cluster.config.write_text(yaml.safe_dump(cfg))
    cluster.sql("ALTER SYSTEM SET checkpoint_timeout = '1h'")  # no timed checkpoint record amid the test
    cluster.sql("SELECT pg_reload_conf()")
    cluster.sql("CREATE TABLE t (id int)")
    base = cluster.crmops_json("backup", "--physical")
    cluster.sql("INSERT INTO t SELECT generate_series(1, 1000)")
    cluster.switch_and_wait()

    # no writes: wait until the newest push is older than the limit; the status never turns red meanwhile
    deadline = time.monotonic() + 240
    while True:
        code, doc = _status(cluster)
        w, verdict = _wal(doc)
        assert verdict["level"] != "red", (verdict, w, cluster.log_tail())
        assert w["lag_source"] == "server", w
        if w["last_push_age_seconds"] > LIMIT + 2:
            break
        assert time.monotonic() < deadline, w
        time.sleep(3)
    assert w["idle"] is True and w["archive_lag_seconds"] == 0.0 and w["archive_failing"] is None
    assert verdict["level"] == "green" and "idle, everything written is archived" in verdict["summary"]
    # the metrics written at the end of a job carry the judged lag and the window's start
    cluster.crmops("check")
    prom = cluster.base / "metrics.prom"
    assert _metric(prom, "crmops_archive_lag_seconds") == 0.0
    assert _metric(prom, "crmops_pitr_window_start_timestamp") == datetime.fromisoformat(
        base["stop_time"]).timestamp()

    # the status page charts the lag from the pushes the archive recorded: the idle stretch rises past the limit
    sysid = base["system_id"]
    page = cluster.base / "status.html"
    rep = cluster.crmops_json("report", "--html", str(page))
    pushes = _pushes(cluster.config, f"walstate/{sysid}")
    assert pushes and pushes[-1] == int(datetime.fromisoformat(w["newest_archived_at"]).timestamp())
    drawn = check_chart(page.read_text(), f"chart-lag-wal-{sysid}", pushes,
                        datetime.fromisoformat(rep["generated_at"]), LIMIT)
    assert drawn[-1][1] > LIMIT  # now: the age of the last push, over the limit (a red dot), though status is green

    # archive_command now points at a store that does not exist: the next segments fail, named in the verdict
    broken = cluster.base / "broken.yaml"
    broken.write_text(yaml.safe_dump({**cfg, "repository": {"url": f"file://{cluster.base}/no-such-repo"}}))
    os.chmod(broken, 0o644)
    command = cluster.wal_command("push").replace(str(cluster.config), str(broken)) + " %p"
    cluster.sql(f"ALTER SYSTEM SET archive_command = {_quote(command)}")
    cluster.sql("SELECT pg_reload_conf()")
    time.sleep(1)
    cluster.sql("INSERT INTO t SELECT generate_series(1, 1000)")
    archived = w["newest_segment"]
    cluster.sql("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 60
    while not cluster.sql("SELECT last_failed_wal FROM pg_stat_archiver")[0][0]:
        assert time.monotonic() < deadline, cluster.log_tail()
        time.sleep(0.5)
    code, doc = _status(cluster)
    w, verdict = _wal(doc)
    failed = cluster.sql("SELECT last_failed_wal FROM pg_stat_archiver")[0][0]
    assert code == 61 and verdict["level"] == "red", verdict
    assert w["archive_failing"]["wal"] == failed > archived and w["idle"] is False
    assert w["newest_segment"] == archived  # nothing reached the archive
    assert f"archive_command is failing: {failed} could not be archived" in verdict["summary"]
    r = cluster.crmops("wal", "status", check=False)
    assert r.returncode == 0 and result_of(r.stdout)["archive_failing"]["wal"] == failed

    # the server stopped: the age of the newest push stands, and the verdict says why
    cluster.stop()
    code, doc = _status(cluster)
    w, verdict = _wal(doc)
    assert w["lag_source"] == "last push" and w["archive_lag_seconds"] == w["last_push_age_seconds"] > LIMIT
    assert verdict["level"] == "red" and "server not reachable" in verdict["summary"], verdict


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_mariadb_binlog_writes_not_pushed_are_red_idle_is_green(binlog_server: str,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    port = _port_of(binlog_server)
    config = tmp_path / "crmops.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": binlog_server},
                                      "repository": {"url": f"file://{tmp_path / 'repo'}"},
                                      "state_dir": str(tmp_path / "state"), "status": {"max_archive_lag_seconds": 2},
                                      "notify": {"metrics_file": str(tmp_path / "metrics.prom")}}))
    env_cluster = Cluster(tmp_path)  # only for its environment (passphrase) and runner

    def crmops(*args: str):  # type: ignore[no-untyped-def]
        return _run(env_cluster, config, *args)

    def binlog_status() -> tuple[int, dict, dict]:  # type: ignore[type-arg]
        r = crmops("status")
        doc = result_of(r.stdout)
        (w,) = [x for x in doc["pitr"] if x.get("kind") == "binlog"]
        return r.returncode, w, next(v for v in doc["verdicts"] if v["name"] == "binlog archive")

    with pymysql.connect(host="127.0.0.1", port=port, user="root", database="crm", autocommit=True) as conn:
        conn.cursor().execute("CREATE TABLE contacts (id int PRIMARY KEY, name varchar(40))")
        conn.cursor().execute("INSERT INTO contacts VALUES (1, 'a')")
    assert crmops("repo", "init").returncode == 0
    assert crmops("backup").returncode == 0
    assert crmops("binlog", "push").returncode == 0
    time.sleep(3.5)
    code, w, verdict = binlog_status()
    assert w["last_push_age_seconds"] > 2 and w["lag_source"] == "server" and w["idle"] is True, w
    assert verdict["level"] == "green" and "idle" in verdict["summary"], verdict

    # a rotation writes only headers into the new file: still idle
    with pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=True) as conn:
        conn.cursor().execute("FLUSH BINARY LOGS")
    code, w, verdict = binlog_status()
    assert w["idle"] is True and "rotation headers" in w["lag_note"] and verdict["level"] == "green", w

    # writes the archive does not have yet: red once older than the limit
    with pymysql.connect(host="127.0.0.1", port=port, user="root", database="crm", autocommit=True) as conn:
        conn.cursor().execute("INSERT INTO contacts VALUES (2, 'b')")
        cur = conn.cursor()
        cur.execute("SHOW MASTER STATUS")
        file = cur.fetchone()[0]
    code, w, verdict = binlog_status()
    assert code == 61 and verdict["level"] == "red" and w["idle"] is False, (w, verdict)
    assert w["archive_lag_seconds"] == w["last_push_age_seconds"] > 2 and file in w["lag_note"]
    assert "archive lag" in verdict["summary"] and "`crmops binlog follow`" in verdict["summary"]

    # pushed: idle again, and the metrics written by the next job say 0
    assert crmops("binlog", "push").returncode == 0
    time.sleep(2.5)
    code, w, verdict = binlog_status()
    assert w["idle"] is True and verdict["level"] == "green", w
    assert crmops("check").returncode == 0
    assert _metric(tmp_path / "metrics.prom", "crmops_archive_lag_seconds") == 0.0
    assert _metric(tmp_path / "metrics.prom", "crmops_pitr_window_start_timestamp") > 0

    # the status page: the binlog archive's lag chart, point for point from its push records
    page = tmp_path / "status.html"
    rep = result_of(crmops("report", "--html", str(page)).stdout)
    pushes = _pushes(config, f"binlogstate/{w['system_id']}")
    assert len(pushes) == 2  # two pushes, seconds apart: both kept (the one before the newest is the first)
    drawn = check_chart(page.read_text(), f"chart-lag-binlog-{w['system_id']}", pushes,
                        datetime.fromisoformat(rep["generated_at"]), 2)
    assert drawn[-1][1] >= 2  # the age of the last push when the page was made

    # the server gone: the push age stands, and the verdict says the server was not asked
    gone = tmp_path / "gone.yaml"
    doc = yaml.safe_load(config.read_text())
    doc["database"]["url"] = binlog_server.replace(f":{port}/", ":1/")
    gone.write_text(yaml.safe_dump(doc))
    r = _run(env_cluster, gone, "status")
    (w,) = [x for x in result_of(r.stdout)["pitr"] if x.get("kind") == "binlog"]
    assert w["lag_source"] == "last push" and "server not reachable" in w["lag_note"], w

    # the shared test server (another server id, binary logging off) is not this archive's server: not judged by it
    shared = BED_ENV.get("CRMOPS_TEST_MYSQL_URL")
    if shared:
        doc["database"]["url"] = shared
        gone.write_text(yaml.safe_dump(doc))
        (w,) = [x for x in result_of(_run(env_cluster, gone, "status").stdout)["pitr"] if x.get("kind") == "binlog"]
        assert w["lag_source"] == "last push" and "not this one" in w["lag_note"], w


def test_push_record_keeps_every_pause_and_stays_small() -> None:
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    times: list[int] = []
    busy = [t0 + timedelta(seconds=s) for s in range(0, 3600)]  # a push every second for an hour
    for t in busy:
        times = record(times, t)
    assert len(times) <= 2 * 3600 // RESOLUTION + 2
    pause_end = busy[-1] + timedelta(seconds=700)
    times = record(times, pause_end)
    points = sawtooth(times, pause_end + timedelta(seconds=10), t0)
    assert max(v for _, v in points) == 700.0  # the pause, exact
    assert points[-1] == (pause_end + timedelta(seconds=10), 10.0)
    # older than a day and a bit: dropped at the next push
    later = record(times, pause_end + timedelta(hours=27))
    assert later == [int((pause_end + timedelta(hours=27)).timestamp())]


def test_an_abandoned_replication_slot_is_named_before_it_fills_the_disk(cluster: Cluster,
                                                                         monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`wal stream` keeps a slot so the server holds WAL while the streamer is down; a streamer
    gone for good leaves the slot keeping every WAL file until the server's disk is full."""
    from crmops.config import load_config
    from crmops.pitr import lag
    from crmops.pitr.window import window
    from crmops.repository import open_repository
    from crmops.status.verdicts import _archive_verdict

    monkeypatch.setattr(lag, "SLOT_WARN_BYTES", 1 << 20)  # a megabyte here, a gigabyte in production
    cluster.sql("CREATE TABLE s (id int, note text)")
    cluster.crmops_json("backup", "--physical")
    cluster.sql("SELECT pg_create_physical_replication_slot('crmops', true)")
    cluster.sql("INSERT INTO s SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g")
    cluster.switch_and_wait()
    monkeypatch.setenv("CRMOPS_PASSPHRASE", PASSPHRASE)
    repo = open_repository(load_config(cluster.config))

    def verdict() -> tuple[dict, object]:  # type: ignore[type-arg]
        w = lag.assess(window(repo), cluster.url)
        return w, _archive_verdict(w, 900)

    w, v = verdict()
    assert [s["slot"] for s in w["idle_slots"]] == ["crmops"] and w["idle_slots"][0]["retained_bytes"] > 1 << 20
    assert v.level == "amber" and "replication slot crmops is inactive" in v.summary  # type: ignore[attr-defined]
    assert "pg_drop_replication_slot('crmops')" in v.summary  # type: ignore[attr-defined]
    cluster.sql("SELECT pg_drop_replication_slot('crmops')")
    w, v = verdict()
    assert w["idle_slots"] == [] and v.level == "green", v  # type: ignore[attr-defined]
