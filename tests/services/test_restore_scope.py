"""`restore --tables` replaces only what it names; `--as` restores beside; nothing else moves.

Each target holds the demo CRM plus objects of its own (a table with rows, a view, a
function, a grant; on MariaDB also a procedure, an event and a trigger). A native
digest of everything not named (`pg_dump --schema-only` or `mariadb-dump --no-data`,
plus per-table checksums and sequence values) is taken before and after each restore,
including restores that are refused or fail half-way.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from sqlalchemy.engine import make_url

from crmops.democrm.load import create
from crmops.engines import open_engine
from crmops.engines.mysql import MysqlEngine
from crmops.engines.postgres import PostgresEngine
from tests.matrix.digest import my_digest, pg_digest, sqlite_digest
from tests.services.test_backup_restore import PASSPHRASE, write_config
from tests.services.test_backup_restore import run as run_json


def run(config: Path, *args: str, check: bool = True, json_output: bool = True) -> subprocess.CompletedProcess:
    if json_output:
        return run_json(config, *args, check=check)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env["TEST_PASSPHRASE"] = PASSPHRASE
    r = subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), *args], capture_output=True,
                       text=True, env={**env, "COLUMNS": "80"}, timeout=300)
    assert not check or r.returncode == 0, r.stderr
    return r


# -- PostgreSQL ------------------------------------------------------------------------


def _pg_with_db(admin: str, name: str) -> str:
    return make_url(admin).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def pg_snapshot(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One demo CRM on PostgreSQL and a repository holding its snapshot, shared by this module's tests."""
    name = f"scope_src_{uuid.uuid4().hex[:8]}"
    made = [name]
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    src = _pg_with_db(pg_admin_url, name)
    create(src, size="small")
    tmp = tmp_path_factory.mktemp("pg-scope")
    config = write_config(tmp, src)
    run(config, "repo", "init")
    snap = json.loads(run(config, "backup").stdout)["snapshot_id"]

    def copy_of_source() -> str:
        """A target database holding the same demo CRM (a template copy: fast)."""
        copy = f"scope_dst_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
        made.append(copy)
        return _pg_with_db(pg_admin_url, copy)

    yield {"config": config, "snap": snap, "src": src, "copy": copy_of_source, "admin": pg_admin_url}
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        for db in reversed(made):
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _pg_live_target(pg_snapshot: dict[str, Any]) -> str:
    """The demo CRM plus someone's own table, view, function and grant; contacts changed since the snapshot."""
    dst = pg_snapshot["copy"]()
    with psycopg.connect(dst, autocommit=True) as conn:
        conn.execute("CREATE TABLE my_notes (id serial PRIMARY KEY, contact_id int REFERENCES contacts(id), "
                     "body text NOT NULL)")
        conn.execute("INSERT INTO my_notes (contact_id, body) SELECT id, 'call back ' || id FROM contacts "
                     "WHERE id <= 40")
        conn.execute("CREATE VIEW my_busy_accounts AS SELECT a.name, count(*) AS n FROM accounts a "
                     "JOIN contacts c ON c.account_id = a.id GROUP BY a.name")
        conn.execute("CREATE FUNCTION my_note_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM my_notes'")
        conn.execute("GRANT SELECT ON my_notes TO PUBLIC")
        conn.execute("GRANT SELECT ON contacts TO PUBLIC")  # a replaced table keeps its grants too
        conn.execute("COMMENT ON TABLE contacts IS 'people at our customers'")
        conn.execute("UPDATE contacts SET first_name = 'Changed', notes = 'edited after the snapshot' "
                     "WHERE id % 7 = 0")
    return dst


def _snapshot_ids(config: Path) -> list[str]:
    from crmops.repository import open_repository
    from tests.services.test_backup_restore import _cfg

    return sorted(open_repository(_cfg(config)).snapshot_ids())


def test_pg_tables_force_replaces_only_contacts(pg_snapshot: dict[str, Any]) -> None:
    config, snap = pg_snapshot["config"], pg_snapshot["snap"]
    dst = _pg_live_target(pg_snapshot)
    before = pg_digest(dst, skip=("public.contacts",))
    refused = run(config, "restore", snap, "--to", dst, "--tables", "contacts", check=False)
    assert refused.returncode == 60 and "--force" in refused.stderr and "contacts" in refused.stderr
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "public.contacts", "--force").stdout)
    assert out["replaced"] == ["public.contacts"] and out["tables"] == ["public.contacts"]
    assert out["safety_snapshot"] in _snapshot_ids(config)
    found = open_engine(dst).fingerprint()
    from crmops.engines import Fingerprint
    from crmops.repository import open_repository
    from tests.services.test_backup_restore import _cfg

    repo = open_repository(_cfg(config))
    assert found.tables["contacts"] == Fingerprint.from_dict(repo.manifest(snap)["fingerprint"]).tables["contacts"]
    assert repo.manifest(out["safety_snapshot"])["tags"] == ["pre-restore"]
    after = pg_digest(dst, skip=("public.contacts",))
    assert after["schema"] == before["schema"]  # keys to and from contacts were dropped and added back
    assert after["rows"] == before["rows"]


def test_pg_misspelt_table_changes_nothing(pg_snapshot: dict[str, Any]) -> None:
    config, snap = pg_snapshot["config"], pg_snapshot["snap"]
    dst = _pg_live_target(pg_snapshot)
    before, snapshots = pg_digest(dst), _snapshot_ids(config)
    r = run(config, "restore", snap, "--to", dst, "--tables", "contactz", "--force", check=False)
    assert r.returncode == 16, r.stderr
    assert "did you mean contacts" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert json.loads(r.stdout)["error"] == "table-missing"
    assert pg_digest(dst) == before
    assert _snapshot_ids(config) == snapshots  # no pre-restore snapshot either


@pytest.mark.parametrize("direction", ["to", "from"])
def test_pg_constraint_break_is_refused_and_rolled_back(pg_snapshot: dict[str, Any], direction: str) -> None:
    """to: a deal made since the snapshot points at a contact the snapshot lacks; from: the snapshot's
    contacts point at an account deleted since. Either way contacts cannot come back alone."""
    config, snap = pg_snapshot["config"], pg_snapshot["snap"]
    dst = _pg_live_target(pg_snapshot)
    with psycopg.connect(dst, autocommit=True) as conn:
        if direction == "to":
            conn.execute("INSERT INTO contacts (id, account_id, first_name, last_name, email, created_at) "
                         "VALUES (90001, 1, 'New', 'Since', 'new@example.org', now())")
            conn.execute("UPDATE opportunities SET contact_id = 90001 WHERE id = 3")
        else:
            conn.execute("UPDATE contacts SET account_id = 1 WHERE account_id = 120")
            conn.execute("UPDATE opportunities SET account_id = 1 WHERE account_id = 120")
            conn.execute("DELETE FROM accounts WHERE id = 120")
    before = pg_digest(dst)
    r = run(config, "restore", snap, "--to", dst, "--tables", "contacts", "--force", check=False)
    assert r.returncode == 15, r.stderr
    assert ("opportunities" if direction == "to" else "contacts_account_id_fkey") in r.stderr
    assert "nothing was changed" in r.stderr
    assert pg_digest(dst) == before


def test_pg_as_restores_beside_the_live_table(pg_snapshot: dict[str, Any]) -> None:
    config, snap = pg_snapshot["config"], pg_snapshot["snap"]
    dst = _pg_live_target(pg_snapshot)
    with psycopg.connect(dst, autocommit=True) as conn:  # someone deletes customers
        conn.execute("DELETE FROM accounts WHERE id > 100 AND id NOT IN (SELECT account_id FROM contacts UNION "
                     "SELECT account_id FROM opportunities)")
        gone = conn.execute("SELECT 120 - count(*) FROM accounts").fetchone()[0]
    before = pg_digest(dst)
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "accounts", "--as", "restored_").stdout)
    assert out["created"] == ["public.restored_accounts"] and out["replaced"] == [] and out["safety_snapshot"] is None
    after = pg_digest(dst, skip=("public.restored_accounts",))
    assert after == before  # everything but the copy, schema and rows
    with psycopg.connect(dst) as conn:
        assert conn.execute("SELECT count(*) FROM restored_accounts").fetchone()[0] == 120
        missing = conn.execute("SELECT count(*) FROM restored_accounts r WHERE NOT EXISTS "
                               "(SELECT 1 FROM accounts a WHERE a.id = r.id)").fetchone()[0]
    assert missing == gone
    again = run(config, "restore", snap, "--to", dst, "--tables", "accounts", "--as", "restored_", check=False)
    assert again.returncode == 60 and "restored_accounts already exists" in again.stderr
    # or into a schema of its own, under the same names
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "accounts,contacts",
                         "--as", "recovered.").stdout)
    assert out["created"] == ["recovered.accounts", "recovered.contacts"]
    with psycopg.connect(dst) as conn:
        assert conn.execute("SELECT count(*) FROM recovered.contacts").fetchone()[0] == 600
    assert pg_digest(dst, skip=("public.restored_accounts", "recovered.accounts", "recovered.contacts")
                     )["rows"] == before["rows"]
    # the README's worked example: copy back what is missing, and accounts is whole again
    with psycopg.connect(dst) as conn:
        conn.execute("INSERT INTO accounts SELECT * FROM restored_accounts r "
                     "WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = r.id)")
    from crmops.engines import Fingerprint
    from crmops.repository import open_repository
    from tests.services.test_backup_restore import _cfg

    want = Fingerprint.from_dict(open_repository(_cfg(config)).manifest(snap)["fingerprint"]).tables["accounts"]
    assert open_engine(dst).fingerprint().tables["accounts"] == want


def test_pg_messages_show_the_url_as_written(pg_snapshot: dict[str, Any]) -> None:
    """People read postgresql://, as they wrote it, never the driver crmops picked (postgresql+psycopg://)."""
    config, snap = pg_snapshot["config"], pg_snapshot["snap"]
    dst = _pg_live_target(pg_snapshot)
    said = [run(config, "restore", snap, "--to", dst, "--tables", "contacts", check=False, json_output=False),
            run(config, "restore", snap, "--to", dst, "--tables", "accounts", "--as", "copy_", json_output=False),
            run(config, "restore", snap, "--to", dst, "--tables", "accounts", "--as", "copy_", check=False,
                json_output=False),
            run(config, "restore", snap, "--to", dst, "--tables", "contacts", "--force", json_output=False)]
    assert [r.returncode for r in said] == [60, 0, 60, 0]
    assert "copy_accounts already exists in postgresql://" in said[2].stderr
    assert "replaced public.contacts in postgresql://" in said[3].stdout
    for r in said:
        assert "+psycopg" not in r.stdout + r.stderr, r.stdout + r.stderr
    # a --to naming a database that does not exist: the hint speaks of the option, not only of the config
    gone = make_url(dst).set(database="no_such_db_here").render_as_string(hide_password=False)
    r = run(config, "restore", snap, "--to", gone, check=False, json_output=False)
    assert r.returncode == 12 and "--to" in r.stderr.splitlines()[-1] and "create it" in r.stderr, r.stderr


@pytest.mark.parametrize("leftover", [
    "CREATE FUNCTION half_restored() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE TYPE deal_stage AS ENUM ('open', 'won')",
    "CREATE SCHEMA sales",
    "CREATE SEQUENCE orphan_seq",
])
def test_pg_leftovers_make_the_target_non_empty(pg_url: str, leftover: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(leftover)
    assert open_engine(pg_url).is_empty() is False


def test_pg_empty_database_is_empty(pg_url: str) -> None:
    assert open_engine(pg_url).is_empty() is True


# -- MariaDB ---------------------------------------------------------------------------


def _my_connect(url: str) -> pymysql.Connection:
    u = make_url(url)
    return pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
                           database=u.database, charset="utf8mb4", autocommit=True)


#: the MariaDB tests share one source and snapshot (my_snapshot). Each of them is long enough to be scheduled
#: among the first (tests/ordering.py), which spread them over every worker, and each worker built the fixture
#: again; in one group they run on one worker, after one fixture.
MARIADB_SHARED = pytest.mark.xdist_group("restore-scope-mariadb")


@pytest.fixture(scope="module")
def my_snapshot(mysql_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    made: list[str] = []
    admin = _my_connect(mysql_admin_url)

    def new_db() -> str:
        name = f"scope_{uuid.uuid4().hex[:10]}"
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        made.append(name)
        return make_url(mysql_admin_url).set(database=name).render_as_string(hide_password=False)

    src = new_db()
    create(src, size="small")
    tmp = tmp_path_factory.mktemp("my-scope")
    config = write_config(tmp, src)
    run(config, "repo", "init")
    snap = json.loads(run(config, "backup").stdout)["snapshot_id"]
    eng = MysqlEngine(src)
    options = eng._option_file()
    try:
        dump = subprocess.run(eng._tool("dump").argv([f"--defaults-extra-file={options}", "--routines", "--triggers",
                                                      "--events", "--hex-blob", eng.database_name()], mounts=[options]),
                              capture_output=True, check=True).stdout
    finally:
        os.unlink(options)

    def copy_of_source() -> str:
        url = new_db()
        target = MysqlEngine(url)
        opts = target._option_file()
        try:
            subprocess.run(target._tool("client").argv([f"--defaults-extra-file={opts}", "--binary-mode",
                                                        target.database_name()], stdin=True, mounts=[opts]),
                           input=dump, check=True, capture_output=True)
        finally:
            os.unlink(opts)
        return url

    yield {"config": config, "snap": snap, "copy": copy_of_source}
    with admin.cursor() as cur:
        for name in made:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    admin.close()


def _my_live_target(my_snapshot: dict[str, Any]) -> str:
    dst = my_snapshot["copy"]()
    conn = _my_connect(dst)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE my_notes (id INT AUTO_INCREMENT PRIMARY KEY, contact_id INT, body TEXT NOT NULL, "
                    "CONSTRAINT fk_note_contact FOREIGN KEY (contact_id) REFERENCES contacts (id)) ENGINE=InnoDB")
        cur.execute("INSERT INTO my_notes (contact_id, body) SELECT id, CONCAT('call back ', id) FROM contacts "
                    "WHERE id <= 40")
        cur.execute("CREATE TABLE my_log (id INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(200)) ENGINE=InnoDB")
        cur.execute("CREATE VIEW my_busy_accounts AS SELECT a.name, COUNT(*) AS n FROM accounts a "
                    "JOIN contacts c ON c.account_id = a.id GROUP BY a.name")
        cur.execute("CREATE FUNCTION my_note_count() RETURNS INT READS SQL DATA RETURN (SELECT COUNT(*) FROM my_notes)")
        cur.execute("CREATE PROCEDURE my_tidy() MODIFIES SQL DATA DELETE FROM my_notes WHERE body = ''")
        cur.execute("CREATE EVENT my_nightly ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM my_log")
        # fires on every change to contacts: a restore must not let it write into my_log
        cur.execute("CREATE TRIGGER my_contacts_audit AFTER INSERT ON contacts FOR EACH ROW "
                    "INSERT INTO my_log (what) VALUES (CONCAT('contact ', NEW.id))")
        cur.execute("CREATE TRIGGER my_contacts_gone AFTER DELETE ON contacts FOR EACH ROW "
                    "INSERT INTO my_log (what) VALUES (CONCAT('gone ', OLD.id))")
        cur.execute("UPDATE contacts SET first_name = 'Changed', notes = 'edited after the snapshot' "
                    "WHERE id % 7 = 0")
    conn.close()
    return dst


@MARIADB_SHARED
def test_mysql_tables_force_replaces_only_contacts(my_snapshot: dict[str, Any]) -> None:
    config, snap = my_snapshot["config"], my_snapshot["snap"]
    dst = _my_live_target(my_snapshot)
    before = my_digest(dst, skip=("contacts",))
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "contacts", "--force").stdout)
    assert out["replaced"] == ["contacts"] and out["safety_snapshot"]
    from crmops.engines import Fingerprint
    from crmops.repository import open_repository
    from tests.services.test_backup_restore import _cfg

    want = Fingerprint.from_dict(open_repository(_cfg(config)).manifest(snap)["fingerprint"]).tables["contacts"]
    assert open_engine(dst).fingerprint().tables["contacts"] == want
    after = my_digest(dst, skip=("contacts",))
    assert after["schema"] == before["schema"]  # the triggers on contacts are back, and fired for nothing
    assert after["tables"] == before["tables"]


@MARIADB_SHARED
def test_mysql_misspelt_table_changes_nothing(my_snapshot: dict[str, Any]) -> None:
    config, snap = my_snapshot["config"], my_snapshot["snap"]
    dst = _my_live_target(my_snapshot)
    before, snapshots = my_digest(dst), _snapshot_ids(config)
    r = run(config, "restore", snap, "--to", dst, "--tables", "contactz", "--force", check=False)
    assert r.returncode == 16 and "did you mean contacts" in r.stderr
    assert my_digest(dst) == before and _snapshot_ids(config) == snapshots


@MARIADB_SHARED
def test_mysql_constraint_break_is_refused_and_rolled_back(my_snapshot: dict[str, Any]) -> None:
    config, snap = my_snapshot["config"], my_snapshot["snap"]
    dst = _my_live_target(my_snapshot)
    conn = _my_connect(dst)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO contacts (id, account_id, first_name, last_name, email, created_at) "
                    "VALUES (90001, 1, 'New', 'Since', 'new@example.org', NOW())")
        cur.execute("INSERT INTO my_notes (contact_id, body) VALUES (90001, 'met at the fair')")
    conn.close()
    before = my_digest(dst)
    r = run(config, "restore", snap, "--to", dst, "--tables", "contacts", "--force", check=False)
    assert r.returncode == 15, r.stderr
    assert "my_notes" in r.stderr and "nothing was changed" in r.stderr
    assert my_digest(dst) == before


@MARIADB_SHARED
def test_mysql_as_restores_beside_the_live_table(my_snapshot: dict[str, Any]) -> None:
    config, snap = my_snapshot["config"], my_snapshot["snap"]
    dst = _my_live_target(my_snapshot)
    before = my_digest(dst)
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "contacts", "--as", "restored_").stdout)
    assert out["created"] == ["restored_contacts"] and out["safety_snapshot"] is None
    after = my_digest(dst, skip=("restored_contacts",))
    assert after["tables"] == before["tables"]
    conn = _my_connect(dst)
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*), SUM(first_name = 'Changed') FROM restored_contacts")
        assert cur.fetchone() == (600, 0)
    conn.close()


# -- SQLite ----------------------------------------------------------------------------


def test_sqlite_tables_force_replaces_only_contacts(tmp_path: Path) -> None:
    src, dst_path = tmp_path / "crm.db", tmp_path / "live.db"
    create(f"sqlite:///{src}", size="small")
    config = write_config(tmp_path, f"sqlite:///{src}")
    run(config, "repo", "init")
    snap = json.loads(run(config, "backup").stdout)["snapshot_id"]
    dst_path.write_bytes(src.read_bytes())
    conn = sqlite3.connect(dst_path)
    conn.executescript("""
        CREATE TABLE my_notes (id INTEGER PRIMARY KEY, contact_id INT REFERENCES contacts(id), body TEXT);
        INSERT INTO my_notes (contact_id, body) SELECT id, 'call back ' || id FROM contacts WHERE id <= 40;
        CREATE TABLE my_log (what TEXT);
        CREATE VIEW my_busy AS SELECT account_id, count(*) FROM contacts GROUP BY account_id;
        CREATE TRIGGER my_audit AFTER DELETE ON contacts BEGIN INSERT INTO my_log VALUES ('gone ' || OLD.id); END;
        UPDATE contacts SET first_name = 'Changed' WHERE id % 7 = 0;
    """)
    conn.commit()
    conn.close()
    dst = f"sqlite:///{dst_path}"
    before = sqlite_digest(dst_path, skip=("contacts",))
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "contacts", "--force").stdout)
    assert out["replaced"] == ["contacts"]
    assert sqlite_digest(dst_path, skip=("contacts",)) == before
    assert open_engine(dst).fingerprint().tables["contacts"] == open_engine(f"sqlite:///{src}").fingerprint(
    ).tables["contacts"]
    # a note on a contact the snapshot lacks: refused, nothing changed
    conn = sqlite3.connect(dst_path)
    conn.execute("INSERT INTO contacts (id, account_id, first_name, last_name, email, created_at) "
                 "VALUES (90001, 1, 'New', 'Since', 'n@example.org', '2026-01-01')")
    conn.execute("INSERT INTO my_notes (contact_id, body) VALUES (90001, 'met at the fair')")
    conn.commit()
    conn.close()
    before = sqlite_digest(dst_path)
    r = run(config, "restore", snap, "--to", dst, "--tables", "contacts", "--force", check=False)
    assert r.returncode == 15 and "my_notes" in r.stderr
    assert sqlite_digest(dst_path) == before
    # an empty --tables (a variable that was not set) is refused, never taken for the whole database
    snapshots = _snapshot_ids(config)
    for empty in ("", " , "):
        r = run(config, "restore", snap, "--to", dst, "--tables", empty, "--force", check=False)
        assert r.returncode == 2 and "--tables is empty" in r.stderr, r.stderr
        assert json.loads(r.stdout)["error"] == "usage"
    assert sqlite_digest(dst_path) == before and _snapshot_ids(config) == snapshots



def test_pg_whole_database_force_names_what_it_replaced_and_how_to_get_back(pg_snapshot: dict[str, Any],
                                                                              tmp_path: Path) -> None:
    """A forced whole restore that dies half-way (its input cut short) says which snapshot holds the old target."""
    config, snap = pg_snapshot["config"], pg_snapshot["snap"]
    dst = _pg_live_target(pg_snapshot)
    before = pg_digest(dst)
    real = PostgresEngine(dst)._tool("pg_restore").path
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "pg_dump").symlink_to(Path(real).with_name("pg_dump"))
    # the real pg_restore, fed only the first 200 kB of the dump, whether it comes on stdin or
    # (staged, restored with --jobs) as the last argument
    cut = tools / "pg_restore"
    cut.write_text(f'#!/bin/bash\n[ "$1" = "--version" ] && exec {real} --version\n'
                   'args=(); for a in "$@"; do case "$a" in --jobs=*) ;; *) args+=("$a");; esac; done\n'
                   'last="${args[-1]}"\n'
                   f'if [ -f "$last" ]; then head -c 200000 "$last" | {real} "${{args[@]:0:${{#args[@]}}-1}}"; '
                   'exit $?; fi\n'
                   f'head -c 200000 | {real} "${{args[@]}}"\n')
    cut.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env.update(TEST_PASSPHRASE=PASSPHRASE, CRMOPS_TOOLS_PATH=str(tools))
    r = subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "restore", snap, "--to", dst,
                        "--force"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 14, r.stderr
    line = r.stderr.strip().splitlines()[-1]  # (a warning about the literal password may come first)
    assert line.startswith("crmops: error: ") and "the target was emptied first" in line
    safety = line.split("crmops restore ", 1)[1].split()[0]
    assert f"crmops restore {safety} --to " in line and line.endswith("--force)")
    assert "+psycopg" not in line  # the command to run is written as people write it
    # a dump this small is restored in one transaction: the failure left the emptied target empty,
    # not half-filled (a larger one, restored with --jobs, can stop half-way)
    assert PostgresEngine(dst).is_empty() and pg_digest(dst) != before
    human = run(config, "restore", safety, "--to", dst, "--force", json_output=False).stdout
    assert human.startswith(f"restored the database from snapshot {safety[:10]}")
    assert pg_digest(dst) == before


def test_pg_tables_force_stopped_by_ctrl_c_names_the_way_back(pg_snapshot: dict[str, Any], tmp_path: Path) -> None:
    """Ctrl-C while the tables are loaded: exit 130, the target as it was, and the pre-restore snapshot named."""
    config, snap = pg_snapshot["config"], pg_snapshot["snap"]
    dst = _pg_live_target(pg_snapshot)
    before = pg_digest(dst)
    real = PostgresEngine(dst)._tool("pg_restore").path
    tools = tmp_path / "tools"
    tools.mkdir()
    dump = tools / "pg_dump"  # first, a Ctrl-C while the pre-restore snapshot is taken: nothing changed yet
    dump.write_text(f'#!/bin/sh\nkill -INT $PPID; sleep 2; exec {Path(real).with_name("pg_dump")} "$@"\n')
    dump.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env.update(TEST_PASSPHRASE=PASSPHRASE, CRMOPS_TOOLS_PATH=str(tools))
    argv = [sys.executable, "-m", "crmops", "--config", str(config), "restore", snap, "--to", dst, "--tables",
            "contacts", "--force"]
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 130 and "while taking the pre-restore snapshot; the target was not changed" in r.stderr
    assert pg_digest(dst) == before
    dump.unlink()
    dump.symlink_to(Path(real).with_name("pg_dump"))
    stop = tools / "pg_restore"  # the real pg_restore; when it writes the tables' rows, crmops gets a Ctrl-C
    stop.write_text(f'#!/bin/sh\ncase "$*" in *--use-list=*) kill -INT $PPID; sleep 2;; esac\nexec {real} "$@"\n')
    stop.chmod(0o755)
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 130, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    # which state the table is in, not "either the restored rows or their own"
    assert line == ("crmops: error: restore stopped before the commit; public.contacts: left as they were "
                    "(rolled back) (nothing was changed; run the same restore again to finish it)"), line
    assert pg_digest(dst) == before  # rolled back: the stop came before the commit


def test_pg_whole_restore_into_an_empty_target_stopped_says_what_is_left(pg_snapshot: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    """Ctrl-C while loading an empty target: exit 130 and a line saying it now holds part of the snapshot."""
    config, snap = pg_snapshot["config"], pg_snapshot["snap"]
    name = f"scope_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_snapshot["admin"], autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        dst = _pg_with_db(pg_snapshot["admin"], name)
        real = PostgresEngine(dst)._tool("pg_restore").path
        tools = tmp_path / "tools"
        tools.mkdir()
        stop = tools / "pg_restore"  # the real pg_restore loads a part, then crmops gets a Ctrl-C
        stop.write_text(f'#!/bin/sh\n[ "$1" = "--version" ] && exec {real} --version\n'
                        f'head -c 200000 | {real} "$@"\nkill -INT $PPID\nsleep 5\n')
        stop.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
        env.update(TEST_PASSPHRASE=PASSPHRASE, CRMOPS_TOOLS_PATH=str(tools))
        r = subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "restore", snap, "--to", dst],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 130, r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert line == ("crmops: error: restore stopped half-way; the target may hold part of the snapshot "
                        "(restore into a fresh database, or again with --force)"), line
        assert not PostgresEngine(dst).is_empty()  # what it says: a part is there
    finally:
        with psycopg.connect(pg_snapshot["admin"], autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_pg_table_missing_from_the_target_is_created(pg_snapshot: dict[str, Any]) -> None:
    config, snap = pg_snapshot["config"], pg_snapshot["snap"]
    dst = _pg_live_target(pg_snapshot)
    with psycopg.connect(dst, autocommit=True) as conn:
        conn.execute("DROP TABLE leads")
    before = pg_digest(dst, skip=("public.contacts",))
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "leads,contacts", "--force").stdout)
    assert out["created"] == ["public.leads"] and out["replaced"] == ["public.contacts"]
    with psycopg.connect(dst) as conn:
        assert conn.execute("SELECT count(*) FROM leads").fetchone()[0] == 200
        keys = conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'leads'::regclass").fetchone()[0]
        assert keys >= 1  # its primary key came along
    after = pg_digest(dst, skip=("public.contacts", "public.leads"))
    assert after["rows"] == {k: v for k, v in before["rows"].items() if k != "public.leads"}


@MARIADB_SHARED
def test_mysql_table_missing_from_the_target_is_created(my_snapshot: dict[str, Any]) -> None:
    config, snap = my_snapshot["config"], my_snapshot["snap"]
    dst = _my_live_target(my_snapshot)
    conn = _my_connect(dst)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE leads")
    before = my_digest(dst)
    out = json.loads(run(config, "restore", snap, "--to", dst, "--tables", "leads", "--force").stdout)
    assert out["created"] == ["leads"] and out["replaced"] == []
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM leads")
        assert cur.fetchone()[0] == 200
    conn.close()
    assert my_digest(dst, skip=("leads",))["tables"] == before["tables"]


def test_pg_engine_refuses_a_table_its_archive_lacks(pg_snapshot: dict[str, Any]) -> None:
    """The engine checks the archive itself too (a snapshot without a fingerprint gets past the service's check)."""
    from crmops.errors import TableNotInSnapshot
    from crmops.repository import open_repository
    from tests.services.test_backup_restore import _cfg

    dst = _pg_live_target(pg_snapshot)
    before = pg_digest(dst)
    repo = open_repository(_cfg(pg_snapshot["config"]))
    manifest = repo.manifest(pg_snapshot["snap"])
    with pytest.raises(TableNotInSnapshot):
        PostgresEngine(dst).restore_tables(repo.read_stream(manifest), format="pg-custom",
                                           tables=["public.contacts", "public.nothere"])
    assert pg_digest(dst) == before
