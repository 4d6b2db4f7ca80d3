"""The safety snapshot of a damaged database: the very moment a restore is needed.

A table three views read is dropped by mistake (MariaDB keeps the views, invalid;
PostgreSQL needs CASCADE, which drops them). `restore --tables … --force` must still
take its pre-restore snapshot, and that snapshot must restore the database as it was,
invalid views included. When the snapshot cannot be taken at all, nothing is changed
(exit 62) and --no-safety-snapshot is offered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.matrix.digest import native_digest
from tests.services.test_backup_restore import write_config
from tests.services.test_restore_boundary import SCHEMA, SERIES, execute
from tests.services.test_restore_scope import run

VIEWS = ["CREATE VIEW busy AS SELECT a.name, count(*) AS n FROM accounts a JOIN contacts c ON c.account_id = a.id "
         "GROUP BY a.name",
         "CREATE VIEW account_names AS SELECT id, name FROM accounts",
         "CREATE VIEW big_accounts AS SELECT id FROM accounts WHERE id > 10",
         "CREATE VIEW contact_names AS SELECT name FROM contacts"]
DAMAGED = ("busy", "account_names", "big_accounts")


@pytest.fixture(params=["pg", "mysql"])
def damaged(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """A CRM with a snapshot, then accounts dropped by mistake in the live database."""
    kind = request.param
    src = request.getfixturevalue(f"{kind}_url_factory")()
    execute(src, [s.format(series=SERIES[kind]) for s in SCHEMA] + VIEWS)
    config = write_config(tmp_path, src)
    run(config, "repo", "init")
    snap = json.loads(run(config, "backup").stdout)["snapshot_id"]
    if kind == "pg":  # PostgreSQL refuses without CASCADE, which takes the views and the key along
        execute(src, ["DROP TABLE accounts CASCADE"])
    else:
        execute(src, ["SET FOREIGN_KEY_CHECKS = 0", "DROP TABLE accounts"])
    return {"kind": kind, "src": src, "config": config, "snap": snap, "tmp": tmp_path,
            "make": request.getfixturevalue(f"{kind}_url_factory")}


def _views(url: str) -> list[str]:
    if url.startswith("postgresql"):
        return sorted(r[0] for r in execute(url, ["SELECT viewname FROM pg_views WHERE schemaname = 'public'"]))
    return sorted(r[0] for r in execute(url, ["SELECT table_name FROM information_schema.views "
                                              "WHERE table_schema = DATABASE()"]))


def test_restore_tables_after_a_drop_takes_its_safety_snapshot(damaged: dict[str, Any]) -> None:
    config, snap, src = damaged["config"], damaged["snap"], damaged["src"]
    views_before = _views(src)
    assert views_before == (sorted([*DAMAGED, "contact_names"]) if damaged["kind"] == "mysql" else ["contact_names"])
    before = native_digest(src, skip=("accounts", *DAMAGED))
    rows_then = {k: v for k, v in native_digest(src, skip=DAMAGED).items() if k != "schema"}
    out = json.loads(run(config, "restore", snap, "--to", src, "--tables", "accounts", "--force").stdout)
    assert out["created"] and out["safety_snapshot"]
    assert execute(src, ["SELECT count(*) FROM busy" if damaged["kind"] == "mysql"
                         else "SELECT count(*) FROM accounts"])[0][0] > 0  # MariaDB: the views work again
    assert native_digest(src, skip=("accounts", *DAMAGED)) == before
    # the safety snapshot restores the damaged database as it was: the invalid views included
    again = damaged["make"]()
    run(config, "restore", out["safety_snapshot"], "--to", again)
    assert _views(again) == views_before
    assert execute(again, ["SELECT count(*) FROM contacts"])[0][0] == 50
    assert {k: v for k, v in native_digest(again, skip=DAMAGED).items() if k != "schema"} == rows_then
    if damaged["kind"] == "mysql":
        assert "accounts" not in [r[0] for r in execute(again, ["SHOW FULL TABLES WHERE table_type = 'BASE TABLE'"])]


def test_backup_of_the_damaged_database_names_the_views(damaged: dict[str, Any]) -> None:
    if damaged["kind"] != "mysql":
        pytest.skip("PostgreSQL drops dependent views with the table: nothing is left damaged")
    r = run(damaged["config"], "backup", json_output=False)
    for view in DAMAGED:
        assert f"view {view} cannot be opened" in r.stderr
    assert "it reads accounts, which is gone" in r.stderr


def test_no_safety_snapshot_stops_before_any_change_and_offers_the_flag(damaged: dict[str, Any]) -> None:
    """A target whose dump fails for a reason crmops cannot work around: a role that cannot read a table
    (PostgreSQL) or take the dump's lock (MariaDB: no RELOAD privilege)."""
    kind, config, snap, src = damaged["kind"], damaged["config"], damaged["snap"], damaged["src"]
    u = make_url(src)
    name = f"limited_{u.database[-8:]}"
    if kind == "pg":
        execute(src, [f"CREATE ROLE {name} LOGIN PASSWORD 'limited-pw'", f"GRANT ALL ON SCHEMA public TO {name}",
                      f"ALTER TABLE contacts OWNER TO {name}", "CREATE TABLE secret (id int)",
                      "INSERT INTO secret VALUES (1)"])
    else:
        execute(src, [f"CREATE USER '{name}'@'%' IDENTIFIED BY 'limited-pw'",
                      f"GRANT ALL ON `{u.database}`.* TO '{name}'@'%'"])
    limited = u.set(username=name, password="limited-pw").render_as_string(hide_password=False)
    try:
        _refused_then_forced(config, snap, src, limited)
    finally:  # the account is the server's, not the database's: it goes with the test
        execute(src, [f"REASSIGN OWNED BY {name} TO CURRENT_USER", f"DROP OWNED BY {name}", f"DROP ROLE {name}"]
                if kind == "pg" else [f"DROP USER '{name}'@'%'"])


def _refused_then_forced(config: Path, snap: str, src: str, limited: str) -> None:
    before = native_digest(src, skip=("accounts", *DAMAGED))
    r = run(config, "restore", snap, "--to", limited, "--tables", "contacts", "--force", check=False)
    assert r.returncode == 62, r.stderr
    assert "pre-restore snapshot" in r.stderr and "nothing was changed" in r.stderr
    assert "--no-safety-snapshot" in r.stderr and "Traceback" not in r.stderr
    assert native_digest(src, skip=("accounts", *DAMAGED)) == before  # nothing was changed, truly
    execute(src, ["DELETE FROM contacts WHERE id > 40"])
    before = native_digest(src, skip=("accounts", "contacts", *DAMAGED))
    out = json.loads(run(config, "restore", snap, "--to", limited, "--tables", "contacts", "--force",
                         "--no-safety-snapshot").stdout)
    assert out["safety_snapshot"] is None and out["replaced"]
    assert execute(src, ["SELECT count(*) FROM contacts"])[0][0] == 50
    assert native_digest(src, skip=("accounts", "contacts", *DAMAGED)) == before
    usage = run(config, "restore", snap, "--to", limited, "--tables", "contacts", "--no-safety-snapshot",
                check=False)
    assert usage.returncode == 2 and "--force" in usage.stderr
