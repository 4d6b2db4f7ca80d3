"""What a new administrator hit on first try: each case fails on the old code and is fixed here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import s3_client

PASSPHRASE = "first try passphrase"


def crmops(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    full.update({"TEST_PASSPHRASE": PASSPHRASE, "COLUMNS": "80", **(env or {})})
    return subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), *args], capture_output=True,
                          text=True, env=full, timeout=120)


def config(tmp_path: Path, repo_url: str, db_url: str | None = None, **repository: Any) -> Path:
    (tmp_path / "crm.db").touch()
    cfg = {"database": {"url": db_url or f"sqlite:///{tmp_path / 'crm.db'}"},
           "repository": {"url": repo_url, **repository}, "encryption": {"passphrase": "${TEST_PASSPHRASE}"},
           "state_dir": str(tmp_path / "state")}
    path = tmp_path / "crmops.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("crmops: error: "), r.stderr
    return r.stderr


def test_a_repository_path_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "backups").write_text("not a folder")
    cfg = config(tmp_path, f"file://{tmp_path / 'backups'}")
    for args in (("repo", "init"), ("backup",), ("snapshots",)):
        r = crmops(cfg, *args)
        assert r.returncode == 3, (args, r.stderr)  # a configuration mistake, not "endpoint does not answer"
        assert "is a file, not a folder" in one_line_error(r) and "repo init" in r.stderr
    nested = config(tmp_path, f"file://{tmp_path / 'backups' / 'crm'}")
    r = crmops(nested, "repo", "init")
    assert r.returncode == 3 and f"{tmp_path / 'backups'}, in the repository path, is a file" in r.stderr


def test_a_missing_bucket_is_named_and_repo_init_creates_it(tmp_path: Path, s3_endpoint: str) -> None:
    bucket = f"crm-missing-{os.getpid()}-{tmp_path.name[-6:]}".lower().replace("_", "-")
    cfg = config(tmp_path, f"s3://{bucket}/crm", s3={"endpoint_url": s3_endpoint})
    r = crmops(cfg, "backup")
    assert r.returncode == 22
    line = one_line_error(r)
    assert f"bucket {bucket} does not exist" in line and f"aws s3 mb s3://{bucket}" in line
    r = crmops(cfg, "repo", "init")
    assert r.returncode == 0, r.stderr
    assert f"created bucket {bucket}" in r.stdout
    s3_client(s3_endpoint).head_bucket(Bucket=bucket)
    assert crmops(cfg, "backup").returncode == 0


def test_migrate_plan_sql_on_postgresql_explains_what_it_cannot_show(tmp_path: Path, pg_url: str) -> None:
    from crmops.democrm.load import create

    create(pg_url, size="small", version="1.0")
    r = crmops(config(tmp_path, f"file://{tmp_path / 'repo'}", db_url=pg_url), "migrate", "plan", "--sql")
    assert r.returncode == 0, r.stderr
    assert "Error" not in r.stdout + r.stderr  # was: AttributeError: 'NoneType' object has no attribute 'all'
    assert "d2_0002" in r.stdout and "reads the database while it runs" in r.stdout
    assert "ALTER TABLE contacts ADD CONSTRAINT uq_contacts_email UNIQUE (email);" in r.stdout


def test_docker_unreachable_is_one_readable_line(tmp_path: Path) -> None:
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}")
    r = crmops(cfg, "sandbox", "list", env={"DOCKER_HOST": "tcp://127.0.0.1:1"})
    assert r.returncode == 31
    line = one_line_error(r)
    assert "does not answer: connection refused (start Docker" in line
    assert "HTTPConnectionPool" not in line and "Caused by" not in line  # was a raw exception cut at 160 characters


def test_literal_password_warning_names_the_option_as_typed(tmp_path: Path) -> None:
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}")
    r = crmops(cfg, "restore", "latest", "--to", "postgresql://crm:hunter2@127.0.0.1:1/crm")
    warning = r.stderr.splitlines()[0]
    assert warning.startswith("crmops: warning: --to holds a password on the command line"), r.stderr
    assert "to_url" not in r.stderr and "hunter2" not in r.stderr


def test_schedule_show_says_when_each_job_next_runs(tmp_path: Path) -> None:
    from datetime import datetime

    from crmops.services.schedule import next_run, next_run_text, parse_installed, parse_when

    tuesday = datetime(2026, 12, 1, 16, 0)
    assert next_run(parse_when("02:30"), tuesday) == datetime(2026, 12, 2, 2, 30)
    assert next_run(parse_when("sun 04:00"), tuesday) == datetime(2026, 12, 6, 4, 0)
    weekdays = parse_when("mon-fri 22:00")
    for written in (weekdays.on_calendar(), weekdays.cron()):  # what systemd and cron files hold
        assert parse_installed(written) == weekdays
    assert next_run(weekdays, datetime(2026, 12, 4, 23, 0)) == datetime(2026, 12, 7, 22, 0)  # Friday night
    assert next_run_text(weekdays.cron(), tuesday) == "Tue 2026-12-01 22:00 (in 6 h 0 min)"
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}")
    dirs = ("--unit-dir", str(tmp_path / "units"), "--cron-file", str(tmp_path / "cron"))
    for kind in ((), ("--cron",)):
        installed = crmops(cfg, "schedule", "install", *kind, "--verify", "sun 04:00", "--no-systemctl", *dirs)
        assert installed.returncode == 0, installed.stderr
        shown = crmops(cfg, "schedule", "show", *dirs).stdout
        assert re.search(r"next run: Sun \d{4}-\d\d-\d\d 04:00 \(in ", shown), shown


def test_one_rehearsal_is_singular() -> None:
    from crmops.status.verdicts import Overview, _upgrades_verdict

    def summary(n: int) -> str:
        ov = Overview(generated_at="", host="", repository="", upgrades=[{"dry_run": True}] * n)
        return _upgrades_verdict(ov).summary

    assert summary(1) == "1 rehearsal (dry run), no real upgrade"
    assert summary(2) == "2 rehearsals (dry runs), no real upgrade"


def test_help_summaries_are_whole_sentences_at_80_columns(tmp_path: Path) -> None:
    for args in ((), ("migrate",), ("schedule",)):
        r = crmops(tmp_path / "none.yaml", *args, "--help")
        cut = [line for line in r.stdout.splitlines() if line.endswith("...") and not line.startswith("Usage:")]
        assert r.returncode == 0 and not cut, cut
    top = " ".join(crmops(tmp_path / "none.yaml", "--help").stdout.split())
    assert "check Check that every manifest opens and every chunk it needs is present (and, optionally, intact)." in top


def test_tables_wrap_instead_of_cutting_cells_at_80_columns() -> None:
    from rich.console import Console

    from crmops.cli.context import table

    t = table("id", "time (UTC)", "tags", "engine", "schema", "size", "new")
    t.add_row("0123456789", "2026-12-01 16:14:40", "pre-restore,nightly", "postgresql 15.10", "d2_0003", "125.3 MB",
              "12.0 MB")
    console = Console(width=80, record=True)
    console.print(t)
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for word in ("postgresql", "pre-restore", "15.10", "125.3 MB"):
        assert word in text.replace("\n", " ") or word in "".join(text.split()), word


def test_config_show_and_repo_info_are_for_people(tmp_path: Path) -> None:
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}")
    assert crmops(cfg, "repo", "init").returncode == 0
    shown = crmops(cfg, "config", "show").stdout
    assert shown and not [line for line in shown.splitlines() if line != line.rstrip()]  # no padding to 80
    info = crmops(cfg, "repo", "info").stdout
    assert "{" not in info and "chunking    fastcdc, average 1,024 KiB" in info and "0 snapshots" in info
