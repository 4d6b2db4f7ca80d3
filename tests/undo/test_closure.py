"""The undo sandbox holds only the tables its rows can reach, read from the dump before any restore.

On a schema of hundreds of tables, restoring all of them into the sandbox was most of an
undo's time; these tests pin which tables the sandbox gets (PostgreSQL dumps).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg

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
