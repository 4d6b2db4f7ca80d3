"""undo on the shapes real CRM schemas have: a partitioned table, link tables without any key.

A customer is deleted and the database cascades: its payments (spread over the partitions
of a partitioned table on PostgreSQL, one PARTITION BY table on MariaDB), its rows in a
key-less link table (one link twice: duplicates count), in a key-less table linked only
by configuration, and in a table whose only key is a unique index. The past is a copy of
the database taken before the deletion. The undo brings every deleted row back once, says
once per key-less table how many rows it re-inserts, and moves no row of any other table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from crmops.engines.connect import connect_engine
from crmops.errors import DatabaseError, UndoConflict
from crmops.repository import open_repository
from crmops.undo.source import PastState
from crmops.undo.workflow import UndoRequest, undo
from tests.matrix.digest import native_digest
from tests.verify.verify_helpers import load, ok, run, write_config

PG_SCHEMA = [
    "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE tags (id int PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE pay (id int, at date, cust_id int NOT NULL REFERENCES customers (id) ON DELETE CASCADE, "
    "amt int DEFAULT 7, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)",
    "CREATE TABLE pay_2024 PARTITION OF pay FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
    "CREATE TABLE pay_2025 PARTITION OF pay FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
    "CREATE TABLE pay_other PARTITION OF pay DEFAULT",
    "CREATE TABLE customer_tags (customer_id int REFERENCES customers (id) ON DELETE CASCADE, "
    "tag_id int REFERENCES tags (id))",
    "CREATE TABLE mentions (customer_id int, said text)",  # no foreign key: undo.relations names it
    "CREATE TABLE ext_refs (customer_id int NOT NULL REFERENCES customers (id) ON DELETE CASCADE, "
    "ref text NOT NULL, UNIQUE (customer_id, ref))",
    "CREATE TABLE audit_trail (at int, what text)",  # key-less, never reached: no warning for it
]
MY_SCHEMA = [
    "CREATE TABLE customers (id int PRIMARY KEY, name varchar(40) NOT NULL)",
    "CREATE TABLE tags (id int PRIMARY KEY, name varchar(40) NOT NULL)",
    # InnoDB has no foreign keys on partitioned tables: undo.relations names this one
    "CREATE TABLE pay (id int NOT NULL, at date NOT NULL, cust_id int NOT NULL, amt int DEFAULT 7, "
    "PRIMARY KEY (id, at)) PARTITION BY RANGE (YEAR(at)) (PARTITION p2024 VALUES LESS THAN (2025), "
    "PARTITION p2025 VALUES LESS THAN (2026), PARTITION pmax VALUES LESS THAN MAXVALUE)",
    "CREATE TABLE customer_tags (customer_id int, tag_id int, "
    "FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE CASCADE, FOREIGN KEY (tag_id) REFERENCES tags (id))",
    "CREATE TABLE mentions (customer_id int, said varchar(40))",
    "CREATE TABLE ext_refs (customer_id int NOT NULL, ref varchar(40) NOT NULL, UNIQUE (customer_id, ref), "
    "FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE CASCADE)",
    "CREATE TABLE audit_trail (at int, what varchar(40))",
]
RELATIONS = {"postgresql": [{"table": "mentions", "column": "customer_id", "references": "customers.id"}],
             "mysql": [{"table": "mentions", "column": "customer_id", "references": "customers.id"},
                       {"table": "pay", "column": "cust_id", "references": "customers.id"}]}
GONE = (3, 4, 7)  # the customers deleted
KEYLESS = ("customer_tags", "mentions", "ext_refs", "audit_trail")


def _fill(url: str, kind: str) -> None:
    engine = connect_engine(url)
    try:
        with engine.begin() as conn:
            for stmt in PG_SCHEMA if kind == "postgresql" else MY_SCHEMA:
                conn.execute(sa.text(stmt))
            conn.execute(sa.text("INSERT INTO customers VALUES (:i, :n)"),
                         [{"i": i, "n": f"customer {i}"} for i in range(1, 11)])
            conn.execute(sa.text("INSERT INTO tags VALUES (:i, :n)"), [{"i": i, "n": f"tag {i}"} for i in range(1, 4)])
            # 1,000 payments over both years and later ones (the default partition)
            conn.execute(sa.text("INSERT INTO pay (id, at, cust_id, amt) VALUES (:i, :at, :c, :a)"),
                         [{"i": i, "at": f"{2024 + i % 3}-{1 + i % 12:02d}-{1 + i % 28:02d}", "c": 1 + i % 10,
                           "a": i} for i in range(1, 1001)])
            links = [{"c": c, "t": t} for c in range(1, 11) for t in range(1, 4) if (c + t) % 2]
            links += [{"c": 3, "t": 2}, {"c": 3, "t": 2}, {"c": 5, "t": 2}]  # the same link more than once
            conn.execute(sa.text("INSERT INTO customer_tags VALUES (:c, :t)"), links)
            conn.execute(sa.text("INSERT INTO mentions VALUES (:c, :s)"),
                         [{"c": c, "s": s} for c in range(1, 11) for s in ("called", "called", "mailed")])
            conn.execute(sa.text("INSERT INTO mentions VALUES (NULL, 'nobody')"))
            conn.execute(sa.text("INSERT INTO ext_refs VALUES (:c, :r)"),
                         [{"c": c, "r": f"X-{c}-{n}"} for c in range(1, 11) for n in range(2)])
            conn.execute(sa.text("INSERT INTO audit_trail VALUES (:a, 'x')"), [{"a": a} for a in range(20)])
    finally:
        engine.dispose()


def _rows(url: str, table: str) -> Counter[tuple[Any, ...]]:
    engine = connect_engine(url)
    try:
        with engine.connect() as conn:
            return Counter(tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table}")))
    finally:
        engine.dispose()


def _sql(url: str, *statements: str) -> None:
    engine = connect_engine(url)
    try:
        with engine.begin() as conn:
            for stmt in statements:
                conn.execute(sa.text(stmt))
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_undo_partitioned_and_keyless_tables(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    factory: Callable[[], str] = request.getfixturevalue("pg_url_factory" if kind == "postgresql"
                                                         else "mysql_url_factory")
    past_url, live_url = factory(), factory()
    _fill(past_url, kind)
    _fill(live_url, kind)
    config = write_config(tmp_path, live_url, attachments=False)
    data = yaml.safe_load(config.read_text())
    data["undo"] = {"relations": RELATIONS[kind]}
    config.write_text(yaml.safe_dump(data))
    ok(run(config, "repo", "init"))
    gone = ", ".join(map(str, GONE))
    # the deletion: the database cascades over payments, links and unique-keyed refs; the CRM
    # itself removes the mentions, all but one copy of one of them
    _sql(live_url, f"DELETE FROM customers WHERE id IN ({gone})",
         f"DELETE FROM mentions WHERE customer_id IN ({gone})", "INSERT INTO mentions VALUES (3, 'called')")
    if kind == "mysql":
        _sql(live_url, f"DELETE FROM pay WHERE cust_id IN ({gone})")
    others = ("tags", "audit_trail")
    before = native_digest(live_url)
    cfg = load(config)
    repo = open_repository(cfg)

    @contextmanager
    def past() -> Iterator[PastState]:
        yield PastState(url=past_url, engine=kind, kind="snapshot", label="copy before the deletion")

    plan = undo(cfg, UndoRequest(table="customers", where=f"id IN ({gone})"), source=past, repo=repo).to_dict()
    tables = {t["table"]: t for t in plan["plan"]["tables"]}
    assert not [t for t in tables if t.startswith("pay_")]  # the partitioned table is one table
    deleted_pay = sum(n for row, n in _rows(past_url, "pay").items() if row[2] in GONE)
    assert tables["pay"]["insert"] == deleted_pay and tables["pay"]["identical"] == 0
    assert tables["customer_tags"]["insert"] == sum(n for r, n in _rows(past_url, "customer_tags").items()
                                                    if r[0] in GONE)
    assert (tables["mentions"]["insert"], tables["mentions"]["identical"]) == (3 * 3 - 1, 1)
    assert tables["ext_refs"]["insert"] == 2 * len(GONE)
    warned = [w for w in plan["plan"]["warnings"] if "no primary key" in w]
    assert len(warned) == 3, warned  # once per key-less table with rows to bring back, none for audit_trail
    assert any(w.startswith("table mentions has no primary key") and "8 to re-insert, 1 identical" in w
               for w in warned)
    assert any(w.startswith("table ext_refs") and "unique index" in w for w in warned)
    assert plan["plan"]["summary"]["conflicts"] == 0
    assert native_digest(live_url) == before  # a dry run writes nothing

    done = undo(cfg, UndoRequest(table="customers", where=f"id IN ({gone})", apply=True), source=past, repo=repo)
    assert done.applied and done.written is not None
    assert done.written.rows() == plan["plan"]["summary"]["insert"]
    for table in ("customers", "pay", "customer_tags", "ext_refs"):
        assert _rows(live_url, table) == _rows(past_url, table), table
    want = _rows(past_url, "mentions")
    assert _rows(live_url, "mentions") == want  # the copy left live and the ones brought back
    if kind == "postgresql":
        for part in ("pay_2024", "pay_2025", "pay_other"):
            assert _rows(live_url, part) == _rows(past_url, part), part
    after = native_digest(live_url)
    assert {k: after[k] for k in after if k.split(".")[-1] in others} == \
        {k: before[k] for k in before if k.split(".")[-1] in others}
    assert after["schema"] == before["schema"]

    # all back: the same undo again has nothing to write, every row identical
    again = undo(cfg, UndoRequest(table="customers", where=f"id IN ({gone})"), source=past, repo=repo).to_dict()
    assert again["plan"]["summary"]["insert"] == 0
    assert not [w for w in again["plan"]["warnings"] if "no primary key" in w]

    # naming a partition: its rows are the partitioned table's (PostgreSQL); one payment deleted since
    if kind == "postgresql":
        _sql(live_url, "DELETE FROM pay WHERE id = 4")
        one = undo(cfg, UndoRequest(table="pay_2025", where="id = 4", follow_fks=False, apply=True), source=past,
                   repo=repo).to_dict()
        assert [(r["table"], r["action"]) for r in one["plan"]["rows"]] == [("pay", "insert")]
        assert _rows(live_url, "pay_2025") == _rows(past_url, "pay_2025")


def test_pg_a_database_rule_the_plan_does_not_check_is_not_blamed_on_colleagues(pg_url_factory: Callable[[], str],
                                                                              tmp_path: Path) -> None:
    past_url, live_url = pg_url_factory(), pg_url_factory()
    _fill(past_url, "postgresql")
    _fill(live_url, "postgresql")
    _sql(live_url, "DELETE FROM customers WHERE id = 3", "ALTER TABLE customer_tags ADD CHECK (tag_id <> 2)"
                   " NOT VALID")
    config = write_config(tmp_path, live_url, attachments=False)
    ok(run(config, "repo", "init"))
    cfg = load(config)
    before = native_digest(live_url)

    @contextmanager
    def past() -> Iterator[PastState]:
        yield PastState(url=past_url, engine="postgresql", kind="snapshot", label="copy before the deletion")

    with pytest.raises(Exception) as failed:
        undo(cfg, UndoRequest(table="customers", where="id = 3", apply=True), source=past,
             repo=open_repository(cfg))
    assert "nothing was written" in str(failed.value) or isinstance(failed.value, UndoConflict)
    hint = getattr(failed.value, "hint", "") or ""
    assert "changed since" not in hint and "dry run" in hint
    assert native_digest(live_url) == before

    # a trigger that silently drops some of the rows: the undo fails, nothing written, instead of
    # saying it wrote them all
    _sql(live_url, "ALTER TABLE customer_tags DROP CONSTRAINT customer_tags_tag_id_check",
         "CREATE FUNCTION drop_tag_two() RETURNS trigger LANGUAGE plpgsql AS "
         "$$ BEGIN IF NEW.tag_id = 2 THEN RETURN NULL; END IF; RETURN NEW; END $$",
         "CREATE TRIGGER drop_tag_two BEFORE INSERT ON customer_tags FOR EACH ROW EXECUTE FUNCTION drop_tag_two()")
    before = native_digest(live_url)
    with pytest.raises(DatabaseError) as dropped:
        undo(cfg, UndoRequest(table="customers", where="id = 3", apply=True), source=past,
             repo=open_repository(cfg))
    assert "customer_tags kept" in dropped.value.message and "nothing was written" in dropped.value.message
    assert native_digest(live_url) == before
