"""pg_upgrade end to end: the shipped playbook upgrades a PostgreSQL 13 server in place to 17.

"Production" is a container of the image holding both versions (crmops-pg-upgrade:13-17),
13 running under pg_ctl with both data directories on one tmpfs; crmops reaches them with
`docker exec -u postgres`. The dry run rehearses in a throwaway box of the same image; a
failure injected at each stage leaves 13 serving with its data byte-for-byte unchanged
(native digest before/after), and link mode refuses to undo once 17 has run on its files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from crmops.engines import open_engine
from tests.matrix.digest import native_digest
from tests.matrix.servers import BY_ID, UpgradeHost, run_server, run_upgrade_host
from tests.upgrade.upgrade_helpers import ROOT, app_container, prepared
from tests.verify.verify_helpers import first_json, run

pytestmark = [pytest.mark.docker, pytest.mark.matrix, pytest.mark.slow]

PLAYBOOK = "democrm-postgres-13-to-17-pg_upgrade.yaml"
NEW_DATA = "/var/lib/postgresql/17/data"


def _stage(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["stages"] if s["name"] == name)


def _playbook(tmp: Path, host: UpgradeHost, db: str, app_url: str, *, mode: str = "copy", edit: Any = None,
              name: str = "pb") -> Path:
    doc = yaml.safe_load((ROOT / "playbooks" / PLAYBOOK).read_text())
    doc["window"] = {"timezone": "UTC"}
    url = f"postgresql://postgres:${{DB_PASSWORD}}@127.0.0.1:{host.server.port}/{db}"
    doc["vars"].update({"new_db_url": url, "old_db_url": url, "app_db_file": str(tmp / "database.url"),
                        "app_url": app_url, "maintenance_flag": str(tmp / "maintenance.flag")})
    for step in _stage(doc, "preflight")["steps"]:
        if step.get("check") == "disk_free":
            step["path"] = str(tmp)
    engine = _stage(doc, "engine")
    for step in engine["steps"] + engine["rollback"]:
        step.update(exec_prefix=host.prefix(), stop_old=host.pg_ctl("13", "stop"), start_old=host.pg_ctl("13", "start"),
                    start_new=host.pg_ctl("17", "start"))
    engine["steps"][0]["mode"] = mode
    for step in _stage(doc, "switch")["steps"]:
        if step.get("id") == "health":
            step.update(retries=1, retry_delay=0.5)
    if edit is not None:
        edit(doc)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _fail_maintenance(doc: dict[str, Any]) -> None:
    _stage(doc, "maintenance")["steps"][0]["shell"]["command"] = "echo 'flag folder is read-only' >&2; exit 3"


def _fail_backup(doc: dict[str, Any]) -> None:
    _stage(doc, "backup")["steps"].append({"type": "shell", "command": "exit 4"})


def _fail_engine(doc: dict[str, Any]) -> None:
    """17 is up and serving, then a smoke query does not hold."""
    _stage(doc, "engine")["steps"][0]["smoke_sql"].append({"sql": "SELECT count(*) FROM contacts", "expect": -1})


def _fail_switch(doc: dict[str, Any]) -> None:
    _stage(doc, "switch")["steps"][1]["url"] = "http://127.0.0.1:9/health"


def _fail_reopen(doc: dict[str, Any]) -> None:
    _stage(doc, "reopen")["steps"].insert(0, {"type": "shell", "command": "exit 5"})


def _fail_start_new(doc: dict[str, Any]) -> None:
    """pg_upgrade has finished (in link mode: the files are linked), and 17 does not start."""
    _stage(doc, "engine")["steps"][0]["start_new"] = ["sh", "-c", "echo 'no such service' >&2; exit 6"]


def _serving_13(host: UpgradeHost, url: str, before: dict[str, str], stage: str) -> None:
    assert host.server.server_version().startswith("13."), stage
    assert native_digest(url) == before, f"the old server changed after a failure in {stage}"
    assert host.exec("test", "-e", NEW_DATA).returncode != 0, f"{stage}: the new cluster was left behind"
    assert host.exec("test", "-e", "/var/lib/postgresql/13/data/global/pg_control.old").returncode != 0


def test_pg_upgrade_dry_run_then_rollback_from_each_stage_then_real(docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with run_upgrade_host(docker_client) as host:
        url = host.server.create_database()
        db = url.rsplit("/", 1)[1]
        config = prepared(tmp_path, url)
        before = native_digest(url)
        expected = open_engine(url).fingerprint()
        env = {"DB_PASSWORD": host.server.password}
        app_text = url.replace(f":{host.server.password}@", ":${DB_PASSWORD}@")
        (tmp_path / "database.url").write_text(app_text + "\n")
        with app_container(docker_client) as app:
            # the dry run: the snapshot's copy upgraded by pg_upgrade in a box of both versions, timed
            dry = run(config, "--json", "upgrade", str(_playbook(tmp_path, host, db, app.url)), "--dry-run", env=env)
            report = first_json(dry.stdout)
            assert dry.returncode == 0, dry.stderr + dry.stdout[-3000:]
            step = next(p for p in report["plan"] if p["step"] == "upgrade")
            assert step["mode"] == "rehearsed" and step["ok"] and step["measured"] and step["seconds"] > 0, step
            found = step["report"]
            assert found["method"] == "pg_upgrade" and found["mode"] == "copy" and found["tool"] == "pg_upgrade"
            assert found["image"] == "crmops-pg-upgrade:13-17" and found["target_version"].startswith("17.")
            assert found["seconds"] == step["seconds"] and 0 < found["upgrade_seconds"] <= found["seconds"]
            assert found["incompatibilities"] == [] and found["differences"] == [] and found["tables"] >= 10
            assert all(s["ok"] for s in found["smoke"]) and len(found["smoke"]) >= 2
            _serving_13(host, url, before, "the dry run")

            for stage, fault in (("maintenance", _fail_maintenance), ("backup", _fail_backup),
                                 ("engine", _fail_engine), ("switch", _fail_switch), ("reopen", _fail_reopen)):
                r = run(config, "--json", "upgrade", str(_playbook(tmp_path, host, db, app.url, edit=fault,
                                                                   name=stage)), env=env)
                out = first_json(r.stdout)
                assert r.returncode == 50, (stage, r.stderr, r.stdout[-2000:])
                failed = next(s for s in out["steps"] if s["ok"] is False)
                assert failed["stage"] == stage, (stage, failed)
                assert (tmp_path / "database.url").read_text().strip() == app_text, stage
                assert not (tmp_path / "maintenance.flag").exists(), stage
                _serving_13(host, url, before, stage)

            # the real run: 17 serves on the same port with the same rows
            r = run(config, "--json", "upgrade", str(_playbook(tmp_path, host, db, app.url)), env=env)
            out = first_json(r.stdout)
            assert r.returncode == 0, r.stderr + r.stdout[-3000:]
            assert host.server.server_version().startswith("17.")
            assert host.server.password not in json.dumps(out) + dry.stdout
            got = open_engine(url).fingerprint(method=expected.method)
            assert expected.compare(got) == []
            # copy mode: the old data directory is still a PostgreSQL 13 cluster, never linked
            assert host.exec("cat", "/var/lib/postgresql/13/data/PG_VERSION").stdout.strip() == "13"
            assert host.exec("test", "-e", "/var/lib/postgresql/13/data/global/pg_control").returncode == 0


def test_link_mode_undo_before_17_runs_and_refusal_after(docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Link mode shares the data files: undone while 17 never ran, refused (17 left serving) once it has."""
    with run_upgrade_host(docker_client) as host:
        url = host.server.create_database()
        db = url.rsplit("/", 1)[1]
        config = prepared(tmp_path, url)
        before = native_digest(url)
        env = {"DB_PASSWORD": host.server.password}
        app_text = url.replace(f":{host.server.password}@", ":${DB_PASSWORD}@")
        (tmp_path / "database.url").write_text(app_text + "\n")
        with app_container(docker_client) as app:
            # a foreign new data directory: refused before the first change, and left alone
            assert host.exec("sh", "-c", f"mkdir -p {NEW_DATA} && echo mine > {NEW_DATA}/keep").returncode == 0
            r = run(config, "--json", "upgrade", str(_playbook(tmp_path, host, db, app.url, mode="link",
                                                               name="foreign")), env=env)
            assert r.returncode == 50, r.stdout[-2000:]
            failed = next(s for s in first_json(r.stdout)["steps"] if s["ok"] is False)
            assert failed["step"] == "upgrade" and "exists and is not empty" in failed["error"], failed
            assert host.exec("cat", f"{NEW_DATA}/keep").stdout.strip() == "mine"
            assert host.exec("rm", "-rf", NEW_DATA).returncode == 0
            _serving_13(host, url, before, "a foreign new data directory")

            # linked, 17 does not start: pg_control.old is renamed back and 13 serves as before
            r = run(config, "--json", "upgrade", str(_playbook(tmp_path, host, db, app.url, mode="link",
                                                               edit=_fail_start_new, name="nostart")), env=env)
            out = first_json(r.stdout)
            assert r.returncode == 50, r.stdout[-2000:]
            failed = next(s for s in out["steps"] if s["ok"] is False)
            assert "starting the new server failed" in failed["error"] and "no such service" in failed["error"]
            _serving_13(host, url, before, "engine (link mode, 17 did not start)")

            # the step times out while it works: it stops at the next phase and undoes itself (the runner waits
            # up to 30 s for that; a longer pg_upgrade holds the rollback's undo until it ends)
            def slow(doc: dict[str, Any]) -> None:
                step = _stage(doc, "engine")["steps"][0]
                step.update(timeout=3, start_new=["sh", "-c", "sleep 8; exit 7"])

            r = run(config, "--json", "upgrade", str(_playbook(tmp_path, host, db, app.url, mode="link",
                                                               edit=slow, name="slow")), env=env)
            assert r.returncode == 50, r.stdout[-2000:]
            failed = next(s for s in first_json(r.stdout)["steps"] if s["ok"] is False)
            assert "timed out after 3s" in failed["error"], failed
            _serving_13(host, url, before, "engine (link mode, timed out)")

            # linked, 17 ran, then the switch fails: undoing is refused, 17 keeps serving the data
            r = run(config, "--json", "upgrade", str(_playbook(tmp_path, host, db, app.url, mode="link",
                                                               edit=_fail_switch, name="ran")), env=env)
            out = first_json(r.stdout)
            assert r.returncode == 50, r.stdout[-2000:]
            refused = [s for s in out["steps"] if s["ok"] is False and s.get("phase") == "rollback"]
            assert refused and "unsafe" in refused[0]["error"] and "pre-upgrade snapshot" in r.stdout, out["steps"]
            assert host.server.server_version().startswith("17.")
            assert host.exec("test", "-e", "/var/lib/postgresql/13/data/global/pg_control.old").returncode == 0
            assert open_engine(url).fingerprint(method=open_engine(url).fingerprint().method).tables


def test_dry_run_reports_what_pg_upgrade_check_rejects(docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A reg* column (OIDs pg_upgrade does not keep): --check names it; nothing else is attempted."""
    import psycopg

    from crmops.config import Config
    from crmops.engine_upgrade.box import rehearse
    from crmops.playbooks.steps import StepContext

    with run_server(docker_client, BY_ID["pg13"]) as old:
        url = old.create_database()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE invoices (id int PRIMARY KEY, amount numeric)")
            conn.execute("INSERT INTO invoices VALUES (1, 10.5), (2, 99)")
            conn.execute("CREATE TABLE hooks (id int PRIMARY KEY, handler regproc)")
            conn.execute("INSERT INTO hooks VALUES (1, 'now')")
        before = native_digest(url)
        cfg = Config.model_validate({"database": {"url": url}, "repository": {"url": f"file://{tmp_path}/r"}})
        ctx = StepContext("t", url, dry_run=True)
        db = url.rsplit("/", 1)[1]
        report = rehearse(cfg, url, "17", {"mode": "link"}, smoke=[], ctx=ctx, timeout=600)
        assert [i["object"] for i in report["incompatibilities"]] == [f"public.hooks.handler (database {db})"]
        assert "reg* data types" in report["incompatibilities"][0]["error"]
        assert report["seconds"] == 0 and report["smoke"] == []

        # clone needs reflinks, which the box's tmpfs has not: said so, not a crash
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE hooks")
        report = rehearse(cfg, url, "17", {"mode": "clone"}, smoke=[], ctx=ctx, timeout=600)
        assert len(report["incompatibilities"]) == 1 and "reflinks" in report["incompatibilities"][0]["error"]
        # and without both, the rehearsal upgrades and every table holds
        report = rehearse(cfg, url, "17", {"mode": "link"}, smoke=[{"sql": "SELECT count(*) FROM invoices",
                                                                    "expect": 2}], ctx=ctx, timeout=600)
        assert report["incompatibilities"] == [] and report["differences"] == [] and report["smoke"][0]["ok"]
        assert report["target_version"].startswith("17.")
        assert native_digest(url).keys() == before.keys() - {"public.hooks"}
