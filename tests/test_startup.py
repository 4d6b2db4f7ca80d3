"""Start-up cost: `--help` and `--version` must not pay for what only real work needs.

Timing on a shared machine is noise, so the test checks the cause instead: the heavy
libraries (pydantic through the configuration, rich, yaml, SQLAlchemy, boto3, docker,
ctypes) are not imported at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("pydantic", "rich", "yaml", "sqlalchemy", "boto3", "botocore", "docker", "ctypes", "alembic",
         "crmops.config")

PROBE = """
import contextlib, io, json, sys
from crmops.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main({args!r})
    except SystemExit:
        pass
heavy = {heavy!r}
print(json.dumps(sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy)))
"""


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["migrate", "--help"], ["schedule", "--help"],
                                  ["config", "--help"]])
def test_help_and_version_import_nothing_heavy(args: list[str]) -> None:
    r = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == []


#: what the backup and restore path, and the everyday listing commands, must not import
NOT_ON_THE_PATH = ("sqlalchemy", "alembic", "docker", "boto3", "botocore")


RUN_AND_PROBE = """
import json, sys
from crmops.cli.main import main
try:
    main({args!r})
    code = 0
except SystemExit as e:
    code = e.code
heavy = {heavy!r}
print(json.dumps([code, sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy)]))
"""


def _probe(args: list[str], cwd: Path, env: dict[str, str], ok: tuple[int, ...] = (0,),
           heavy: tuple[str, ...] = NOT_ON_THE_PATH) -> list[str]:
    r = subprocess.run([sys.executable, "-c", RUN_AND_PROBE.format(args=["--quiet", *args], heavy=heavy)],
                       capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    code, modules = json.loads(r.stdout.splitlines()[-1])
    assert code in ok, (args, r.stderr)
    return modules


def _one_contact_source(tmp_path: Path, pg_url_factory) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(source, target): a source with one contact, an empty target, and a config naming them by variable."""
    import psycopg

    source, target = pg_url_factory(), pg_url_factory()
    with psycopg.connect(source.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("CREATE TABLE contacts (id int PRIMARY KEY, name text); INSERT INTO contacts VALUES (1, 'a')")
    (tmp_path / "crmops.yaml").write_text(
        f"database:\n  url: ${{SOURCE_URL}}\nrepository:\n  url: file://{tmp_path}/repo\n"
        f"encryption:\n  passphrase: ${{PASSPHRASE}}\nstate_dir: {tmp_path}/state\n")
    return source, target


def test_backup_restore_and_listing_on_postgresql_import_no_sqlalchemy(tmp_path: Path,
                                                                      pg_url_factory) -> None:  # type: ignore[no-untyped-def]
    """SQLAlchemy (0.16 CPU-s of imports) was there only to parse the database URL."""
    import os

    source, target = _one_contact_source(tmp_path, pg_url_factory)
    env = {**os.environ, "SOURCE_URL": source, "TARGET_URL": target, "PASSPHRASE": "startup probe"}
    assert _probe(["repo", "init"], tmp_path, env) == []
    for args in (["backup"], ["snapshots"], ["restore", "latest", "--to", "${TARGET_URL}"]):
        assert _probe(args, tmp_path, env) == [], args
    assert _probe(["status"], tmp_path, env, ok=(0, 61)) == []  # red: never verified
    # with no channel configured, the notifiers
    everyday = ("crmops.notify", "tenacity", "smtplib")
    assert _probe(["snapshots"], tmp_path, env, heavy=everyday) == []
    assert _probe(["status"], tmp_path, env, ok=(0, 61), heavy=everyday) == []


def test_restore_into_postgresql_asks_psql_not_the_driver(tmp_path: Path,
                                                          pg_url_factory) -> None:  # type: ignore[no-untyped-def]
    """psycopg (about 0.18 CPU-s to import) is not imported by a whole restore: psql tells the target's
    version and whether it is empty. A target psql cannot log in to is asked through the driver, so
    the error is the one crmops always gave."""
    import os

    import psycopg

    source, target = _one_contact_source(tmp_path, pg_url_factory)
    wrong = target.replace("://postgres:", "://postgres:not-the-password-")
    assert wrong != target
    env = {**os.environ, "SOURCE_URL": source, "TARGET_URL": target, "WRONG_URL": wrong, "PASSPHRASE": "probe"}

    def probe(args: list[str], ok: tuple[int, ...] = (0,)) -> list[str]:
        r = subprocess.run([sys.executable, "-c", RUN_AND_PROBE.format(args=["--quiet", *args], heavy=("psycopg",))],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        code, modules = json.loads(r.stdout.splitlines()[-1])
        assert code in ok, (args, r.stderr)
        return modules

    assert "psycopg" in probe(["repo", "init"]) + probe(["backup"])  # a backup needs the driver
    assert probe(["restore", "latest", "--to", "${TARGET_URL}"]) == []
    with psycopg.connect(target.replace("+psycopg", "")) as conn:
        assert conn.execute("SELECT id, name FROM contacts").fetchall() == [(1, "a")]
    assert probe(["restore", "latest", "--to", "${TARGET_URL}"], ok=(60,)) == []  # not empty: refused
    assert "psycopg" in probe(["restore", "latest", "--to", "${WRONG_URL}"], ok=(11,))  # the driver's answer


def test_restore_into_mariadb_asks_the_client_not_the_driver(tmp_path: Path,
                                                             mysql_url_factory) -> None:  # type: ignore[no-untyped-def]
    """pymysql (0.06-0.08 CPU-s to import here) is not imported by a whole restore into MariaDB: the
    mariadb client tells the target's version and whether it is empty; a target it cannot log in to
    is asked through the driver, so the error is the one crmops always gave."""
    import os

    import pymysql
    from sqlalchemy.engine import make_url

    source, target = mysql_url_factory(), mysql_url_factory()
    u = make_url(source)
    conn = pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
                           database=u.database, autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE contacts (id int PRIMARY KEY, name text)")
        cur.execute("INSERT INTO contacts VALUES (1, 'a')")
    conn.close()
    (tmp_path / "crmops.yaml").write_text(
        f"database:\n  url: ${{SOURCE_URL}}\nrepository:\n  url: file://{tmp_path}/repo\n"
        f"encryption:\n  passphrase: ${{PASSPHRASE}}\nstate_dir: {tmp_path}/state\n")
    wrong = target.replace(f":{u.password}@", f":not-the-password-{u.password}@")
    assert wrong != target
    env = {**os.environ, "SOURCE_URL": source, "TARGET_URL": target, "WRONG_URL": wrong, "PASSPHRASE": "probe"}

    def probe(args: list[str], ok: tuple[int, ...] = (0,)) -> list[str]:
        return _probe(args, tmp_path, env, ok=ok, heavy=("pymysql",))

    assert "pymysql" in probe(["repo", "init"]) + probe(["backup"])  # a backup needs the driver
    assert probe(["restore", "latest", "--to", "${TARGET_URL}"]) == []
    assert probe(["restore", "latest", "--to", "${TARGET_URL}"], ok=(60,)) == []  # not empty: refused
    assert "pymysql" in probe(["restore", "latest", "--to", "${WRONG_URL}"], ok=(11,))  # the driver's answer


def test_verify_imports_sqlalchemy_and_docker_only_beside_its_sandbox_start() -> None:
    """verify's sandbox starts on a thread once the manifest is read; SQLAlchemy and the docker SDK (up to
    a second of imports on a busy machine) belong on that thread, not before it."""
    probe = ("import json, sys; import crmops.verify.workflow, crmops.cli.verify; "
             "print(json.dumps(sorted(m for m in ('sqlalchemy', 'docker') if m in sys.modules)))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == []
