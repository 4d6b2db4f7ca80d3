"""MariaDB `restore --at T --tables ...`: the snapshot rolled forward to T, then only deals moved back.

Same story as PostgreSQL's: a writer fills contacts, deals and activities; the newest deals
are deleted before the cutoff; at T deals is emptied (TRUNCATE, so AUTO_INCREMENT starts
again at 1) while the others keep growing. Everything not named is compared with
mariadb-dump --no-data and CHECKSUM TABLE before and after.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pymysql
import pytest

from tests.matrix.digest import my_digest
from tests.pitr.test_binlog import _crmops, _port_of, binlog_server  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("docker_client")


def _schema(digest: dict) -> str:  # type: ignore[type-arg]
    """The schema with deals' AUTO_INCREMENT left out: that one is meant to move."""
    return re.sub(r"(CREATE TABLE `deals` \(.*?\) ENGINE=\w+) AUTO_INCREMENT=\d+", r"\1", digest["schema"],
                  flags=re.S)


def _snapshots(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "repo" / "snapshots").iterdir())


def test_tables_at_a_point_in_time_bring_back_emptied_deals_only(binlog_server: str,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    port = _port_of(binlog_server)

    def connect() -> pymysql.Connection:
        return pymysql.connect(host="127.0.0.1", port=port, user="root", database="crm", autocommit=True)

    with connect() as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE contacts (id int AUTO_INCREMENT PRIMARY KEY, name varchar(40) NOT NULL)")
        cur.execute("CREATE TABLE deals (id int AUTO_INCREMENT PRIMARY KEY, contact_id int NOT NULL, amount int, "
                    "CONSTRAINT deals_contact FOREIGN KEY (contact_id) REFERENCES contacts (id))")
        cur.execute("CREATE TABLE activities (id int AUTO_INCREMENT PRIMARY KEY, contact_id int, what varchar(40), "
                    "CONSTRAINT activities_contact FOREIGN KEY (contact_id) REFERENCES contacts (id))")
        cur.execute("INSERT INTO contacts (name) SELECT CONCAT('person ', seq) FROM seq_1_to_200")
        cur.execute("INSERT INTO deals (contact_id, amount) SELECT seq, seq * 10 FROM seq_1_to_200")
        cur.execute("DELETE FROM deals WHERE id > 150")
    stop, deals_on = threading.Event(), threading.Event()
    deals_on.set()

    def write() -> None:
        with connect() as conn:
            cur = conn.cursor()
            while not stop.is_set():
                cur.execute("START TRANSACTION")
                cur.execute("INSERT INTO contacts (name) VALUES ('someone')")
                cid = cur.lastrowid
                if deals_on.is_set():
                    cur.execute("INSERT INTO deals (contact_id, amount) VALUES (%s, 100)", (cid,))
                cur.execute("INSERT INTO activities (contact_id, what) VALUES (%s, 'called')", (cid,))
                cur.execute("COMMIT")
                time.sleep(0.01)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    rows = "SELECT id, contact_id, amount FROM {} ORDER BY id"
    try:
        time.sleep(1)
        assert _crmops(tmp_path, binlog_server, "repo", "init").returncode == 0
        r = _crmops(tmp_path, binlog_server, "backup")
        assert r.returncode == 0, r.stderr
        time.sleep(2)
        deals_on.clear()  # the newest deals are deleted before the cutoff: their ids stay handed out
        time.sleep(0.1)
        with connect() as conn:
            cur = conn.cursor()
            cur.execute("SELECT max(id) FROM deals")
            top = cur.fetchone()[0]
            cur.execute("DELETE FROM deals WHERE id > %s", (top - 10,))
        time.sleep(1.1)
        cutoff = datetime.now(UTC).replace(microsecond=0)  # binlog time is whole seconds
        time.sleep(1.2)
        with connect() as conn:
            cur = conn.cursor()
            cur.execute(rows.format("deals"))
            expected = cur.fetchall()
            cur.execute("TRUNCATE TABLE deals")  # the disaster
        time.sleep(2)  # contacts and activities keep growing after it
    finally:
        stop.set()
        writer.join()
    assert len(expected) > 150 + 50 and expected[-1][0] == top - 10
    pushed = _crmops(tmp_path, binlog_server, "binlog", "push")
    assert pushed.returncode == 0, pushed.stderr
    at = cutoff.isoformat(sep=" ")
    before, snapshots = my_digest(binlog_server, skip=("deals",)), _snapshots(tmp_path)

    typo = _crmops(tmp_path, binlog_server, "restore", "--at", at, "--tables", "dealz", "--to", binlog_server,
                   "--force")
    assert typo.returncode == 16, typo.stderr
    assert "did you mean deals" in typo.stderr and "nothing was recovered" in typo.stderr
    assert my_digest(binlog_server, skip=("deals",)) == before and _snapshots(tmp_path) == snapshots

    forced = _crmops(tmp_path, binlog_server, "restore", "--at", at, "--tables", "deals", "--to", binlog_server,
                     "--force")
    assert forced.returncode == 0, forced.stderr
    out = json.loads(forced.stdout)
    assert out["replaced"] == ["deals"] and out["created"] == [] and out["safety_snapshot"] in _snapshots(tmp_path)
    after = my_digest(binlog_server, skip=("deals",))
    assert after["tables"] == before["tables"] and _schema(after) == _schema(before)
    with connect() as conn:
        cur = conn.cursor()
        cur.execute(rows.format("deals"))
        assert cur.fetchall() == expected
        # AUTO_INCREMENT had started again at 1: it now stands past every id handed out by the cutoff
        cur.execute("INSERT INTO deals (contact_id, amount) VALUES (1, 5)")
        new_id = cur.lastrowid
        assert new_id > top
        cur.execute("DELETE FROM deals WHERE id = %s", (new_id,))

    before = my_digest(binlog_server)
    beside = _crmops(tmp_path, binlog_server, "restore", "--at", at, "--tables", "deals", "--as", "restored_",
                     "--to", binlog_server)
    assert beside.returncode == 0, beside.stderr
    out = json.loads(beside.stdout)
    assert out["created"] == ["restored_deals"] and out["replaced"] == [] and out["safety_snapshot"] is None
    assert my_digest(binlog_server, skip=("restored_deals",))["tables"] == before["tables"]
    with connect() as conn:
        cur = conn.cursor()
        cur.execute(rows.format("restored_deals"))
        assert cur.fetchall() == expected
