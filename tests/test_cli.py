"""The command line's contract: help, version, one-line errors with distinct exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from crmops import __version__


def crmops(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "crmops", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=60)


def test_help_lists_command_groups() -> None:
    r = crmops("--help")
    assert r.returncode == 0
    for word in ("config", "init"):
        assert word in r.stdout


def test_version() -> None:
    r = crmops("--version")
    assert r.returncode == 0 and __version__ in r.stdout


def test_bad_config_is_one_line_exit_3(tmp_path: Path) -> None:
    (tmp_path / "crmops.yaml").write_text("retention:\n  keep_daily: -1\n")
    r = crmops("config", "show", cwd=tmp_path)
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "retention.keep_daily" in r.stderr


def test_json_error_document(tmp_path: Path) -> None:
    r = crmops("--json", "--config", str(tmp_path / "missing.yaml"), "config", "show")
    assert r.returncode == 3
    doc = json.loads(r.stdout)
    assert doc == {"ok": False, "error": "config", "message": doc["message"], "exit_code": 3, "result": None}


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "crmops.yaml").write_text("nonsense: 1\n")
    r = crmops("--debug", "config", "show", cwd=tmp_path)
    assert r.returncode == 3 and "Traceback" in r.stderr


def test_init_writes_a_starter_that_validates(tmp_path: Path) -> None:
    r = crmops("init", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "crmops.yaml").stat().st_mode & 0o077 == 0
    r = crmops("init", cwd=tmp_path)
    assert r.returncode == 3 and "--force" in r.stderr
    env = {"CRM_DB_PASSWORD": "dbpw-secret", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s3-secret"}
    r = crmops("--json", "config", "show", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "dbpw-secret" not in r.stdout and "s3-secret" not in r.stdout
    assert json.loads(r.stdout)["config"]["database"]["url"].startswith("postgresql://crm:")


def test_unknown_command_is_usage_error() -> None:
    r = crmops("frobnicate")
    assert r.returncode == 2


def test_readme_documents_every_exit_code() -> None:
    from crmops.errors import EXIT_CODES

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for code, meaning in EXIT_CODES.items():
        assert f"| {code} | {meaning} |" in readme, code


def test_url_options_read_secrets_from_the_environment(tmp_path: Path) -> None:
    import os

    from crmops.democrm.load import create

    create(f"sqlite:///{tmp_path / 'crm.db'}", size="small")
    env = {**os.environ, "CRM_DB_FILE": str(tmp_path / "crm.db")}
    r = crmops("--json", "db", "check", "--url", "sqlite:///${CRM_DB_FILE}", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["engine"] == "sqlite"
    unset = crmops("db", "check", "--url", "postgresql://crm:${CRM_NOT_SET}@127.0.0.1/crm", cwd=tmp_path, env=env)
    assert unset.returncode == 3 and unset.stderr.strip().count("\n") == 0
    assert "--url" in unset.stderr and "CRM_NOT_SET" in unset.stderr
    # a literal password still works, but crmops says where it can be read, without repeating it
    literal = crmops("db", "check", "--url", "postgresql://crm:hunter2@127.0.0.1:1/crm", cwd=tmp_path, env=env)
    assert literal.returncode == 10 and "--url holds a password on the command line" in literal.stderr
    assert "hunter2" not in literal.stderr + literal.stdout
