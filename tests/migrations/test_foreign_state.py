"""A database another tool migrates (Django, Tryton ...): `crmops migrate` says it cannot see that
state, and refuses to apply Alembic revisions to it, with nothing changed."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from crmops.cli.main import main


def _crmops(config: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["--config", str(config), *args])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def django_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("TEST_PASSPHRASE", "foreign state passphrase")
    db = tmp_path / "crm.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE django_migrations (id integer primary key, app text, name text, applied text)")
        conn.executemany("INSERT INTO django_migrations (app, name, applied) VALUES (?, ?, '2026-01-01')",
                         [("crm", f"{i:04d}_step") for i in range(1, 12)])
        conn.execute("CREATE TABLE crm_company (id integer primary key, full_name text)")
    cfg = {"database": {"url": f"sqlite:///{db}"}, "state_dir": str(tmp_path / "state"),
           "repository": {"url": f"file://{tmp_path / 'repo'}"}, "encryption": {"passphrase": "${TEST_PASSPHRASE}"}}
    config = tmp_path / "crmops.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return config, db


def test_status_names_the_tool_that_keeps_the_migrations(django_db: tuple[Path, Path]) -> None:
    config, _ = django_db
    code, out, _ = _crmops(config, "--json", "migrate", "status")
    s = json.loads(out)
    assert code == 0 and s["current"] is None and s["pending"] == [] and not s["up_to_date"]
    assert s["foreign"]["tool"] == "Django" and s["foreign"]["rows"] == 11
    assert "not by Alembic: crmops cannot see which are pending" in s["foreign"]["note"]
    code, out, _ = _crmops(config, "migrate", "status")
    assert code == 0 and "not Alembic" in out and "python manage.py showmigrations" in out


@pytest.mark.parametrize("args", [("migrate", "up"), ("migrate", "plan"), ("migrate", "drift")])
def test_alembic_commands_refuse_it_and_change_nothing(django_db: tuple[Path, Path], args: tuple[str, ...]) -> None:
    config, db = django_db
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    code, out, err = _crmops(config, *args)
    assert code != 0 and "kept by Django" in err and "Traceback" not in err
    assert err.startswith("crmops: error:")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
