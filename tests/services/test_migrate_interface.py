"""The migrate service's interface, as `crmops upgrade` calls it: names, keywords and result shapes.

Runs for real on a small SQLite demo CRM; the other engines are covered in test_migrate_engines.py.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from crmops.config import Config
from crmops.democrm.load import create
from crmops.errors import MigrationFailed, MigrationRefused
from crmops.services import migrate as service


def _config(tmp_path: Path, url: str) -> Config:
    return Config.model_validate({"database": {"url": url}, "state_dir": str(tmp_path / "state"),
                                  "repository": {"url": f"file://{tmp_path / 'repo'}"},
                                  "encryption": {"passphrase": "interface test passphrase"}})


def test_signatures_are_what_upgrade_relies_on() -> None:
    params = inspect.signature(service.migrate).parameters
    assert {"config", "to", "url", "safety_backup", "tags"} <= set(params)
    assert params["safety_backup"].default is True and tuple(params["tags"].default) == ("pre-migrate",)
    for fn in (service.status, service.lint, service.drift):
        assert "url" in inspect.signature(fn).parameters
    assert "to" in inspect.signature(service.lint).parameters
    assert MigrationFailed.exit_code == 40 and MigrationRefused.exit_code == 41


def test_status_migrate_lint_drift_shapes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    create(url, size="small")
    config = _config(tmp_path, url)
    # the default database.url is elsewhere: url= must win everywhere
    config.database.url = f"sqlite:///{tmp_path / 'elsewhere.db'}"

    s = service.status(config, url=url)
    assert s["current"] == "d1_0003" and s["heads"] == ["d2_0003"]
    assert [p["revision"] for p in s["pending"]] == ["d2_0001", "d2_0002", "d2_0003"]
    assert all(p["message"] for p in s["pending"])

    findings = service.lint(config, url=url)
    assert {f.rule for f in findings} == {"empty-downgrade"}  # d2_0002 keeps merged contacts merged
    f = findings[0]
    assert (f.revision, f.severity) == ("d2_0002", "warning") and f.line > 0 and f.why

    result = service.migrate(config, to="head", url=url, safety_backup=False)
    d = result.to_dict()
    assert (d["from"], d["to"], d["safety_snapshot"]) == ("d1_0003", "d2_0003", None)
    assert [r["revision"] for r in d["revisions"]] == ["d2_0001", "d2_0002", "d2_0003"]
    assert all(r["seconds"] >= 0 for r in d["revisions"]) and d["seconds"] > 0
    assert service.status(config, url=url)["pending"] == []
    assert service.drift(config, url=url) == []

    back = service.migrate(config, to="1.0", url=url, safety_backup=False).to_dict()
    assert (back["direction"], back["to"]) == ("down", "d1_0003")
    runs = service.history(config, url=url)["runs"]
    assert [r["result"] for r in runs] == ["ok", "ok"] and runs[0]["revisions"][0]["revision"] == "d2_0001"
    assert (tmp_path / "state" / "migrations" / "journal.jsonl").is_file()


def test_safety_snapshot_is_taken_and_recorded(tmp_path: Path) -> None:
    from crmops.repository import Repository, credential, open_repository
    from crmops.storage import open_store

    url = f"sqlite:///{tmp_path / 'crm.db'}"
    create(url, size="small")
    config = _config(tmp_path, url)
    Repository.init(open_store(config.repository.url, config.repository), credential(config), chunk_avg=64 * 1024)
    result = service.migrate(config, to="d2_0001", tags=("pre-migrate", "upgrade-2.0"))
    assert result.safety_snapshot
    manifest = open_repository(config).manifest(result.safety_snapshot)
    assert set(manifest["tags"]) == {"pre-migrate", "upgrade-2.0"} and manifest["schema_revision"] == "d1_0003"
    assert service.history(config)["runs"][-1]["safety_snapshot"] == result.safety_snapshot


def test_bad_target_is_one_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    create(url, size="small")
    from crmops.errors import ConfigError

    with pytest.raises(ConfigError, match="revision 'nope' is not in"):
        service.migrate(_config(tmp_path, url), to="nope", safety_backup=False)


def test_a_second_migration_at_the_same_time_is_refused(tmp_path: Path) -> None:
    from crmops.errors import LockBusy

    url = f"sqlite:///{tmp_path / 'crm.db'}"
    create(url, size="small")
    config = _config(tmp_path, url)
    with service.journal_for(config).lock(), pytest.raises(LockBusy, match="another crmops migration is running"):
        service.migrate(config, to="head", safety_backup=False)
    assert service.status(config)["current"] == "d1_0003"
