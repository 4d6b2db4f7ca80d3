"""A restored table whose foreign key points at a table the target lacks: the same result on both engines.

`restore --tables contacts` into a database without `accounts` restores `contacts` with
its rows, makes no key that would point at nothing, and names each key left out with the
`--tables` that brings it (`--json`: constraints_left_out). A key to a table the target
has is made and checked. Everything not named is compared with a native digest before
and after.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from sqlalchemy.engine import make_url

from tests.matrix.digest import native_digest
from tests.services.test_backup_restore import write_config
from tests.services.test_restore_scope import run

SCHEMA = [
    "CREATE TABLE accounts (id int PRIMARY KEY, name varchar(40) NOT NULL)",
    "CREATE TABLE contacts (id int PRIMARY KEY, account_id int, name varchar(40), "
    "CONSTRAINT contacts_account_fk FOREIGN KEY (account_id) REFERENCES accounts (id))",
    "CREATE TABLE others (id int PRIMARY KEY, body varchar(40))",
    "INSERT INTO accounts SELECT n, concat('acct ', n) FROM {series}",
    "INSERT INTO contacts SELECT n, 1 + n % 20, concat('contact ', n) FROM {series}",
    "INSERT INTO others SELECT n, concat('other ', n) FROM {series}",
]
SERIES = {"pg": "generate_series(1, 50) n", "mysql": "(SELECT seq AS n FROM seq_1_to_50) s"}


def execute(url: str, statements: list[str]) -> list[Any]:
    """Run statements on url; the last one's rows."""
    rows: list[Any] = []
    if url.startswith("postgresql"):
        with psycopg.connect(url, autocommit=True) as conn:
            for sql in statements:
                cur = conn.execute(sql)
                rows = cur.fetchall() if cur.description else []
        return rows
    u = make_url(url)
    conn = pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
                           database=u.database, autocommit=True)
    try:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
                rows = list(cur.fetchall())
    finally:
        conn.close()
    return rows


def foreign_keys(url: str, table: str) -> list[str]:
    if url.startswith("postgresql"):
        return [r[0] for r in execute(url, [f"SELECT conname FROM pg_constraint WHERE contype = 'f' "
                                            f"AND conrelid = 'public.{table}'::regclass"])]
    return [r[0] for r in execute(url, [f"SELECT constraint_name FROM information_schema.referential_constraints "
                                        f"WHERE constraint_schema = DATABASE() AND table_name = '{table}'"])]


@pytest.fixture(params=["pg", "mysql"])
def crm(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """A source with accounts <- contacts and a snapshot of it; make() gives fresh databases."""
    kind = request.param
    factory: Callable[[], str] = request.getfixturevalue(f"{kind}_url_factory")
    src = factory()
    execute(src, [s.format(series=SERIES[kind]) for s in SCHEMA])
    config = write_config(tmp_path, src)
    run(config, "repo", "init")
    snap = json.loads(run(config, "backup").stdout)["snapshot_id"]
    return {"kind": kind, "src": src, "config": config, "snap": snap, "make": factory}


def _target_without_accounts(crm: dict[str, Any]) -> str:
    dst = crm["make"]()
    series = SERIES[crm["kind"]]
    execute(dst, ["CREATE TABLE others (id int PRIMARY KEY, body varchar(40))",
                  f"INSERT INTO others SELECT n, concat('mine ', n) FROM {series}",
                  "CREATE VIEW other_bodies AS SELECT body FROM others"])
    return dst


def test_named_table_whose_parent_is_missing_comes_back_without_a_dangling_key(crm: dict[str, Any]) -> None:
    config, snap = crm["config"], crm["snap"]
    dst = _target_without_accounts(crm)
    before = native_digest(dst, skip=("contacts",))
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "contacts", "--force").stdout)
    assert out["created"] == [("public." if crm["kind"] == "pg" else "") + "contacts"]
    left = out["constraints_left_out"]
    assert [(k["constraint"], k["references"].removeprefix("public."), k["hint"]) for k in left] == [
        ("contacts_account_fk", "accounts", "--tables accounts,contacts")]
    assert execute(dst, ["SELECT count(*) FROM contacts"])[0][0] == 50
    assert foreign_keys(dst, "contacts") == []
    assert native_digest(dst, skip=("contacts",)) == before
    # the human line says which key and how to get it
    again = crm["make"]()
    execute(again, ["CREATE TABLE others (id int PRIMARY KEY)", "INSERT INTO others VALUES (1)"])
    human = run(config, "restore", snap, "--to", again, "--tables", "contacts", "--force", json_output=False)
    assert "foreign key contacts_account_fk of " in human.stdout
    assert "accounts is not in the target" in human.stdout
    assert "--tables accounts,contacts" in human.stdout.replace("\n", " ")
    # both tables: the key comes with them and is checked
    both = _target_without_accounts(crm)
    out = json.loads(run(config, "restore", snap, "--to", both, "--tables", "accounts,contacts", "--force").stdout)
    assert out["constraints_left_out"] == [] and foreign_keys(both, "contacts") == ["contacts_account_fk"]


def test_key_to_a_parent_the_target_has_is_made_and_checked(crm: dict[str, Any]) -> None:
    config, snap = crm["config"], crm["snap"]
    dst = crm["make"]()
    series = SERIES[crm["kind"]]
    execute(dst, ["CREATE TABLE accounts (id int PRIMARY KEY, name varchar(40) NOT NULL)",
                  f"INSERT INTO accounts SELECT n, concat('live ', n) FROM {series}",
                  "CREATE TABLE others (id int PRIMARY KEY)"])
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "contacts", "--force").stdout)
    assert out["constraints_left_out"] == [] and foreign_keys(dst, "contacts") == ["contacts_account_fk"]
    # a parent that lacks rows the restored table points at: refused, nothing changed
    short = crm["make"]()
    execute(short, ["CREATE TABLE accounts (id int PRIMARY KEY, name varchar(40) NOT NULL)",
                    "INSERT INTO accounts VALUES (1, 'only one')"])
    before = native_digest(short)
    r = run(config, "restore", snap, "--to", short, "--tables", "contacts", "--force", check=False)
    assert r.returncode == 15 and "contacts_account_fk" in r.stderr and "nothing was changed" in r.stderr
    assert native_digest(short) == before


def test_into_an_empty_database_and_beside_with_as(crm: dict[str, Any]) -> None:
    config, snap = crm["config"], crm["snap"]
    empty = crm["make"]()
    out = json.loads(run(config, "restore", snap, "--to", empty, "--tables", "contacts").stdout)
    assert [k["constraint"] for k in out["constraints_left_out"]] == ["contacts_account_fk"]
    assert foreign_keys(empty, "contacts") == [] and execute(empty, ["SELECT count(*) FROM contacts"])[0][0] == 50
    dst = _target_without_accounts(crm)
    before = native_digest(dst)
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "contacts", "--as", "r_").stdout)
    assert [(k["constraint"], k["reason"]) for k in out["constraints_left_out"]] == [
        ("contacts_account_fk", "copies restored with --as carry no foreign keys")]
    assert foreign_keys(dst, "r_contacts") == []
    assert native_digest(dst, skip=("r_contacts",)) == before


def test_a_key_left_dangling_by_the_disaster_is_not_checked_and_named(crm: dict[str, Any]) -> None:
    """The issue's case: accounts dropped in the target (PostgreSQL: CASCADE drops the key; MariaDB with
    FOREIGN_KEY_CHECKS=0 keeps it, pointing at nothing); contacts is replaced all the same."""
    config, snap = crm["config"], crm["snap"]
    dst = crm["make"]()
    execute(dst, [s.format(series=SERIES[crm["kind"]]) for s in SCHEMA])
    if crm["kind"] == "pg":
        execute(dst, ["DROP TABLE accounts CASCADE"])
    else:
        execute(dst, ["SET FOREIGN_KEY_CHECKS = 0", "DROP TABLE accounts"])
    execute(dst, ["DELETE FROM contacts WHERE id > 10"])
    before = native_digest(dst, skip=("contacts",))
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "contacts", "--force").stdout)
    assert out["replaced"] and [k["constraint"] for k in out["constraints_left_out"]] == ["contacts_account_fk"]
    assert execute(dst, ["SELECT count(*) FROM contacts"])[0][0] == 50
    assert native_digest(dst, skip=("contacts",)) == before
