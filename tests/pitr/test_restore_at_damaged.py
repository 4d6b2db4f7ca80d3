"""`restore --at T --tables accounts --force` after accounts was dropped, three views reading it.

The recovery must take its pre-restore snapshot of the damaged target (MariaDB keeps the
views, invalid; PostgreSQL drops them with CASCADE), bring accounts back as it was at T
(rows written after the snapshot included), and leave every other table as it is.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pymysql
import pytest

from tests.matrix.digest import native_digest
from tests.pitr.conftest import Cluster
from tests.pitr.test_binlog import _crmops, _port_of, binlog_server  # noqa: F401 (a fixture)
from tests.services.test_restore_damaged import DAMAGED, VIEWS

pytestmark = pytest.mark.usefixtures("docker_client")

TABLES = ["CREATE TABLE accounts (id int PRIMARY KEY, name varchar(40) NOT NULL)",
          "CREATE TABLE contacts (id int PRIMARY KEY, account_id int, name varchar(40), "
          "CONSTRAINT contacts_account_fk FOREIGN KEY (account_id) REFERENCES accounts (id))"]


def test_pg_restore_at_tables_after_drop_cascade(cluster: Cluster) -> None:
    for sql in TABLES + ["INSERT INTO accounts SELECT g, 'acct ' || g FROM generate_series(1, 40) g",
                         "INSERT INTO contacts SELECT g, 1 + g % 20, 'c ' || g FROM generate_series(1, 60) g",
                         *VIEWS]:
        cluster.sql(sql)
    cluster.crmops_json("backup", "--physical")
    cluster.sql("INSERT INTO accounts SELECT g, 'later ' || g FROM generate_series(41, 50) g")
    time.sleep(1.2)
    cutoff = cluster.sql("SELECT now()")[0][0]
    time.sleep(1.2)
    cluster.sql("DROP TABLE accounts CASCADE")  # the disaster: PostgreSQL takes the views and the key along
    time.sleep(1.1)
    cluster.switch_and_wait()
    before = native_digest(cluster.url, skip=("public.accounts",))
    r = json.loads(cluster.crmops("restore", "--at", cutoff.isoformat(sep=" "),
                                  "--tables", "accounts", "--to", cluster.url, "--force").stdout)
    assert r["created"] == ["public.accounts"] and r["safety_snapshot"]
    assert cluster.sql("SELECT count(*) FROM accounts")[0][0] == 50
    assert native_digest(cluster.url, skip=("public.accounts",)) == before


def test_mariadb_restore_at_tables_with_invalid_views(binlog_server: str, tmp_path: Path) -> None:  # noqa: F811
    port = _port_of(binlog_server)

    def connect() -> pymysql.Connection:
        return pymysql.connect(host="127.0.0.1", port=port, user="root", database="crm", autocommit=True)

    with connect() as conn:
        cur = conn.cursor()
        for sql in TABLES + ["INSERT INTO accounts SELECT seq, CONCAT('acct ', seq) FROM seq_1_to_40",
                             "INSERT INTO contacts SELECT seq, 1 + seq % 20, CONCAT('c ', seq) FROM seq_1_to_60",
                             *VIEWS]:
            cur.execute(sql)
    assert _crmops(tmp_path, binlog_server, "repo", "init").returncode == 0
    assert _crmops(tmp_path, binlog_server, "backup").returncode == 0
    with connect() as conn:
        conn.cursor().execute("INSERT INTO accounts SELECT seq, CONCAT('later ', seq) FROM seq_41_to_50")
    time.sleep(1.1)
    cutoff = datetime.now(UTC).replace(microsecond=0)
    time.sleep(1.2)
    with connect() as conn:
        cur = conn.cursor()
        cur.execute("SET FOREIGN_KEY_CHECKS = 0")
        cur.execute("DROP TABLE accounts")  # the disaster: the views stay, invalid
    assert _crmops(tmp_path, binlog_server, "binlog", "push").returncode == 0
    before = native_digest(binlog_server, skip=("accounts", *DAMAGED))
    r = _crmops(tmp_path, binlog_server, "restore", "--at", cutoff.isoformat(sep=" "), "--tables", "accounts",
                "--to", binlog_server, "--force")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["created"] == ["accounts"] and out["safety_snapshot"]
    with connect() as conn:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM accounts")
        assert cur.fetchone()[0] == 50
        cur.execute("SELECT count(*) FROM account_names")  # the views work again
        assert cur.fetchone()[0] == 50
    assert native_digest(binlog_server, skip=("accounts", *DAMAGED)) == before
