"""A partitioned table is one table for `restore --tables`: its partitions come with it, and nothing else moves.

The source holds `pay` (range partitions for two years and a default partition, an index
and a default on the parent, 1,000 rows), `reg` (list partitions, a serial id) and `h`
(hash partitions), beside the demo CRM's kind of plain table. Half of pay is deleted in
the target, then brought back with --as and with --force; a native digest of every table
not named (schema and rows) is the same before and after, a refused restore included.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pymysql
import pytest

from crmops.engines.mysql import MysqlEngine
from tests.matrix.digest import pg_digest
from tests.services.test_backup_restore import write_config
from tests.services.test_restore_scope import _pg_with_db, run

PG_SCHEMA = """
CREATE TABLE pay (id int, at date, amt int DEFAULT 7, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE pay_2024 PARTITION OF pay FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE pay_2025 PARTITION OF pay FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE pay_other PARTITION OF pay DEFAULT;
CREATE INDEX pay_amt ON pay (amt);
INSERT INTO pay SELECT g, date '2024-10-01' + (g % 500), g FROM generate_series(1, 1000) g;
CREATE TABLE reg (id serial, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE reg_eu PARTITION OF reg FOR VALUES IN ('eu');
CREATE TABLE reg_us PARTITION OF reg FOR VALUES IN ('us');
INSERT INTO reg (region) SELECT CASE WHEN g % 3 = 0 THEN 'us' ELSE 'eu' END FROM generate_series(1, 300) g;
CREATE TABLE h (id int PRIMARY KEY, v text) PARTITION BY HASH (id);
CREATE TABLE h0 PARTITION OF h FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE h1 PARTITION OF h FOR VALUES WITH (MODULUS 2, REMAINDER 1);
INSERT INTO h SELECT g, 'v' || g FROM generate_series(1, 200) g;
CREATE TABLE notes (id serial PRIMARY KEY, pay_id int, body text);
INSERT INTO notes (pay_id, body) SELECT g, 'note ' || g FROM generate_series(1, 50) g;
"""
PAY = ("public.pay", "public.pay_2024", "public.pay_2025", "public.pay_other")


@pytest.fixture(scope="module")
def pg_parts(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    name = f"parts_src_{uuid.uuid4().hex[:8]}"
    made = [name]
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    src = _pg_with_db(pg_admin_url, name)
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute(PG_SCHEMA)
    tmp = tmp_path_factory.mktemp("pg-parts")
    config = write_config(tmp, src)
    run(config, "repo", "init")
    snap = json.loads(run(config, "backup").stdout)["snapshot_id"]

    def copy() -> str:
        """A target holding the source, with half of pay (the even ids, in every partition) deleted."""
        dst = f"parts_dst_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dst}" TEMPLATE "{name}"')
        made.append(dst)
        url = _pg_with_db(pg_admin_url, dst)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM pay WHERE id % 2 = 0")
        return url

    yield {"config": config, "snap": snap, "src": src, "copy": copy}
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        for db in reversed(made):
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _one(url: str, sql: str) -> Any:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchone()[0]


def test_pg_fingerprint_counts_a_partitioned_table_once(pg_parts: dict[str, Any]) -> None:
    from crmops.repository import open_repository
    from crmops.services.restore import snapshot_tables
    from tests.services.test_backup_restore import _cfg

    manifest = open_repository(_cfg(pg_parts["config"])).manifest(pg_parts["snap"])
    fp = manifest["fingerprint"]
    assert fp["tables"]["pay"]["rows"] == 1000 and fp["tables"]["reg"]["rows"] == 300
    assert not {"pay_2024", "pay_2025", "pay_other", "reg_eu", "h0"} & set(fp["tables"])
    assert fp["partitions"]["pay_other"] == "pay" and fp["partitions"]["h1"] == "h"
    assert sum(t["rows"] for t in fp["tables"].values()) == 1000 + 300 + 200 + 50
    assert "pay_2024" in snapshot_tables(manifest)  # a single partition can still be named


@pytest.mark.usefixtures("docker_client")
def test_pg_verify_counts_a_partitioned_table_once(pg_parts: dict[str, Any]) -> None:
    out = json.loads(run(pg_parts["config"], "verify", pg_parts["snap"]).stdout)
    tables = {t["name"]: t for t in out["tables"]}
    assert tables["pay"]["rows_found"] == 1000 and tables["pay"]["ok"]
    assert not {"pay_2024", "pay_other", "reg_eu", "h0"} & set(tables)
    assert all(t["ok"] for t in out["tables"])


def test_pg_as_makes_a_partitioned_copy_with_its_partitions(pg_parts: dict[str, Any]) -> None:
    config, snap = pg_parts["config"], pg_parts["snap"]
    dst = pg_parts["copy"]()
    copies = tuple(t.replace("public.", "public.restored_") for t in PAY)
    before = pg_digest(dst)
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "pay", "--as", "restored_").stdout)
    assert out["created"] == list(copies) and out["replaced"] == []
    assert _one(dst, "SELECT count(*) FROM restored_pay") == 1000
    for part in ("pay_2024", "pay_2025", "pay_other"):  # each row in the partition it was in
        assert _one(dst, f"SELECT count(*) FROM restored_{part}") == _one(pg_parts["src"],
                                                                            f"SELECT count(*) FROM {part}")
    assert _one(dst, "SELECT relkind FROM pg_class WHERE relname = 'restored_pay'") == "p"
    assert _one(dst, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'restored_pay'::regclass") == 3
    assert _one(dst, "SELECT count(*) FROM pay") == 500
    assert pg_digest(dst, skip=copies) == before  # the live pay and everything else as it was
    again = run(config, "restore", snap, "--to", dst, "--tables", "pay", "--as", "restored_", check=False)
    assert again.returncode == 60 and "restored_pay" in again.stderr


def test_pg_force_replaces_every_partition_in_one_go(pg_parts: dict[str, Any]) -> None:
    config, snap = pg_parts["config"], pg_parts["snap"]
    dst = pg_parts["copy"]()
    with psycopg.connect(dst, autocommit=True) as conn:  # the other kinds of partitioning lose rows too
        conn.execute("DELETE FROM reg WHERE region = 'us' AND id > 100")
        conn.execute("DELETE FROM h WHERE id > 150")
        # a partition made since the snapshot: its rows are pay's, replaced as well
        conn.execute("CREATE TABLE pay_2030 PARTITION OF pay FOR VALUES FROM ('2030-01-01') TO ('2031-01-01')")
        conn.execute("INSERT INTO pay VALUES (5001, '2030-03-01', 1)")
        # a row trigger on the partitioned table (cloned onto each partition): not fired for restored rows
        conn.execute("CREATE FUNCTION note_pay() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN INSERT INTO notes (pay_id, body) VALUES (NEW.id, 'paid'); RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER note_pay AFTER INSERT ON pay FOR EACH ROW EXECUTE FUNCTION note_pay()")
    named = (*PAY, "public.pay_2030", "public.reg", "public.reg_eu", "public.reg_us", "public.h", "public.h0",
             "public.h1", "public.reg_id_seq")
    before = pg_digest(dst, skip=named)
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "pay,reg,h", "--force").stdout)
    assert set(out["replaced"]) == {*PAY, "public.reg", "public.reg_eu", "public.reg_us", "public.h",
                                    "public.h0", "public.h1"}
    assert out["safety_snapshot"]
    src = pg_parts["src"]
    for table in ("pay", "pay_2024", "pay_2025", "pay_other", "reg", "reg_us", "h", "h0"):
        want = _one(src, f"SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t")
        assert _one(dst, f"SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t") == want, table
    assert _one(dst, "SELECT count(*) FROM pay") == 1000 and _one(dst, "SELECT count(*) FROM pay_2030") == 0
    assert _one(dst, "SELECT nextval('reg_id_seq')") > 300
    after = pg_digest(dst, skip=named)
    assert after == before  # notes included: the trigger did not fire for the restored rows
    assert _one(dst, "SELECT count(*) FROM pg_trigger WHERE tgname = 'note_pay' AND tgenabled = 'O'") == 5
    # the parent's index is still attached to every partition
    assert _one(dst, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'pay_amt'::regclass") == 4


def test_pg_force_of_a_single_partition(pg_parts: dict[str, Any]) -> None:
    config, snap = pg_parts["config"], pg_parts["snap"]
    dst = pg_parts["copy"]()
    before = pg_digest(dst, skip=("public.pay_2025", "public.pay"))
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "pay_2025", "--force").stdout)
    assert out["replaced"] == ["public.pay_2025"]
    src = pg_parts["src"]
    assert _one(dst, "SELECT count(*) FROM pay_2025") == _one(src, "SELECT count(*) FROM pay_2025")
    assert _one(dst, "SELECT count(*) FROM pay_2024") == _one(src, "SELECT count(*) FROM pay_2024 WHERE id % 2 = 1")
    assert pg_digest(dst, skip=("public.pay_2025", "public.pay")) == before


def test_pg_partitioned_table_new_to_the_target(pg_parts: dict[str, Any]) -> None:
    """Dropped altogether: it comes back partitioned, its partitions attached, its indexes on each."""
    config, snap = pg_parts["config"], pg_parts["snap"]
    dst = pg_parts["copy"]()
    with psycopg.connect(dst, autocommit=True) as conn:
        conn.execute("DROP TABLE pay")
    before = pg_digest(dst)
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "pay", "--force").stdout)
    assert out["created"] == list(PAY) and out["replaced"] == []
    assert _one(dst, "SELECT count(*) FROM pay") == 1000
    assert _one(dst, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'pay'::regclass") == 3
    assert _one(dst, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'pay_amt'::regclass") == 3
    assert _one(dst, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'pay_pkey'::regclass") == 3
    assert _one(dst, "INSERT INTO pay (id, at) VALUES (9999, '2024-11-11') RETURNING amt") == 7  # the default
    after = pg_digest(dst, skip=(*PAY,))
    assert after["rows"] == before["rows"]


# -- MariaDB: PARTITION BY on one table ----------------------------------------------------

MY_SCHEMA = [
    "CREATE TABLE pay (id int NOT NULL, at date NOT NULL, amt int DEFAULT 7, PRIMARY KEY (id, at), KEY (amt)) "
    "PARTITION BY RANGE (YEAR(at)) (PARTITION p2024 VALUES LESS THAN (2025), "
    "PARTITION p2025 VALUES LESS THAN (2026), PARTITION pmax VALUES LESS THAN MAXVALUE)",
    "CREATE TABLE reg (id int NOT NULL AUTO_INCREMENT, region varchar(4) NOT NULL, PRIMARY KEY (id, region)) "
    "PARTITION BY LIST COLUMNS (region) (PARTITION peu VALUES IN ('eu'), PARTITION pus VALUES IN ('us'))",
    "CREATE TABLE h (id int PRIMARY KEY, v text) PARTITION BY HASH (id) PARTITIONS 3",
    "CREATE TABLE notes (id int AUTO_INCREMENT PRIMARY KEY, body text)",
]


@pytest.fixture(scope="module")
def my_parts(mysql_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from sqlalchemy.engine import make_url

    from tests.conftest import _mysql_connect

    name = f"parts_src_{uuid.uuid4().hex[:8]}"
    made = [name]
    admin = _mysql_connect(mysql_admin_url)

    def fill(url: str, schema: bool) -> None:
        conn = MysqlEngine(url).connect()
        try:
            with conn.cursor() as cur:
                if schema:
                    for stmt in MY_SCHEMA:
                        cur.execute(stmt)
                cur.execute("INSERT INTO pay SELECT seq, DATE '2024-10-01' + INTERVAL (seq % 500) DAY, seq "
                            "FROM seq_1_to_1000")
                cur.execute("INSERT INTO reg (region) SELECT IF(seq % 3 = 0, 'us', 'eu') FROM seq_1_to_300")
                cur.execute("INSERT INTO h SELECT seq, CONCAT('v', seq) FROM seq_1_to_200")
                cur.execute("INSERT INTO notes (body) SELECT CONCAT('note ', seq) FROM seq_1_to_50")
            conn.commit()
        finally:
            conn.close()

    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    src = make_url(mysql_admin_url).set(database=name).render_as_string(hide_password=False)
    fill(src, True)
    tmp = tmp_path_factory.mktemp("my-parts")
    config = write_config(tmp, src)
    run(config, "repo", "init")
    snap = json.loads(run(config, "backup").stdout)["snapshot_id"]

    def copy() -> str:
        dst = f"parts_dst_{uuid.uuid4().hex[:8]}"
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{dst}`")
        made.append(dst)
        url = make_url(mysql_admin_url).set(database=dst).render_as_string(hide_password=False)
        conn = MysqlEngine(url).connect()
        try:
            with conn.cursor() as cur:
                for stmt in MY_SCHEMA:
                    cur.execute(stmt)
        finally:
            conn.close()
        fill(url, False)
        conn = MysqlEngine(url).connect()
        try:
            with conn.cursor() as cur:
                cur.execute("DELETE FROM pay WHERE id % 2 = 0")
            conn.commit()
        finally:
            conn.close()
        return url

    yield {"config": config, "snap": snap, "src": src, "copy": copy}
    with admin.cursor() as cur:
        for db in made:
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
    admin.close()


def _my_one(url: str, sql: str) -> Any:
    conn = MysqlEngine(url).connect()
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_mysql_partitioned_table_with_as_and_force(my_parts: dict[str, Any]) -> None:
    from tests.matrix.digest import native_digest

    config, snap = my_parts["config"], my_parts["snap"]
    dst = my_parts["copy"]()

    def others() -> dict[str, str]:
        d = native_digest(dst)
        schema = d.pop("schema")
        # the schema dump minus the tables named: each CREATE TABLE block of pay / restored_pay
        blocks = [b for b in schema.split("\n\n") if "`pay`" not in b and "`restored_pay`" not in b]
        return {**{k: v for k, v in d.items() if k not in ("pay", "restored_pay")}, "schema": "\n\n".join(blocks)}

    before = others()
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "pay", "--as", "restored_").stdout)
    assert out["created"] == ["restored_pay"]
    assert _my_one(dst, "SELECT count(*) FROM restored_pay") == 1000
    assert _my_one(dst, "SELECT count(*) FROM information_schema.partitions WHERE table_schema = DATABASE() "
                        "AND table_name = 'restored_pay'") == 3
    assert _my_one(dst, "SELECT count(*) FROM pay") == 500
    assert others() == before
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "pay", "--force").stdout)
    assert out["replaced"] == ["pay"] and out["safety_snapshot"]
    for part in ("p2024", "p2025", "pmax"):
        sql = f"SELECT count(*), SUM(amt) FROM pay PARTITION ({part})"
        assert _my_one(dst, sql.replace("count(*), ", "")) == _my_one(my_parts["src"], sql.replace("count(*), ", ""))
    assert _my_one(dst, "SELECT count(*) FROM pay") == 1000
    assert others() == before
    with pytest.raises(pymysql.MySQLError):  # still one partitioned table, keys and all
        _my_one(dst, "INSERT INTO pay VALUES (1, (SELECT at FROM pay p WHERE id = 1), 0)")


def test_fingerprint_of_an_older_snapshot_that_listed_partitions_as_tables() -> None:
    """Verify of a snapshot taken before partitions were counted once: its partition entries are skipped,
    their rows being in the partitioned table's entry on both sides; any other difference still shows."""
    from crmops.engines.base import Fingerprint, TableFingerprint

    old = Fingerprint("postgresql", tables={"pay": TableFingerprint(1000, "a"), "pay_2024": TableFingerprint(600, "b"),
                                            "pay_2025": TableFingerprint(400, "c")}, method="record-hash")
    new = Fingerprint("postgresql", tables={"pay": TableFingerprint(1000, "a")}, method="record-hash",
                      partitions={"pay_2024": "pay", "pay_2025": "pay"})
    assert old.compare(new) == []
    assert Fingerprint.from_dict(new.to_dict()) == new
    short = Fingerprint("postgresql", tables={"pay": TableFingerprint(999, "d")}, method="record-hash",
                        partitions={"pay_2024": "pay"})
    assert [(d.name, d.reason) for d in old.compare(short)] == [("pay", "row count differs"),
                                                                ("pay_2025", "table missing")]
