"""The undo sandbox holds only the tables its rows can reach, read from the dump before any restore.

On a schema of hundreds of tables, restoring all of them into the sandbox was most of an
undo's time; these tests pin which tables the sandbox gets (PostgreSQL dumps).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from crmops.config import UndoRelation
from crmops.engines.postgres import PostgresEngine, libpq_env
from crmops.undo.closure import sandbox_tables

SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text);
CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers(id));
CREATE TABLE order_items (id int PRIMARY KEY, order_id int REFERENCES orders(id));
CREATE TABLE vendors (id int PRIMARY KEY);
CREATE TABLE purchase (id int PRIMARY KEY, vendor_id int REFERENCES vendors(id));
CREATE TABLE notes (id int PRIMARY KEY, customer_id int, body text);
CREATE TABLE "Legacy Links" (id int PRIMARY KEY, "order ref" int REFERENCES orders(id));
CREATE TABLE tags (id int PRIMARY KEY, label text);
CREATE TABLE tagged (id int PRIMARY KEY, tag int);
CREATE TABLE audit (id int PRIMARY KEY, what text);
"""


def describe(pg_url: str, tmp_path: Path) -> tuple[str, str]:
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(SCHEMA)
    engine = PostgresEngine(pg_url)
    dump = tmp_path / "dump.pgc"
    subprocess.run(["pg_dump", "-Fc", "-f", str(dump)], env=libpq_env(engine.url), check=True)
    return engine.describe_archive(dump)


def test_the_sandbox_holds_what_relations_reach(pg_url: str, tmp_path: Path) -> None:
    toc, ddl = describe(pg_url, tmp_path)
    # foreign keys both ways and transitively, a quoted name, and notes.customer_id (no foreign
    # key, named like one) so the plan can still warn about it; never vendors, tags, audit
    assert sandbox_tables(toc, ddl, "orders") == ["public.Legacy Links", "public.customers", "public.notes",
                                                  "public.order_items", "public.orders"]
    assert sandbox_tables(toc, ddl, "audit") == ["public.audit"]
    # a relation only the configuration declares joins its tables too
    related = [UndoRelation(table="tagged", column="tag", references="tags.id")]
    assert sandbox_tables(toc, ddl, "tags", related) == ["public.tagged", "public.tags"]
    assert sandbox_tables(toc, ddl, "tags") == ["public.tags"]
    # a table the dump lacks: no narrowing (the whole restore lets selection name the near misses)
    assert sandbox_tables(toc, ddl, "custmers") is None


# -- MariaDB / MySQL: the closure read from the staged dump's CREATE TABLE statements ---------------

MYSQL_SCHEMA = [
    "CREATE TABLE customers (id int PRIMARY KEY, name varchar(50))",
    "CREATE TABLE orders (id int PRIMARY KEY, customer_id int, FOREIGN KEY (customer_id) REFERENCES customers(id))",
    "CREATE TABLE order_items (id int PRIMARY KEY, order_id int, FOREIGN KEY (order_id) REFERENCES orders(id))",
    "CREATE TABLE vendors (id int PRIMARY KEY)",
    "CREATE TABLE purchase (id int PRIMARY KEY, vendor_id int, FOREIGN KEY (vendor_id) REFERENCES vendors(id))",
    "CREATE TABLE notes (id int PRIMARY KEY, customer_id int, body text)",
    "CREATE TABLE `legacy links` (id int PRIMARY KEY, `order ref` int, "
    "FOREIGN KEY (`order ref`) REFERENCES orders(id))",
    "CREATE TABLE audit (id int PRIMARY KEY, what text)",
    "INSERT INTO customers VALUES (1, 'Ada'), (2, 'Bo')",
    "INSERT INTO orders VALUES (10, 1), (11, 1), (12, 2)",
    "INSERT INTO order_items VALUES (100, 10), (101, 11), (102, 12)",
    "INSERT INTO vendors VALUES (5)",
    "INSERT INTO purchase VALUES (50, 5)",
    "INSERT INTO notes VALUES (1, 1, 'likes tea')",
    "INSERT INTO `legacy links` VALUES (7, 12)",
    "INSERT INTO audit VALUES (1, 'created')",
]
#: what an undo of customers (or orders) can reach; vendors, purchase and audit are never restored
MYSQL_CLOSURE = ["customers", "legacy links", "notes", "order_items", "orders"]


def _mysql_backup(url: str, tmp_path: Path) -> Path:
    import pymysql
    from sqlalchemy.engine import make_url

    from tests.verify.verify_helpers import ok, run, write_config

    u = make_url(url)
    conn = pymysql.connect(host=u.host, port=u.port, user=u.username, password=u.password, database=u.database,
                           autocommit=True)
    with conn.cursor() as cur:
        for stmt in MYSQL_SCHEMA:
            cur.execute(stmt)
    conn.close()
    config = write_config(tmp_path, url, attachments=False)
    ok(run(config, "repo", "init"))
    ok(run(config, "--json", "backup"))
    return config


@pytest.mark.mysql
def test_mariadb_closure_read_from_the_dump(mysql_url: str, tmp_path: Path) -> None:
    from crmops.repository import open_repository
    from crmops.services.restore import stage
    from crmops.services.sources import resolve
    from crmops.undo.closure import mysql_sandbox_tables
    from tests.verify.verify_helpers import load

    cfg = load(_mysql_backup(mysql_url, tmp_path))
    repo = open_repository(cfg)
    with stage(repo, resolve(cfg, repo, "latest"), files=False) as staged:
        assert mysql_sandbox_tables(staged, "orders") == MYSQL_CLOSURE
        assert mysql_sandbox_tables(staged, "vendors") == ["purchase", "vendors"]
        assert mysql_sandbox_tables(staged, "audit") == ["audit"]
        related = [UndoRelation(table="audit", column="id", references="vendors.id")]
        assert mysql_sandbox_tables(staged, "audit", related) == ["audit", "purchase", "vendors"]
        assert mysql_sandbox_tables(staged, "custmers") is None


def test_mariadb_schema_found_across_piece_boundaries() -> None:
    """The CREATE TABLE statements are found however the stream is cut into pieces."""
    from crmops.engines.mysql_tables import dump_schema

    dump = (b"-- MariaDB dump\n/*!40101 SET NAMES utf8mb4 */;\n"
            b"CREATE TABLE `a` (\n  `id` int(11) NOT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB;\n"
            b"INSERT INTO `a` VALUES (1),(2);\n"
            b"CREATE TABLE `b``q` (\n  `id` int(11) NOT NULL,\n  `a_id` int(11) DEFAULT NULL,\n"
            b"  CONSTRAINT `fk` FOREIGN KEY (`a_id`) REFERENCES `a` (`id`)\n) ENGINE=InnoDB;\n"
            b"INSERT INTO `b``q` VALUES (1,1);\n")
    whole = dump_schema([dump])
    assert whole == (["a", "b`q"], [("b`q", "a")], {"a": ["id"], "b`q": ["id", "a_id"]})
    for size in (1, 7, 15, 16, 40):
        assert dump_schema([dump[i:i + size] for i in range(0, len(dump), size)]) == whole


@pytest.mark.docker
@pytest.mark.mysql
def test_mariadb_undo_sandbox_holds_only_the_closure_and_the_undo_is_right(
        mysql_url: str, tmp_path: Path, docker_client) -> None:  # type: ignore[no-untyped-def]
    import pymysql
    from sqlalchemy.engine import make_url

    from crmops.repository import open_repository
    from crmops.undo.source import from_snapshot
    from tests.undo.undo_helpers import native_digest
    from tests.verify.verify_helpers import load, ok, run

    config = _mysql_backup(mysql_url, tmp_path)
    cfg = load(config)
    steps: list[str] = []
    with from_snapshot(cfg, "latest", open_repository(cfg), steps.append, table="customers") as past:
        u = make_url(past.url)
        conn = pymysql.connect(host=u.host, port=u.port, user=u.username, password=u.password, database=u.database)
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            assert sorted(r[0] for r in cur.fetchall()) == MYSQL_CLOSURE  # vendors, purchase, audit never came
            cur.execute("SELECT id FROM order_items ORDER BY id")
            assert [r[0] for r in cur.fetchall()] == [100, 101, 102]
        conn.close()
    assert any("holds the 5 tables customers can reach" in s for s in steps)

    # the undo through that sandbox: Ada's deleted orders come back, nothing outside moves
    u = make_url(mysql_url)
    conn = pymysql.connect(host=u.host, port=u.port, user=u.username, password=u.password, database=u.database,
                           autocommit=True)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM order_items WHERE order_id IN (10, 11)")
        cur.execute("DELETE FROM orders WHERE customer_id = 1")
    untouched = {t: d for t, d in native_digest(mysql_url).items() if t in ("vendors", "purchase", "audit")}
    plan = ok(run(config, "--json", "undo", "--table", "orders", "--where", "customer_id = 1", "--dry-run"))
    assert sorted((r["table"], r["key"]["id"]) for r in plan["plan"]["rows"] if r["action"] == "insert") == [
        ("order_items", 100), ("order_items", 101), ("orders", 10), ("orders", 11)]
    ok(run(config, "--json", "undo", "--table", "orders", "--where", "customer_id = 1", "--apply"))
    with conn.cursor() as cur:
        cur.execute("SELECT id, order_id FROM order_items ORDER BY id")
        assert cur.fetchall() == ((100, 10), (101, 11), (102, 12))
    conn.close()
    assert {t: d for t, d in native_digest(mysql_url).items() if t in untouched} == untouched
