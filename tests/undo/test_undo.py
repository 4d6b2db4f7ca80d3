"""crmops undo: a deleted customer comes back with what hangs on it, and nothing else moves.

The same scenario runs on SQLite, PostgreSQL 15 and MariaDB 10.11 (Docker sandboxes):
an account is deleted with its contacts, deals, activities, feedback and attachments,
colleagues keep working, then the account is brought back from the last snapshot.
One sandbox restore serves every undo of a scenario.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmops.engines.connect import connect_engine
from crmops.errors import DatabaseError, UndoConflict
from crmops.repository import open_repository
from crmops.undo.source import from_snapshot
from crmops.undo.workflow import UndoRequest, journal_path, undo
from tests.undo import undo_helpers as h
from tests.verify.verify_helpers import load, run


def scenario(tmp_path: Path, url: str) -> None:
    _, cfg, snap = h.demo_with_snapshot(tmp_path, url)
    files = tmp_path / "files"
    engine = connect_engine(url)
    with engine.begin() as conn:
        account = h.account_with_attachments(conn)
        gone = h.closure(conn, account)
        other = h.account_with_attachments(conn, skip=(account,))
        other_contact = h.ids(conn, "SELECT id FROM contacts WHERE account_id = :a AND id NOT IN :c",
                              a=other, c=gone["contacts"])[0]
        before_delete = {t: h.rows_of(conn, t, keys) for t, keys in gone.items()}
        paths = {r["storage_path"]: r["sha256"] for r in before_delete["attachments"]}
        stolen = before_delete["contacts"][0]["email"]
    assert all(gone[t] for t in ("contacts", "opportunities", "activities", "attachments"))
    counters_before = h.counters(url)

    # someone deletes the customer (the CRM removes the files too) ...
    with engine.begin() as conn:
        h.delete(conn, gone)
    for p in paths:
        (files / p).unlink()
    # ... and one of those files' names is taken since by another upload with other content
    kept_path = sorted(paths)[0]
    (files / kept_path).write_bytes(b"a colleague's new upload")
    # colleagues keep working: a new customer whose contact took a deleted contact's e-mail,
    # a renamed account, a changed phone, a new activity
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO accounts (owner_id, name, created_at) VALUES (1, 'New customer', "
                             ":t)"), {"t": before_delete["accounts"][0]["created_at"]})
        new_account = conn.execute(sa.text("SELECT id FROM accounts WHERE name = 'New customer'")).scalar_one()
        conn.execute(sa.text("INSERT INTO contacts (account_id, first_name, last_name, email, created_at) "
                             "VALUES (:a, 'Nova', 'Li', :e, :t)"),
                     {"a": new_account, "e": stolen, "t": before_delete["accounts"][0]["created_at"]})
        conn.execute(sa.text("UPDATE accounts SET name = 'Renamed by a colleague' WHERE id = :a"), {"a": other})
        conn.execute(sa.text("UPDATE contacts SET phone = '+86 139 0000 0000' WHERE id = :c"), {"c": other_contact})
        conn.execute(sa.text("INSERT INTO activities (kind, contact_id, user_id, subject, occurred_at) "
                             "VALUES ('call', :c, 2, 'colleague call', :t)"),
                     {"c": other_contact, "t": before_delete["accounts"][0]["created_at"]})
    assert new_account > account

    repo = open_repository(cfg)
    request = UndoRequest(table="accounts", where=f"id IN ({account})")
    with from_snapshot(cfg, "latest", repo) as past:
        src = lambda: h.shared(past)  # noqa: E731

        # the plan: every deleted row to re-insert, and the stolen e-mail as a conflict
        # the condition is passed through as written: % and : are the user's, not parameters
        odd = UndoRequest(table="accounts", where=f"id IN ({account}) AND name LIKE '%' AND name <> 'a :b'")
        plan = undo(cfg, odd, source=src, repo=repo).to_dict()["plan"]
        inserts: dict[str, list[int]] = {}
        for r in plan["rows"]:
            assert r["action"] == "insert", r
            inserts.setdefault(r["table"], []).append(r["key"]["id"])
        assert {t: sorted(v) for t, v in inserts.items()} == {t: v for t, v in gone.items() if v}
        assert [t["table"] for t in plan["tables"]][:2] == ["accounts", "contacts"]  # parents first
        assert [(c["table"], c["kind"]) for c in plan["conflicts"]] == [("contacts", "unique")]
        assert stolen in plan["conflicts"][0]["detail"]
        assert {a["path"]: a["status"] for a in plan["attachments"]} == {
            p: "differs" if p == kept_path else "restore" for p in paths}

        # --apply refuses, and nothing at all is written
        everything = h.native_digest(url)
        refused = undo(cfg, UndoRequest(**{**request.__dict__, "apply": True}), source=src, repo=repo)
        with pytest.raises(UndoConflict):
            refused.raise_if_refused()
        assert refused.pre_undo_snapshot is None and h.native_digest(url) == everything
        assert not (files / sorted(set(paths) - {kept_path})[0]).exists()

        # the colleague gives the new contact another address; now the undo goes through
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE contacts SET email = 'nova.li@new.example.com' WHERE account_id = :a"),
                         {"a": new_account})

        # a failure half-way (after accounts, contacts and deals went in) leaves nothing behind
        with engine.begin() as conn:
            for stmt in h.FAIL_ACTIVITIES[engine.dialect.name]:
                conn.execute(sa.text(stmt))
        everything = h.native_digest(url)
        # the trigger is named; its own text only where it cannot hold a row value (SQLite's RAISE takes a literal)
        said = {"postgresql": r"refuse_activity\(\) line \d+ at RAISE raised an error \(text withheld",
                "mysql": r"a trigger's SIGNAL raised an error \(text withheld"}.get(engine.dialect.name,
                                                                                  "activities are frozen")
        with pytest.raises((UndoConflict, DatabaseError), match=said):
            undo(cfg, UndoRequest(**{**request.__dict__, "apply": True}), source=src, repo=repo)
        assert h.native_digest(url) == everything
        assert not any((files / p).exists() for p in paths if p != kept_path)
        with engine.begin() as conn:
            for stmt in h.UNFAIL_ACTIVITIES[engine.dialect.name]:
                conn.execute(sa.text(stmt))

        untouched = h.native_digest(url, skip_rows=gone)
        done = undo(cfg, UndoRequest(**{**request.__dict__, "apply": True}), source=src, repo=repo)
        out = done.to_dict()
        assert out["applied"] and out["pre_undo_snapshot"] and out["inserted"] == sum(map(len, gone.values()))
        assert {t: sorted(k["id"] for k in keys) for t, keys in out["written"]["inserted"].items()} == \
            {t: v for t, v in gone.items() if v}
        assert h.native_digest(url, skip_rows=gone) == untouched  # colleagues' rows and the schema untouched
        with engine.connect() as conn:
            assert {t: h.rows_of(conn, t, keys) for t, keys in gone.items()} == before_delete
        counters_after = h.counters(url)
        assert all(counters_after[t] >= counters_before[t] for t in counters_before)
        with engine.begin() as conn:  # the next id the CRM hands out is past everything restored
            conn.execute(sa.text("INSERT INTO accounts (owner_id, name, created_at) VALUES (1, 'Next', :t)"),
                         {"t": before_delete["accounts"][0]["created_at"]})
            assert conn.execute(sa.text("SELECT id FROM accounts WHERE name = 'Next'")).scalar_one() > new_account
        for p, sha in paths.items():
            data = (files / p).read_bytes()
            if p == kept_path:
                assert data == b"a colleague's new upload"  # never overwritten
            else:
                assert hashlib.sha256(data).hexdigest() == sha
        assert {a["path"]: a["status"] for a in out["written"]["attachments"]}[sorted(paths)[-1]] == "restored"
        assert repo.manifest(out["pre_undo_snapshot"])["tags"] == ["pre-undo"]
        events = [json.loads(line) for line in journal_path(cfg).read_text().splitlines()]
        assert [e["event"] for e in events] == ["undo-plan", "undo-refused", "undo-start", "undo-failed",
                                                 "undo-start", "undo-end"]
        assert events[4]["source"]["snapshot_id"] == snap and "@" in events[4]["actor"]
        assert f"insert id={account}" in events[4]["rows"]["accounts"]
        assert re.search(said, events[3]["error"]), events[3]["error"]
        assert events[0]["summary"]["insert"] == out["inserted"] and events[0]["where"] == odd.where

        # a row changed since the snapshot: both values in the plan, kept unless take-snapshot
        keep = UndoRequest(table="accounts", where=f"id = {other}", apply=True)
        out = undo(cfg, keep, source=src, repo=repo).to_dict()
        changed = {(r["table"], r["key"]["id"]): r for r in out["plan"]["rows"] if r["action"] == "changed"}
        assert set(changed) == {("accounts", other), ("contacts", other_contact)}
        phone = changed[("contacts", other_contact)]["columns"]
        assert [c["column"] for c in phone] == ["phone"] and phone[0]["live"] == "+86 139 0000 0000"
        assert phone[0]["snapshot"] != phone[0]["live"]
        assert out["applied"] and out["inserted"] == out["updated"] == 0 and out["pre_undo_snapshot"] is None
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT phone FROM contacts WHERE id = :c"),
                                {"c": other_contact}).scalar_one() == "+86 139 0000 0000"
        take = UndoRequest(table="contacts", where=f"id = {other_contact}", apply=True, changed="take-snapshot",
                           follow_fks=False)
        out = undo(cfg, take, source=src, repo=repo).to_dict()
        assert out["written"]["updated"] == {"contacts": [{"key": {"id": other_contact}, "columns": ["phone"]}]}
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT phone FROM contacts WHERE id = :c"),
                                {"c": other_contact}).scalar_one() == phone[0]["snapshot"]
            assert conn.execute(sa.text("SELECT name FROM accounts WHERE id = :a"),
                                {"a": other}).scalar_one() == "Renamed by a colleague"
    engine.dispose()


def test_sqlite_deleted_account_comes_back_and_nothing_else_moves(tmp_path: Path) -> None:
    scenario(tmp_path, f"sqlite:///{tmp_path / 'crm.db'}")


@pytest.mark.docker
@pytest.mark.postgres
def test_postgres_deleted_account_comes_back_and_nothing_else_moves(pg_url: str, tmp_path: Path,
                                                                   docker_client) -> None:  # type: ignore[no-untyped-def]
    scenario(tmp_path, pg_url)


@pytest.mark.docker
@pytest.mark.mysql
def test_mariadb_deleted_account_comes_back_and_nothing_else_moves(mysql_url: str, tmp_path: Path,
                                                                   docker_client) -> None:  # type: ignore[no-untyped-def]
    scenario(tmp_path, mysql_url)


def test_cli_plan_json_errors_and_refusal_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    config, cfg, snap = h.demo_with_snapshot(tmp_path, url)
    engine = connect_engine(url)
    with engine.begin() as conn:
        account = h.account_with_attachments(conn)
        gone = h.closure(conn, account)
        email = conn.execute(sa.text("SELECT email FROM contacts WHERE id = :c"), {"c": gone["contacts"][0]}).scalar()
        paths = sorted(r["storage_path"] for r in h.rows_of(conn, "attachments", gone["attachments"]))
        h.delete(conn, gone)
    engine.dispose()
    where = f"id IN ({account})"

    human = run(config, "undo", "--table", "accounts", "--where", where, env={"COLUMNS": "80"})
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines if not line.startswith(("  into", "  rows")))
    assert any(line.startswith("accounts ") and line.split()[1] == "1" for line in lines)
    assert "dry run: nothing was written" in human.stdout
    assert f"contacts (references accounts): id {gone['contacts'][0]}, " in human.stdout, human.stdout


    typo = run(config, "--json", "undo", "--table", "acounts", "--where", where)
    assert typo.returncode == 72 and "did you mean accounts" in typo.stderr
    assert json.loads(typo.stdout)["error"] == "undo-selection-invalid"
    bad = run(config, "undo", "--table", "accounts", "--where", "id IN (42")
    assert bad.returncode == 72 and bad.stderr.startswith("crmops: error: --where must be one SQL condition on the "
                                                          "table's columns; it holds a '(' that is never closed")
    bad = run(config, "undo", "--table", "accounts", "--where", "id IN (42,)")
    assert bad.returncode == 72 and bad.stderr.startswith("crmops: error: --where does not work on table accounts")
    assert "Traceback" not in bad.stderr
    empty = run(config, "undo", "--table", " ", "--where", where)
    assert empty.returncode == 2 and "--table is empty" in empty.stderr
    none = run(config, "undo", "--table", "accounts", "--where", "id = -5")
    assert none.returncode == 71 and "no row of accounts" in none.stderr

    with connect_engine(url).begin() as conn:
        conn.execute(sa.text("INSERT INTO contacts (account_id, first_name, last_name, email, created_at) "
                             "VALUES (1, 'A', 'B', :e, '2026-01-01')"), {"e": email})
    refused = run(config, "--json", "undo", "--table", "accounts", "--where", where, "--apply", "--from", snap[:8])
    assert refused.returncode == 70 and "is taken by live row" in refused.stderr
    envelope = json.loads(refused.stdout)  # exactly one document: the error envelope, the plan inside
    assert envelope["error"] == "undo-conflict" and envelope["exit_code"] == 70
    assert "is taken by live row" in envelope["message"]
    doc = envelope["result"]
    assert doc["plan"]["conflicts"][0]["kind"] == "unique"
    assert doc["plan"]["summary"]["insert"] == sum(map(len, gone.values())) and not doc["applied"]
    assert doc["plan"]["source"]["snapshot_id"] == snap
    runs = [json.loads(line) for line in (tmp_path / "state" / "runs.jsonl").read_text().splitlines()]
    undo_runs = [r for r in runs if r["command"] == "undo"]
    assert undo_runs[-1]["exit_code"] == 70 and undo_runs[0]["figures"]["snapshot_id"] == snap
    assert "is taken by live row" in undo_runs[-1]["error"]  # the run history says why, not "exit code 70"

    # the colleague's contact gets another address; one file's name now holds another upload
    with connect_engine(url).begin() as conn:
        conn.execute(sa.text("UPDATE contacts SET email = 'moved@example.org' WHERE email = :e AND id NOT IN :g"
                             ).bindparams(sa.bindparam("g", expanding=True)), {"e": email, "g": gone["contacts"]})
    (tmp_path / "files" / paths[0]).write_bytes(b"a colleague's new upload")
    applied = run(config, "undo", "--table", "accounts", "--where", where, "--apply", env={"COLUMNS": "80"})
    assert applied.returncode == 0, applied.stderr
    # what it did with each file, in the plan's words
    assert f"attachment {paths[0]}: other content there (kept)" in applied.stdout, applied.stdout
    assert all(f"attachment {p}: already there" in applied.stdout for p in paths[1:]), applied.stdout


def test_rows_from_another_databases_snapshot_are_told(tmp_path: Path) -> None:
    """undo --to a database the snapshot is not of (or a --from of another CRM): the plan says so first."""
    import shutil

    url = f"sqlite:///{tmp_path / 'crm.db'}"
    config, _, snap = h.demo_with_snapshot(tmp_path, url)
    shutil.copy(tmp_path / "crm.db", tmp_path / "other.db")
    own = json.loads(run(config, "--json", "undo", "--table", "contacts", "--where", "id < 3",
                         "--no-follow-fks").stdout)
    assert not any("another database" in w for w in own["plan"]["warnings"]), own["plan"]["warnings"]
    other = run(config, "--json", "undo", "--table", "contacts", "--where", "id < 3", "--no-follow-fks", "--to",
                f"sqlite:///{tmp_path / 'other.db'}")
    assert other.returncode == 0, other.stderr
    first = json.loads(other.stdout)["plan"]["warnings"][0]
    assert first.startswith(f"snapshot {snap[:10]} is of sqlite://{tmp_path / 'crm.db'}, not of the database "
                            f"being changed (sqlite://{tmp_path / 'other.db'})"), first


NO_FK_SCHEMA = """
CREATE TABLE crm_customer (customer_id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE crm_contacts (contacts_id INTEGER PRIMARY KEY, customer_id INTEGER, email TEXT UNIQUE);
CREATE TABLE crm_business (business_id INTEGER PRIMARY KEY, customer_id INTEGER, contacts_id INTEGER, title TEXT);
INSERT INTO crm_customer VALUES (1, '华信科技'), (2, 'Acme Inc.'), (3, 'Globex');
INSERT INTO crm_contacts VALUES (10, 1, 'a@x.cn'), (11, 2, 'b@acme.com'), (12, 2, 'c@acme.com'), (13, 3, 'd@g.com');
INSERT INTO crm_business VALUES (100, 2, 11, 'renewal'), (101, 2, NULL, '续约'), (102, 3, 13, 'pilot');
"""


def test_schema_without_foreign_keys_follows_configured_relations(tmp_path: Path) -> None:
    import sqlite3

    import yaml

    db = tmp_path / "wukong.db"
    with sqlite3.connect(db) as c:
        c.executescript(NO_FK_SCHEMA)
    from tests.verify.verify_helpers import ok, write_config

    config = write_config(tmp_path, f"sqlite:///{db}", attachments=False, verify={"checks": {"fk_orphans": False}})
    ok(run(config, "repo", "init"))
    ok(run(config, "backup"))
    with sqlite3.connect(db) as c:
        c.executescript("DELETE FROM crm_business WHERE customer_id = 2; DELETE FROM crm_contacts WHERE "
                        "customer_id = 2; DELETE FROM crm_customer WHERE customer_id = 2;")

    bare = undo(load(config), UndoRequest(table="crm_customer", where="customer_id = 2")).to_dict()
    assert [(r["table"], r["action"]) for r in bare["plan"]["rows"]] == [("crm_customer", "insert")]
    assert any("crm_contacts.customer_id looks like a reference to crm_customer" in w
               for w in bare["plan"]["warnings"])

    data = yaml.safe_load(config.read_text())
    data["undo"] = {"relations": [
        {"table": "crm_contacts", "column": "customer_id", "references": "crm_customer.customer_id"},
        {"table": "crm_business", "column": "customer_id", "references": "crm_customer.customer_id"}]}
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    out = ok(run(config, "--json", "undo", "--table", "crm_customer", "--where", "customer_id = 2", "--apply"))
    assert {(r["table"], tuple(r["key"].values())) for r in out["plan"]["rows"]} == {
        ("crm_customer", (2,)), ("crm_contacts", (11,)), ("crm_contacts", (12,)), ("crm_business", (100,)),
        ("crm_business", (101,))}
    assert [t["table"] for t in out["plan"]["tables"]][0] == "crm_customer"
    assert any("crm_business.contacts_id looks like a reference to crm_contacts" in w
               for w in out["plan"]["warnings"])
    assert out["inserted"] == 5
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM crm_business").fetchone()[0] == 3
        assert c.execute("SELECT name FROM crm_customer WHERE customer_id = 2").fetchone()[0] == "Acme Inc."

    # a deal whose customer is gone too: the customer comes back with it (up), not the customer's contacts
    with sqlite3.connect(db) as c:
        c.executescript("DELETE FROM crm_business WHERE business_id = 102; DELETE FROM crm_contacts WHERE "
                        "customer_id = 3; DELETE FROM crm_customer WHERE customer_id = 3;")
    cfg = load(config)
    alone = undo(cfg, UndoRequest(table="crm_business", where="business_id = 102", follow_fks=False, apply=True))
    assert alone.refused and not alone.applied
    conflict = alone.to_dict()["plan"]["conflicts"]
    assert [(c["table"], c["kind"]) for c in conflict] == [("crm_business", "missing-parent")]
    assert "needs crm_customer customer_id=3" in conflict[0]["detail"]
    out = undo(cfg, UndoRequest(table="crm_business", where="business_id = 102", apply=True)).to_dict()
    assert [(r["table"], tuple(r["key"].values())) for r in out["plan"]["rows"]] == [
        ("crm_customer", (3,)), ("crm_business", (102,))]
    assert out["plan"]["tables"][0]["reasons"] == ["referenced by crm_business, missing from live"]
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM crm_contacts WHERE customer_id = 3").fetchone()[0] == 0
        assert c.execute("SELECT title FROM crm_business WHERE business_id = 102").fetchone()[0] == "pilot"


def test_write_order_parents_first_and_probable_parents() -> None:
    from crmops.undo.apply import _parents_first
    from crmops.undo.catalog import Catalog, Relation, insert_order, probable_parent

    rels = [Relation("contacts", ("account_id",), "accounts", ("id",)),
            Relation("accounts", ("parent_id",), "accounts", ("id",)),
            Relation("activities", ("contact_id",), "contacts", ("id",))]
    assert insert_order(["activities", "contacts", "accounts"], rels) == ["accounts", "contacts", "activities"]
    rows = {(1,): {"id": 1, "parent_id": 3}, (2,): {"id": 2, "parent_id": None}, (3,): {"id": 3, "parent_id": 2},
            (4,): {"id": 4, "parent_id": 99}}
    catalog = Catalog(["accounts"], {"accounts": ("id",)}, {}, rels, [])
    ordered = [k for k, _ in _parents_first("accounts", [(k, []) for k in sorted(rows)], rows, catalog)]
    assert ordered.index((2,)) < ordered.index((3,)) < ordered.index((1,)) and (4,) in ordered
    tables = ["crm_customer", "crm_contacts", "users", "pipeline_stages", "companies"]
    assert probable_parent("customer", tables) == "crm_customer"
    assert probable_parent("contacts", tables) == "crm_contacts"
    assert probable_parent("user", tables) == "users"
    assert probable_parent("stage", tables) == "pipeline_stages"
    assert probable_parent("company", tables) == "companies"
    assert probable_parent("entity", tables) is None


@pytest.mark.postgres
def test_postgres_sequence_is_raised_past_restored_ids_never_lowered(pg_url: str) -> None:
    from crmops.undo.apply import _raise_pg_sequences, counters

    engine = connect_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE deals (id serial PRIMARY KEY, n int)"))
            conn.execute(sa.text("CREATE TABLE notes (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO deals (n) SELECT g FROM generate_series(1, 5) g"))  # sequence at 5
            conn.execute(sa.text("INSERT INTO notes (id) VALUES (DEFAULT), (DEFAULT), (DEFAULT)"))  # at 3
            conn.execute(sa.text("INSERT INTO deals (id, n) VALUES (40, 0)"))  # a restored row past the sequence
            conn.execute(sa.text("DELETE FROM notes WHERE id = 3"))  # highest row gone: the counter stays at 3
        before = counters(engine, ["deals", "notes"])
        with engine.begin() as conn:
            moved = {c["name"]: c for c in _raise_pg_sequences(conn, ["deals", "notes"], before)}
        assert moved["public.deals_id_seq"]["after"] == 40 and moved["public.notes_id_seq"]["after"] == 3
        with engine.begin() as conn:
            assert conn.execute(sa.text("INSERT INTO deals (n) VALUES (1) RETURNING id")).scalar_one() == 41
            assert conn.execute(sa.text("INSERT INTO notes DEFAULT VALUES RETURNING id")).scalar_one() == 4
    finally:
        engine.dispose()


@pytest.mark.docker
@pytest.mark.postgres
def test_postgres_ctrl_c_during_apply_names_the_way_back(pg_url: str, tmp_path: Path,
                                                         docker_client) -> None:  # type: ignore[no-untyped-def]
    """A Ctrl-C while the rows are written: exit 130, nothing written, the pre-undo snapshot named, journalled."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.verify.verify_helpers import PASSPHRASE

    config, cfg, _ = h.demo_with_snapshot(tmp_path, pg_url)
    engine = connect_engine(pg_url)
    with engine.begin() as conn:
        account = h.account_with_attachments(conn)
        h.delete(conn, h.closure(conn, account))
        # the write of activities takes a while, so the Ctrl-C surely comes inside the transaction
        conn.execute(sa.text("CREATE FUNCTION slow_activity() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(20); "
                             "RETURN NULL; END $$ LANGUAGE plpgsql"))
        conn.execute(sa.text("CREATE TRIGGER slow_activity BEFORE INSERT ON activities FOR EACH STATEMENT "
                             "EXECUTE FUNCTION slow_activity()"))
    engine.dispose()
    before = h.native_digest(pg_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env["TEST_PASSPHRASE"] = PASSPHRASE
    proc = subprocess.Popen([sys.executable, "-m", "crmops", "--config", str(config), "undo", "--table", "accounts",
                             "--where", f"id = {account}", "--apply"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = journal_path(cfg)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if journal.exists() and '"undo-start"' in journal.read_text():
            break
        time.sleep(0.1)
    time.sleep(1.5)  # inside the transaction, in the slow trigger
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("crmops: error: undo stopped; its rows are written in one transaction"), line
    assert "(pre-undo)" in line and "without --apply shows which" in line
    events = [json.loads(x) for x in journal.read_text().splitlines()]
    assert events[-1]["event"] == "undo-stopped" and events[-1]["pre_undo_snapshot"] in line
    assert h.native_digest(pg_url) == before  # rolled back
