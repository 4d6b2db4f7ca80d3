"""`--json` prints exactly one JSON document on stdout, for every command and every exit code.

Each command group runs once where it succeeds and once where it fails (the cheapest real
failure: a missing repository, an unreachable server, a bad argument), and stdout must parse
with json.loads as a whole. A failure is the error envelope, with the command's result (or
null) inside; a success is the result itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from crmops.cli.main import COMMANDS

PASSPHRASE = "json contract passphrase"
UNREACHABLE = "postgresql://crm@127.0.0.1:1/crm"  # nothing listens on port 1: refused at once


def run(cwd: Path, *args: str, docker: bool = False) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    full["TEST_PASSPHRASE"] = PASSPHRASE
    if not docker:
        full["DOCKER_HOST"] = "tcp://127.0.0.1:1"  # nothing answers: the cheapest Docker failure
    return subprocess.run([sys.executable, "-m", "crmops", *args], capture_output=True, text=True, cwd=cwd,
                          env=full, timeout=120)


def one_document(r: subprocess.CompletedProcess[str]) -> Any:
    try:
        return json.loads(r.stdout)
    except ValueError as e:
        raise AssertionError(f"stdout is not one JSON document ({e}): {r.stdout[:800]!r}\nstderr: {r.stderr}") from None


def _config(bed: Path, name: str, repo: Path, **extra: Any) -> str:
    cfg = {"database": {"url": f"sqlite:///{bed / 'crm.db'}"}, "repository": {"url": f"file://{repo}"},
           "encryption": {"passphrase": "${TEST_PASSPHRASE}"},
           "state_dir": str(bed / f"state-{name}"),  # failed runs recorded elsewhere keep this status green
           "attachments": {"path": str(bed / "files")}, **extra}
    (bed / name).write_text(yaml.safe_dump(cfg))
    return str(bed / name)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SQLite demo CRM, a local repository holding one snapshot, and three configurations."""
    from crmops.democrm.load import create

    bed = tmp_path_factory.mktemp("json")
    create(f"sqlite:///{bed / 'crm.db'}", size="small", attachments_dir=bed / "files")
    _config(bed, "crmops.yaml", bed / "repo")
    _config(bed, "norepo.yaml", bed / "missing-repo")
    _config(bed, "copies.yaml", bed / "repo", copies=[{"name": "usb", "url": f"file://{bed / 'usb'}"}])
    # its own repository: the failed verification it records must not turn the main one's status red
    _config(bed, "failing.yaml", bed / "failing-repo", verify={"assertions": [
        {"name": "no contacts at all", "sql": "SELECT count(*) FROM contacts", "expect": 0}]})
    for config in ("crmops.yaml", "failing.yaml"):
        assert run(bed, "--config", config, "repo", "init").returncode == 0
        assert run(bed, "--config", config, "backup").returncode == 0
    (bed / "broken.yaml").write_text("name: [1, 2\n")
    return bed


NOREPO = ("--config", "norepo.yaml")

#: command -> (arguments that succeed, arguments that fail, the failure's exit code)
CASES: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...], int]] = {
    "init": (("init", "--path", "new.yaml"), ("init",), 3),
    "config": (("config", "show"), ("--config", "broken.yaml", "config", "show"), 3),
    "demo": (("demo", "create", "--url", "sqlite:///demo2.db", "--no-attachments"),
             ("demo", "create", "--url", UNREACHABLE), 10),
    "db": (("db", "check"), ("db", "check", "--url", UNREACHABLE), 10),
    "repo": (("repo", "info"), ("repo", "init"), 29),
    "key": (("key", "list"), ("key", "remove", "nosuchslot"), None),
    "backup": (("backup", "--tag", "contract"), (*NOREPO, "backup"), 22),
    "snapshots": (("snapshots",), (*NOREPO, "snapshots"), 22),
    "restore": (("restore", "latest", "--to", "sqlite:///restored.db"), ("restore", "nosuch", "--to",
                                                                          "sqlite:///other.db"), 28),
    "forget": (("forget", "--dry-run"), (*NOREPO, "forget", "--dry-run"), 22),
    "prune": (("prune", "--dry-run"), (*NOREPO, "prune", "--dry-run"), 22),
    "check": (("check",), (*NOREPO, "check"), 22),
    "verify": (("verify",), ("--config", "failing.yaml", "verify"), 30),
    "drill": (("drill", "--report-dir", "drills"), ("--config", "failing.yaml", "drill", "nosuch"), 28),
    "sandbox": (None, ("sandbox", "list"), 31),  # success needs Docker: test_sandbox_list_is_one_document
    "migrate": (("migrate", "status"), ("migrate", "status", "--url", UNREACHABLE), 10),
    "upgrade": (("upgrade", "history"), ("upgrade", "--check", "missing-playbook.yaml"), None),
    "schedule": (("schedule", "show", "--unit-dir", "units", "--cron-file", "cron"),
                 ("--config", "missing.yaml", "schedule", "install", "--unit-dir", "units", "--no-systemctl"), 3),
    "report": (("report", "--html", "status.html"), ("report", "--html", "/proc/no/status.html"), 3),
    "status": (("status",), (*NOREPO, "status"), 61),
    "undo": (("undo", "--table", "contacts", "--where", "id IN (1, 2)"),
             (*NOREPO, "undo", "--table", "contacts", "--where", "id = 1"), 22),
    "repair": (("repair", "--dry-run"), (*NOREPO, "repair", "--dry-run"), 22),
    "unlock": (("unlock",), (*NOREPO, "unlock"), 22),
    "wal": (("wal", "status"), (*NOREPO, "wal", "status"), 22),
    # success needs a MariaDB with binary logging: tests/pitr/test_binlog.py
    "binlog": (None, ("binlog", "setup"), 3),
    "copy": (("--config", "copies.yaml", "copy"), ("copy",), 3),  # crmops.yaml configures no copies
}


@pytest.mark.parametrize(("args", "code"), [
    (("wal", "stream", "--url", "sqlite:///crm.db"), 3),  # not PostgreSQL
    (("wal", "stream", "--url", UNREACHABLE), 10),
    (("wal", "stream", "--url", "postgresql://127.0.0.1/postgres", "--slot", "Bad-Slot"), 3),
])
def test_wal_stream_failures_are_one_document(bed: Path, args: tuple[str, ...], code: int) -> None:
    """Its success (the summary printed when it is stopped) is in tests/pitr/test_wal_stream.py."""
    r = run(bed, "--json", *args)
    doc = one_document(r)
    assert r.returncode == code and doc["ok"] is False and doc["exit_code"] == code, r.stderr


def test_every_command_has_a_case() -> None:
    """A new command in COMMANDS needs a success and a failure here (or the sandbox's Docker test)."""
    assert set(COMMANDS) <= set(CASES), f"add --json cases for {sorted(set(COMMANDS) - set(CASES))}"


@pytest.mark.parametrize("command", list(CASES))
def test_success_and_failure_are_one_document_each(bed: Path, command: str) -> None:
    good, bad, code = CASES[command]
    if good is not None:
        r = run(bed, "--json", *good)
        assert r.returncode == 0, r.stderr
        one_document(r)
    r = run(bed, "--json", *bad)
    assert r.returncode != 0 and (code is None or r.returncode == code), (r.returncode, r.stderr)
    doc = one_document(r)
    assert doc["ok"] is False and doc["exit_code"] == r.returncode and doc["message"] and "result" in doc
    assert r.stderr.startswith("crmops: error: ") and doc["message"] in r.stderr


def test_failed_verdicts_carry_their_result(bed: Path) -> None:
    """status (61) and verify (30) used to print the result and then the error: now the result is inside."""
    status = one_document(run(bed, "--json", *NOREPO, "status"))
    assert status["error"] == "status-red" and status["result"]["level"] == "red"
    verify = one_document(run(bed, "--json", "--config", "failing.yaml", "verify"))
    assert verify["exit_code"] == 30 and verify["result"]["ok"] is False
    assert "no contacts at all" in verify["result"]["first_failure"]


@pytest.mark.parametrize("args", [("--json", "backup", "--no-such-option"), ("backup", "--json"),
                                  ("--json", "frobnicate"), ("--json", "--bogus", "status"), ("--json", "migrate")])
def test_usage_errors_with_json_anywhere_are_one_envelope(bed: Path, args: tuple[str, ...]) -> None:
    r = run(bed, *args)
    assert r.returncode == 2
    doc = one_document(r)
    assert doc == {"ok": False, "error": "usage", "message": doc["message"], "exit_code": 2, "result": None}


def test_sandbox_list_is_one_document(bed: Path, docker_client: Any) -> None:
    r = run(bed, "--json", "sandbox", "list", docker=True)
    assert r.returncode == 0, r.stderr
    assert isinstance(one_document(r), list)
