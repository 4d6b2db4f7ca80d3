"""Engine upgrades end to end: PostgreSQL 13 -> 17 and MariaDB 10.5 -> 11.8 with the shipped playbooks.

"Production" is a server container of the old version and an empty database on a server of
the new one; the application is the demo app in a container, its connection a file. The dry
run rehearses in a sandbox of the target version; a failure injected at each stage leaves
the old server serving with its data byte-for-byte unchanged (native digest before/after)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from crmops.engines import open_engine
from tests.matrix.digest import native_digest
from tests.matrix.servers import BY_ID, Server, run_server
from tests.upgrade.upgrade_helpers import ROOT, app_container, prepared
from tests.verify.verify_helpers import first_json, run

pytestmark = [pytest.mark.docker, pytest.mark.matrix, pytest.mark.slow]

CASES = [pytest.param(("pg13", "pg17", "democrm-postgres-13-to-17.yaml"), id="pg13-to-pg17"),
         pytest.param(("mariadb10_5", "mariadb11_8", "democrm-mariadb-10.5-to-11.8.yaml"), id="mariadb10_5-to-11_8")]


@pytest.fixture(scope="module", params=CASES)
def servers(request: pytest.FixtureRequest, docker_client) -> Iterator[tuple[Server, Server, str]]:  # type: ignore[no-untyped-def]
    old_id, new_id, playbook = request.param
    with run_server(docker_client, BY_ID[old_id]) as old, run_server(docker_client, BY_ID[new_id]) as new:
        yield old, new, playbook


def _playbook(tmp: Path, name: str, new: Server, new_db: str, old_url: str, app_url: str, *,
              edit: Any = None) -> Path:
    doc = yaml.safe_load((ROOT / "playbooks" / name).read_text())
    doc["window"] = {"timezone": "UTC"}  # the tests do not wait for a weekend night
    scheme = "postgresql" if new.version.engine == "postgresql" else "mysql"
    user = "postgres" if scheme == "postgresql" else "root"
    doc["vars"].update({
        "new_db_url": f"{scheme}://{user}:${{NEW_DB_PASSWORD}}@127.0.0.1:{new.port}/{new_db}",
        "old_db_url": old_url, "app_db_file": str(tmp / "database.url"), "app_url": app_url,
        "maintenance_flag": str(tmp / "maintenance.flag")})
    for stage in doc["stages"]:
        for step in stage["steps"]:
            if step.get("id") == "health":
                step.update(retries=1, retry_delay=0.5)
    if edit is not None:
        edit(doc)
    path = tmp / f"{new_db}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _stage(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["stages"] if s["name"] == name)


def _fail_maintenance(doc: dict[str, Any]) -> None:
    _stage(doc, "maintenance")["steps"][0]["shell"]["command"] = "echo 'flag folder is read-only' >&2; exit 3"


def _fail_backup(doc: dict[str, Any]) -> None:
    _stage(doc, "backup")["steps"].append({"type": "shell", "command": "exit 4"})


def _fail_engine(doc: dict[str, Any]) -> None:
    _stage(doc, "engine")["steps"][0]["smoke_sql"].append({"sql": "SELECT count(*) FROM contacts", "expect": -1})


def _fail_switch(doc: dict[str, Any]) -> None:
    _stage(doc, "switch")["steps"][1]["url"] = "http://127.0.0.1:9/health"  # nothing listens: health fails


def _fail_reopen(doc: dict[str, Any]) -> None:
    _stage(doc, "reopen")["steps"].insert(0, {"type": "shell", "command": "exit 5"})


def test_engine_upgrade_dry_run_then_rollback_from_each_stage_then_real(servers, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                         docker_client) -> None:
    old, new, name = servers
    url = old.create_database()
    config = prepared(tmp_path, url)
    before = native_digest(url)
    env = {"NEW_DB_PASSWORD": new.password, "OLD_DB_PASSWORD": old.password}
    app_url_text = url.replace(f":{old.password}@", ":${OLD_DB_PASSWORD}@")  # what the app's file holds
    (tmp_path / "database.url").write_text(app_url_text + "\n")

    with app_container(docker_client) as app:
        # the dry run: a sandbox of the target version, every table compared, the copy measured
        target = new.create_database().rsplit("/", 1)[1]
        dry = run(config, "--json", "upgrade", str(_playbook(tmp_path, name, new, target, app_url_text, app.url)),
                  "--dry-run", env=env)
        report = first_json(dry.stdout)
        assert dry.returncode == 0, dry.stderr + dry.stdout[-3000:]
        copy = next(p for p in report["plan"] if p["step"] == "copy")
        assert copy["mode"] == "rehearsed" and copy["ok"] and copy["measured"] and copy["seconds"] > 0, copy
        found = copy["report"]
        assert copy["seconds"] == found["seconds"]  # the forecast holds the copy, not the sandbox's start-up
        assert found["target_version"].startswith(new.version.major + ".") and found["incompatibilities"] == []
        assert found["differences"] == [] and found["tables"] >= 10 and all(s["ok"] for s in found["smoke"])
        assert new.version.image in copy["summary"] or found["target_version"]
        assert open_engine(new.url(target)).is_empty()  # the dry run never touched the new server

        # a failure at each stage: rolled back, the old server serving and unchanged
        for stage, fault in (("maintenance", _fail_maintenance), ("backup", _fail_backup),
                             ("engine", _fail_engine), ("switch", _fail_switch), ("reopen", _fail_reopen)):
            target = new.create_database().rsplit("/", 1)[1]
            r = run(config, "--json", "upgrade", str(_playbook(tmp_path, name, new, target, app_url_text, app.url,
                                                               edit=fault)), env=env)
            out = first_json(r.stdout)
            assert r.returncode == 50, (stage, r.stderr, r.stdout[-2000:])
            failed = next(s for s in out["steps"] if s["ok"] is False)
            assert failed["stage"] == stage, (stage, failed)
            assert (tmp_path / "database.url").read_text().strip() == app_url_text, stage
            assert not (tmp_path / "maintenance.flag").exists(), stage
            assert native_digest(url) == before, f"the old server changed after a failure in {stage}"
            assert old.server_version()  # still serving

        # the real run: the application now points at the new server, which holds the same rows
        target = new.create_database().rsplit("/", 1)[1]
        playbook = _playbook(tmp_path, name, new, target, app_url_text, app.url)
        r = run(config, "--json", "upgrade", str(playbook), env=env)
        out = first_json(r.stdout)
        assert r.returncode == 0, r.stderr + r.stdout[-3000:]
        assert "${NEW_DB_PASSWORD}@127.0.0.1" in (tmp_path / "database.url").read_text()
        assert new.password not in json.dumps(out) and old.password not in dry.stdout + r.stdout
        new_url = new.url(target)
        assert open_engine(new_url).fingerprint(method=open_engine(url).fingerprint().method).compare(
            open_engine(url).fingerprint()) == []
        assert native_digest(url) == before


def test_dry_run_names_what_the_target_version_rejects(docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL 14 removed postfix operators: a 13 database using one cannot be restored into 17 as it is."""
    import psycopg

    from crmops.config import Config
    from crmops.engine_upgrade.logical import rehearse

    with run_server(docker_client, BY_ID["pg13"]) as old:
        url = old.create_database()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE invoices (id int PRIMARY KEY, amount numeric)")
            conn.execute("INSERT INTO invoices VALUES (1, 10.5), (2, 99)")
            conn.execute("CREATE FUNCTION fact(bigint) RETURNS numeric AS 'SELECT 1::numeric' LANGUAGE sql")
            conn.execute("CREATE OPERATOR !!! (LEFTARG = bigint, PROCEDURE = fact)")
        before = native_digest(url)
        cfg = Config.model_validate({"database": {"url": url}, "repository": {"url": f"file://{tmp_path}/r"}})
        report = rehearse(cfg, url, "17", smoke=[{"sql": "SELECT count(*) FROM invoices", "expect": 2}])
        assert report["target_version"].startswith("17.") and report["image"] == "postgres:17"
        assert [i["object"] for i in report["incompatibilities"]] == ["OPERATOR !!!"], report["incompatibilities"]
        assert "postfix operators are not supported" in report["incompatibilities"][0]["error"]
        # everything else arrived and holds
        assert report["differences"] == [] and report["smoke"][0]["ok"] and report["seconds"] > 0
        assert native_digest(url) == before
