"""Polymorphic relations in undo.relations, and the relation guesser's ranked hints.

A CRM without foreign keys links activities to customers or deals through a type column
and an id column. Undo follows such a relation only for rows of its type: deleting
customer 3 brings back its activities, not those of deal 3. The guesser names the
table whose key the column matches (deal_product.product_id -> product, never
deal_product), by name and by values, and leaves partitions of the same table alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from crmops.config import load_config
from crmops.undo.source import PastState
from crmops.undo.workflow import UndoRequest, undo
from tests.services.test_backup_restore import PASSPHRASE, write_config
from tests.services.test_restore_boundary import SERIES, execute
from tests.services.test_restore_scope import run

SCHEMA = [
    "CREATE TABLE customers (id int PRIMARY KEY, name varchar(40))",
    "CREATE TABLE deals (id int PRIMARY KEY, title varchar(40))",
    "CREATE TABLE activities (id int PRIMARY KEY, target_type varchar(20), target_id int, subject varchar(40))",
    "CREATE TABLE product (id int PRIMARY KEY, name varchar(40))",
    "CREATE TABLE deal_product (id int PRIMARY KEY, deal_id int, product_id int)",
    "CREATE TABLE payments (payment_id int PRIMARY KEY, amount int)",
    "CREATE TABLE payments_2024_03 (payment_id int PRIMARY KEY, amount int)",
    "INSERT INTO customers SELECT n, concat('customer ', n) FROM {series}",
    "INSERT INTO deals SELECT n, concat('deal ', n) FROM {series}",
    "INSERT INTO activities SELECT n, CASE WHEN n % 2 = 0 THEN 'customer' ELSE 'deal' END, 1 + n % 10, "
    "concat('call ', n) FROM {series}",
    "INSERT INTO product SELECT n, concat('product ', n) FROM {series}",
    "INSERT INTO deal_product SELECT n, 1 + n % 10, 1 + n % 7 FROM {series}",
    "INSERT INTO payments SELECT n, n FROM {series}",
    "INSERT INTO payments_2024_03 SELECT n, n FROM {series}",
    # Django's generic relation: the type is an integer content type id (7: a deal, 8: a customer)
    "CREATE TABLE thefile (id int PRIMARY KEY, content_type_id int, object_id int)",
    "INSERT INTO thefile SELECT n, 7 + n % 2, 1 + n % 5 FROM {series}",
]
RELATIONS = [
    {"table": "activities", "column": "target_id", "type_column": "target_type", "type_value": "customer",
     "references": "customers.id"},
    {"table": "activities", "column": "target_id", "type_column": "target_type", "type_value": "deal",
     "references": "deals.id"},
    {"table": "thefile", "column": "object_id", "type_column": "content_type_id", "type_value": "7",
     "references": "deals.id"},
]


@pytest.fixture(params=["pg", "mysql"])
def crm(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    kind = request.param
    factory = request.getfixturevalue(f"{kind}_url_factory")
    past, live = factory(), factory()
    for url in (past, live):
        execute(url, [s.format(series=SERIES[kind]) for s in SCHEMA])
    path = write_config(tmp_path, live)
    cfg = yaml.safe_load(path.read_text())
    cfg["undo"] = {"relations": RELATIONS}
    path.write_text(yaml.safe_dump(cfg))
    run(path, "repo", "init")
    return {"kind": kind, "past": past, "live": live, "config": path}


def _plan(crm: dict[str, Any], table: str, where: str) -> dict[str, Any]:
    import os

    os.environ["TEST_PASSPHRASE"] = PASSPHRASE
    config = load_config(crm["config"])
    past = PastState(url=crm["past"], engine="postgresql" if crm["kind"] == "pg" else "mysql",
                     kind="snapshot", label="a copy of the past")

    @contextmanager
    def source() -> Iterator[PastState]:
        yield past

    return undo(config, UndoRequest(table=table, where=where), source=source).to_dict()["plan"]


def test_polymorphic_relation_follows_only_rows_of_its_type(crm: dict[str, Any]) -> None:
    # customer 3 and its activities are deleted; deal 3's activities (same target_id) stay
    customer_acts = [r[0] for r in execute(crm["past"], [
        "SELECT id FROM activities WHERE target_type = 'customer' AND target_id = 3 ORDER BY id"])]
    assert customer_acts
    execute(crm["live"], ["DELETE FROM activities WHERE target_type = 'customer' AND target_id = 3",
                          "DELETE FROM customers WHERE id = 3"])
    plan = _plan(crm, "customers", "id = 3")
    inserts: dict[str, list[int]] = {}
    for row in plan["rows"]:
        if row["action"] == "insert":
            inserts.setdefault(row["table"], []).append(row["key"]["id"])
    assert {t: sorted(v) for t, v in inserts.items()} == {"customers": [3], "activities": customer_acts}
    assert any("where target_type = 'customer'" in r for r in plan["relations"])
    # up the other way: an activity of a deleted deal brings its deal back, not the customer of that id
    execute(crm["live"], ["DELETE FROM activities WHERE id = 5", "DELETE FROM deals WHERE id = 6"])
    plan = _plan(crm, "activities", "id = 5")
    assert sorted((r["table"], r["key"]["id"]) for r in plan["rows"] if r["action"] == "insert") == [
        ("activities", 5), ("deals", 6)]


def test_an_integer_type_column_as_django_keeps_it(crm: dict[str, Any]) -> None:
    files = [r[0] for r in execute(crm["past"], [
        "SELECT id FROM thefile WHERE content_type_id = 7 AND object_id = 4 ORDER BY id"])]
    assert files
    execute(crm["live"], ["DELETE FROM thefile WHERE content_type_id = 7 AND object_id = 4",
                          "DELETE FROM deals WHERE id = 4"])
    plan = _plan(crm, "deals", "id = 4")
    inserted = sorted((r["table"], r["key"]["id"]) for r in plan["rows"] if r["action"] == "insert")
    assert inserted == sorted([("deals", 4)] + [("thefile", f) for f in files]), inserted


def test_guesser_names_the_referenced_table_and_ranks_its_hints(crm: dict[str, Any]) -> None:
    execute(crm["live"], ["DELETE FROM deal_product WHERE id = 4"])
    plan = _plan(crm, "deal_product", "id = 4")
    warnings = "\n".join(plan["warnings"])
    assert "deal_product.product_id looks like a reference to product (" in warnings, warnings
    assert "values are keys of product" in warnings
    assert "reference to deal_product" not in warnings
    assert "deal_product.deal_id looks like a reference to deals" in warnings
    execute(crm["live"], ["DELETE FROM payments_2024_03"])
    assert not any("payments_2024_03.payment_id" in w for w in
                   _plan(crm, "payments_2024_03", "payment_id = 1")["warnings"])
    json.dumps(plan)


def test_configuration_refuses_half_a_polymorphic_relation(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 'crm.db'}")
    cfg = yaml.safe_load(path.read_text())
    cfg["undo"] = {"relations": [{"table": "activities", "column": "target_id", "type_column": "target_type",
                                  "references": "customers.id"}]}
    path.write_text(yaml.safe_dump(cfg))
    r = run(path, "config", "show", check=False, json_output=False)
    assert r.returncode == 3 and "type_column and type_value go together" in r.stderr
