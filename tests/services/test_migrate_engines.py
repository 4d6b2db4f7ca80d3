"""crmops migrate on real SQLite, PostgreSQL 15 and MariaDB 10.11: round trips, failures, refusals,
lock timeouts, drift and baseline, each on a small demo CRM."""

from __future__ import annotations

import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmops.config import Config
from crmops.dburl import parse
from crmops.democrm import SCRIPT_LOCATION
from crmops.democrm.load import create
from crmops.engines import open_engine
from crmops.errors import Interrupted, MigrationFailed, MigrationRefused
from crmops.services import migrate as service

ENGINES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("pg", id="pg", marks=pytest.mark.postgres),
    pytest.param("mysql", id="mariadb", marks=pytest.mark.mysql),
]
#: tables the 2.0 data step rewrites (merged contacts and what pointed at them)
MERGED = {"contacts", "activities", "opportunities", "customer_feedback"}


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'crm.db'}"
    return request.getfixturevalue(f"{request.param}_url_factory")()


def config_for(tmp_path: Path, url: str, **migrations: object) -> Config:
    return Config.model_validate({
        "database": {"url": url}, "state_dir": str(tmp_path / "state"),
        "repository": {"url": f"file://{tmp_path / 'repo'}", "chunk_avg_kib": 64},
        "encryption": {"passphrase": "migrate test passphrase"}, "migrations": migrations})


def init_repo(config: Config) -> None:
    from crmops.repository import Repository, credential
    from crmops.storage import open_store

    Repository.init(open_store(config.repository.url, config.repository), credential(config), chunk_avg=64 * 1024)


def sql(url: str, *statements: str, **params: object) -> list[tuple]:
    engine = sa.create_engine(parse(url).to_sqlalchemy())
    try:
        with engine.begin() as conn:
            rows: list[tuple] = []
            for s in statements:
                result = conn.execute(sa.text(s), params)
                if result.returns_rows:
                    rows = [tuple(r) for r in result]
            return rows
    finally:
        engine.dispose()


def add_duplicate_of(url: str, contact_id: int, *, email: str | None = None, other_account: bool = True) -> str:
    """Insert a contact with contact_id's e-mail (or the given one), in another account; returns the e-mail."""
    [(original, account)] = sql(url, "SELECT email, account_id FROM contacts WHERE id = :i", i=contact_id)
    [(accounts,)] = sql(url, "SELECT COUNT(*) FROM accounts")
    target = account % accounts + 1 if other_account else account
    sql(url, "INSERT INTO contacts (account_id, first_name, last_name, email, created_at) "
             "VALUES (:a, 'Dup', 'Licate', :e, :t)", a=target, e=email or original, t=datetime.now(UTC))
    return original


def untouched(fp: object) -> dict:
    return {k: v for k, v in fp.tables.items() if k not in MERGED}  # type: ignore[attr-defined]


def test_demo_crm_1_to_2_to_1_keeps_untouched_data(db_url: str, tmp_path: Path) -> None:
    create(db_url, size="small")
    config = config_for(tmp_path, db_url)
    before = open_engine(db_url).fingerprint()
    up = service.up(config, to="2.0", safety_backup=False)
    assert [r["revision"] for r in up.revisions] == ["d2_0001", "d2_0002", "d2_0003"]
    middle = open_engine(db_url).fingerprint()
    assert middle.tables["contacts"].rows == before.tables["contacts"].rows - 4  # the demo's 4 duplicates merged
    assert "customer_feedback" in middle.tables
    down = service.down(config, to="1.0", safety_backup=False)
    assert (down.from_revision, down.to_revision) == ("d2_0003", "d1_0003")
    after = open_engine(db_url).fingerprint()
    assert untouched(after) == untouched(before)
    assert after.objects == before.objects and "customer_feedback" not in after.tables
    assert service.status(config)["current"] == "d1_0003"
    runs = service.history(config)["runs"]
    assert [(r["direction"], r["result"], len(r["revisions"])) for r in runs] == [("up", "ok", 3), ("down", "ok", 3)]


def test_failure_midway_rolls_back_the_whole_run_or_names_what_stayed(db_url: str, tmp_path: Path) -> None:
    """d2_0002 refuses contacts sharing an e-mail across accounts; d2_0001 ran before it."""
    create(db_url, size="small")
    email = add_duplicate_of(db_url, 7)
    config = config_for(tmp_path, db_url)
    before = open_engine(db_url).fingerprint()
    with pytest.raises(MigrationFailed) as failed:
        service.up(config, to="head", safety_backup=False)
    line = failed.value.line()
    assert "revision d2_0002 (up) failed" in line and email in line
    now = open_engine(db_url).fingerprint()
    if db_url.startswith("mysql"):  # DDL committed as it ran: d2_0001 stays, and the line says so
        assert "d2_0001 of this run completed" in line and "alembic_version says d2_0001" in line
        assert service.status(config)["current"] == "d2_0001" and "customer_feedback" in now.tables
    else:  # one transaction: nothing of the run remains
        assert "nothing was changed (the whole run was rolled back)" in line
        assert now.compare(before) == [] and service.status(config)["current"] == "d1_0003"
    run = service.history(config)["runs"][-1]
    assert run["result"] == "failed" and "d2_0002" in run["error"]


def test_unique_email_refused_up_front_naming_the_duplicates(db_url: str, tmp_path: Path) -> None:
    """After the merge step ran, new duplicates appear; the unique step is refused before anything changes."""
    create(db_url, size="small")
    config = config_for(tmp_path, db_url)
    service.up(config, to="d2_0002", safety_backup=False)
    first = add_duplicate_of(db_url, 3)
    second = add_duplicate_of(db_url, 11)
    add_duplicate_of(db_url, 11)
    before = open_engine(db_url).fingerprint()
    init_repo(config)
    with pytest.raises(MigrationRefused) as refused:
        service.up(config, to="head")  # with the safety snapshot on: a refusal must not even take one
    line = refused.value.line()
    assert "revision d2_0003 (line 17) adds unique (email) on contacts" in line
    assert f"'{first}' (2 rows)" in line and f"'{second}' (3 rows)" in line and "nothing was changed" in line
    assert refused.value.exit_code == 41
    assert open_engine(db_url).fingerprint().compare(before) == []
    from crmops.repository import open_repository

    assert open_repository(config).snapshots() == []
    assert service.history(config)["runs"][-1]["result"] == "refused"


def test_not_null_precheck_names_the_rows(tmp_path: Path) -> None:
    url, config = sqlite_crm_2_with(tmp_path, "x_0001_phone_required", 'op.alter_column("contacts", "phone", '
                                    'existing_type=sa.String(50), nullable=False)')
    [(missing,)] = sql(url, "SELECT COUNT(*) FROM contacts WHERE phone IS NULL")
    with pytest.raises(MigrationRefused, match=rf"NOT NULL on phone on contacts, but {missing} row\(s\) hold NULL "
                                               r"there \(keys: id=\d+"):
        service.up(config, safety_backup=False)


REVISION = '''"""test revision {rev}

Revision ID: {rev}
Revises: {down}
"""
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    {body}


def downgrade() -> None:
    pass
'''


def copy_demo_scripts(tmp_path: Path) -> Path:
    target = tmp_path / "scripts"
    shutil.copytree(SCRIPT_LOCATION, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def sqlite_crm_2_with(tmp_path: Path, name: str, body: str) -> tuple[str, Config]:
    """A SQLite demo CRM at 2.0 whose scripts gain one revision x_0001 (file name, upgrade body)."""
    scripts = copy_demo_scripts(tmp_path)
    (scripts / "versions" / f"{name}.py").write_text(REVISION.format(rev="x_0001", down="d2_0003", body=body))
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    create(url, size="small", version="2.0")
    return url, config_for(tmp_path, url, script_location=str(scripts))


@pytest.mark.mysql
def test_half_applied_revision_on_mariadb_is_named_and_the_snapshot_restores_it(mysql_url: str,
                                                                                tmp_path: Path) -> None:
    """A revision whose own data step creates duplicates fails at its third statement, after two committed."""
    scripts = copy_demo_scripts(tmp_path)
    (scripts / "versions" / "d2_0004_normalized_email.py").write_text(REVISION.format(
        rev="d2_0004", down="d2_0003", body="\n    ".join([
            'op.add_column("contacts", sa.Column("email_key", sa.String(255)))',
            'op.execute("UPDATE contacts SET email_key = LOWER(TRIM(email))")',
            'op.create_unique_constraint("uq_contacts_email_key", "contacts", ["email_key"])'])))
    create(mysql_url, size="small", version="2.0")
    # an e-mail typed with a leading space: unique as entered, a duplicate once normalised
    email = add_duplicate_of(mysql_url, 5, email="  " + sql(mysql_url, "SELECT email FROM contacts WHERE id = 5")[0][0])
    config = config_for(tmp_path, mysql_url, script_location=str(scripts))
    init_repo(config)
    before = open_engine(mysql_url).fingerprint()
    with pytest.raises(MigrationFailed) as failed:
        service.up(config, to="head")
    line, details = failed.value.line(), failed.value.details  # type: ignore[attr-defined]
    print(line)
    assert "revision d2_0004 is HALF-APPLIED: 2 of its statements took effect" in line
    assert "ADD COLUMN email_key" in line and "UPDATE contacts SET email_key" in line
    assert email.strip() not in line  # the duplicate is a customer's address: named by its key, never shown
    assert "uq_contacts_email_key" in details["failed_statement"]
    snapshot = details["safety_snapshot"]
    assert f"crmops restore {snapshot} --to <the database URL> --force, or undo those statements by hand" in line
    half = open_engine(mysql_url).fingerprint()
    assert half.compare(before) != []  # the column and its values are there
    run = service.history(config)["runs"][-1]
    assert run["result"] == "failed" and run["safety_snapshot"] == snapshot
    # follow the rollback path the line gives
    from crmops.services.restore import restore

    restore(config, snapshot, to_url=mysql_url, force=True)
    assert open_engine(mysql_url).fingerprint().compare(before) == []
    assert service.status(config)["current"] == "d2_0003"
    assert service.history(config)["runs"][-1]["result"] == "failed"  # the restore did not erase the record


@pytest.mark.parametrize("kind", [pytest.param("sqlite", id="sqlite"),
                                  pytest.param("pg", id="pg", marks=pytest.mark.postgres),
                                  pytest.param("mysql", id="mariadb", marks=pytest.mark.mysql)])
def test_blocked_migration_fails_within_the_lock_timeout(kind: str, request: pytest.FixtureRequest,
                                                         tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}" if kind == "sqlite" else request.getfixturevalue(f"{kind}_url_factory")()
    create(url, size="small")
    config = config_for(tmp_path, url, lock_timeout_seconds=1)
    service.up(config, to="d2_0002", safety_backup=False)
    holder_engine = sa.create_engine(parse(url).to_sqlalchemy())
    holder = holder_engine.connect()
    if kind == "sqlite":
        holder.exec_driver_sql("BEGIN IMMEDIATE")  # a writer in the middle of its transaction
    holder.execute(sa.text("SELECT COUNT(*) FROM contacts")).scalar()  # a long report, transaction still open
    reader_waited: list[float] = []

    def crm_reader() -> None:  # another CRM session, arriving while the migration waits
        time.sleep(0.3)
        engine = sa.create_engine(parse(url).to_sqlalchemy())
        with engine.connect() as conn:
            started = time.monotonic()
            conn.execute(sa.text("SELECT COUNT(*) FROM contacts")).scalar()
            reader_waited.append(time.monotonic() - started)
        engine.dispose()

    reader = threading.Thread(target=crm_reader)
    reader.start()
    started = time.monotonic()
    try:
        with pytest.raises(MigrationFailed) as failed:
            service.up(config, to="head", safety_backup=False)
        took = time.monotonic() - started
    finally:
        reader.join(timeout=30)
        holder.rollback()
        holder.close()
        holder_engine.dispose()
    line = failed.value.line()
    assert "revision d2_0003 waited more than the lock timeout (1 s)" in line, line
    assert "nothing was changed" in line or "none of its statements took effect" in line
    assert took < 3.5, took
    assert reader_waited and reader_waited[0] < 2.0, reader_waited
    print(f"{kind}: migration gave up after {took:.2f} s; a CRM read waited {reader_waited[0]:.2f} s")
    assert service.status(config)["current"] == "d2_0002"
    service.up(config, to="head", safety_backup=False)  # the holder is gone: it goes through


def test_drift_reports_a_hand_added_column_and_a_dropped_index(db_url: str, tmp_path: Path) -> None:
    create(db_url, size="small")
    config = config_for(tmp_path, db_url)
    assert service.drift(config) == []
    drop = "DROP INDEX ix_contacts_email" + (" ON contacts" if db_url.startswith("mysql") else "")
    sql(db_url, "ALTER TABLE contacts ADD COLUMN wechat_id VARCHAR(64)", drop)
    found = {(d.kind, d.name, d.table, d.change) for d in service.drift(config)}
    assert found == {("column", "wechat_id", "contacts", "unexpected"),
                     ("index", "ix_contacts_email", "contacts", "missing")}


def _plain_sql(url: str, revision: str, tmp_path: Path) -> list[str]:
    """The schema of `revision` as plain SQL statements, as a CRM installer ships it (no alembic_version)."""
    plan = service.plan(config_for(tmp_path / "plain", url), to=revision, sql=True)
    statements: list[str] = []
    for r in plan["revisions"]:
        assert r["sql"], r["sql_error"]
        for s in r["sql"].split(";\n"):
            text = "\n".join(line for line in s.splitlines() if not line.startswith("--")).strip()
            if text and "alembic_version" not in text and text.upper() not in ("BEGIN", "COMMIT"):
                statements.append(text)
    return statements


def test_baseline_adopts_a_database_built_from_plain_sql_and_refuses_one_that_differs(db_url: str,
                                                                                     tmp_path: Path) -> None:
    if db_url.startswith("sqlite"):
        import sqlite3

        sqlite3.connect(db_url[len("sqlite:///"):]).close()  # an empty database file, as an installer makes
    statements = _plain_sql(db_url, "d1_0002", tmp_path)
    assert any(s.startswith("CREATE TABLE opportunities") for s in statements)
    sql(db_url, *statements)
    config = config_for(tmp_path, db_url)
    assert service.status(config)["current"] is None
    # the wrong revision: d1_0003 expects the audit log, its trigger and the pipeline view
    with pytest.raises(MigrationRefused) as refused:
        service.baseline(config, rev="d1_0003")
    assert "does not match revision d1_0003" in refused.value.line()
    kinds = {(d["kind"], d["name"], d["change"]) for d in refused.value.differences}  # type: ignore[attr-defined]
    assert {("table", "audit_log", "missing"), ("view", "pipeline_summary", "missing"),
            ("trigger", "trg_opportunity_stage", "missing")} <= kinds
    assert service.status(config)["current"] is None
    adopted = service.baseline(config, rev="d1_0002")
    assert adopted["stamped"] and adopted["differences"] == []
    assert service.status(config)["current"] == "d1_0002"
    assert service.up(config, to="1.0", safety_backup=False).to_revision == "d1_0003"  # now it migrates


def test_baseline_refuses_a_schema_changed_by_hand(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path / 'crm.db'}"
    sqlite3.connect(tmp_path / "crm.db").close()
    statements = _plain_sql(url, "d1_0002", tmp_path)
    statements = [s for s in statements if "ix_activities_occurred" not in s]
    sql(url, *statements, "ALTER TABLE accounts ADD COLUMN vat_id VARCHAR(32)")
    with pytest.raises(MigrationRefused) as refused:
        service.baseline(config_for(tmp_path, url), rev="d1_0002")
    line = refused.value.line()
    assert "index ix_activities_occurred on activities: expected but missing" in line
    assert "column accounts.vat_id: in the database but not in the migrations" in line


@pytest.mark.postgres
@pytest.mark.docker
def test_without_createdb_the_expected_schema_is_built_in_a_sandbox(pg_admin_url: str, pg_url: str,
                                                                    docker_client: object, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A CRM user that may not create databases: drift builds the expected schema in a container instead."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    role, password = f"crm_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    database = make_url(pg_url).database
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN NOCREATEDB PASSWORD '{password}'")
        conn.execute(f'ALTER DATABASE "{database}" OWNER TO {role}')
    try:
        url = make_url(pg_url).set(username=role, password=password).render_as_string(hide_password=False)
        with psycopg.connect(pg_admin_url.rsplit("/", 1)[0] + f"/{database}", autocommit=True) as conn:
            conn.execute(f"ALTER SCHEMA public OWNER TO {role}")
        create(url, size="small")
        sql(url, "ALTER TABLE leads ADD COLUMN wechat_id VARCHAR(64)")
        config = config_for(tmp_path, url)
        with caplog.at_level("INFO", logger="crmops.migrate"):
            found = [(d.kind, d.name, d.change) for d in service.drift(config)]
        assert found == [("column", "wechat_id", "unexpected")]
        assert "permission denied to create database" in caplog.text and "in a sandbox" in caplog.text
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_deferred_precheck_refuses_just_before_its_revision(db_url: str, tmp_path: Path) -> None:
    """A data step earlier in the same run creates the duplicates; the check runs after it, before the unique step."""
    scripts = copy_demo_scripts(tmp_path)
    (scripts / "versions" / "x_0001_region.py").write_text(REVISION.format(
        rev="x_0001", down="d2_0003", body="\n    ".join([
            'op.add_column("leads", sa.Column("region", sa.String(20)))',
            "op.execute(\"UPDATE leads SET region = 'east' WHERE id <= 3\")"])))
    (scripts / "versions" / "x_0002_unique_region.py").write_text(REVISION.format(
        rev="x_0002", down="x_0001", body='op.create_index("uq_leads_region", "leads", ["region"], unique=True)'))
    create(db_url, size="small", version="2.0")
    config = config_for(tmp_path, db_url, script_location=str(scripts))
    plan = service.plan(config)
    assert plan["prechecks_up_front"] == 0 and plan["revisions"][1]["prechecks"]
    with pytest.raises(MigrationRefused) as refused:
        service.up(config, safety_backup=False)
    line = refused.value.line()
    assert "revision x_0002 (line 16) adds unique (region) on leads, but 1 value(s) occur more than once: " \
           "'east' (3 rows)" in line
    if db_url.startswith("mysql"):
        assert "x_0001 of this run stayed applied; the database is at x_0001" in line
        assert service.status(config)["current"] == "x_0001"
    else:
        assert "nothing was changed (the whole run was rolled back)" in line
        assert service.status(config)["current"] == "d2_0003"


def test_an_env_py_that_ignores_the_connection_is_reported(tmp_path: Path) -> None:
    scripts = copy_demo_scripts(tmp_path)
    env = scripts / "env.py"
    env.write_text(env.read_text().replace('connection = config.attributes.get("connection")', "connection = None"))
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    create(url, size="small")
    from crmops.errors import ConfigError

    config = config_for(tmp_path, url, script_location=str(scripts))
    with pytest.raises(ConfigError, match=r"env.py does not use the connection crmops passes .*nothing was run"):
        service.up(config, safety_backup=False)
    assert service.status(config)["current"] == "d1_0003"


@pytest.mark.postgres
def test_concurrent_index_runs_revision_by_revision_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    """CREATE INDEX CONCURRENTLY cannot run in a transaction: such a run goes revision by revision."""
    scripts = copy_demo_scripts(tmp_path)
    (scripts / "versions" / "x_0001_concurrent.py").write_text(REVISION.format(
        rev="x_0001", down="d2_0003", body="with op.get_context().autocommit_block():\n        "
        'op.create_index("ix_leads_company", "leads", ["company"], postgresql_concurrently=True)'))
    (scripts / "versions" / "x_0002_broken.py").write_text(REVISION.format(
        rev="x_0002", down="x_0001", body='op.add_column("leads", sa.Column("region", sa.String(20)))\n'
                                          '    op.execute("SELECT 1 / 0")'))
    create(pg_url, size="small", version="2.0")
    config = config_for(tmp_path, pg_url, script_location=str(scripts))
    assert [f.rule for f in service.lint(config, to="x_0001")] == ["empty-downgrade"]  # no index-not-concurrent
    assert service.plan(config)["transaction"].startswith("per revision (x_0001 needs autocommit")
    with pytest.raises(MigrationFailed) as failed:
        service.up(config, safety_backup=False)
    line = failed.value.line()
    assert "revision x_0002 (up) failed: DivisionByZero" in line
    assert "revision x_0002 was rolled back" in line and "x_0001 of this run completed" in line
    assert "`crmops migrate down --to d2_0003`" in line
    assert service.status(config)["current"] == "x_0001"
    [(valid,)] = sql(pg_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_leads_company'::regclass")
    assert valid
    assert sql(pg_url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'leads' "
                       "AND column_name = 'region'") == []


def test_ctrl_c_midway_is_journalled_with_what_ran(tmp_path: Path) -> None:
    url, config = sqlite_crm_2_with(tmp_path, "x_0001_stopped", 'op.add_column("leads", sa.Column("region", '
                                    'sa.String(20)))\n    raise KeyboardInterrupt')
    with pytest.raises(Interrupted, match="in revision x_0001; its changes were rolled back"):
        service.up(config, safety_backup=False)
    end = service.journal_for(config).records()[-1]
    assert (end["event"], end["result"], end["at"], end["rolled_back"]) == ("run-end", "interrupted", "x_0001", True)
    assert "ADD COLUMN region" in end["ran"][0]["sql"]
    assert service.status(config)["current"] == "d2_0003"
    assert "region" not in {c for (c,) in sql(url, "SELECT name FROM pragma_table_info('leads')")}
