"""crmops verify / drill in real Docker sandboxes with the PostgreSQL 15 and MariaDB 10.11 images."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from crmops.engines import open_engine
from crmops.repository import open_repository
from crmops.verify.record import is_verified_ok
from tests.verify.verify_helpers import PASSPHRASE, demo_snapshot, load, ok, run

pytestmark = [pytest.mark.docker]


def _labelled(client, **labels: str) -> list[str]:  # type: ignore[no-untyped-def]
    want = ["crmops.sandbox=1", *(f"{k}={v}" for k, v in labels.items())]
    return [c.name for c in client.containers.list(all=True, filters={"label": want}, ignore_removed=True)]


# an unnamed `sandbox cleanup` removes every sandbox whose owner is gone, a --keep one included: the tests
# running it or keeping a sandbox share one xdist worker (docs/TESTING.md)
@pytest.mark.xdist_group("sandbox-cleanup")
@pytest.mark.postgres
def test_postgres_snapshot_verifies_green_then_drill_keeps_the_sandbox(pg_url: str, tmp_path: Path,
                                                                       docker_client) -> None:  # type: ignore[no-untyped-def]
    config, snap = demo_snapshot(tmp_path, pg_url)
    out = ok(run(config, "--json", "verify"))
    assert out["ok"] and out["image"] == "postgres:15" and out["image_id"].startswith("sha256:")
    assert out["tables"] and all(t["ok"] for t in out["tables"])
    assert {c["kind"] for c in out["checks"] if c["ok"]} == {"attachments", "fk_orphans", "attachments_pairing"}
    assert out["sandbox_name"] not in _labelled(docker_client)  # a normal run leaves nothing
    assert is_verified_ok(open_repository(load(config)), snap)

    kept = ok(run(config, "drill", "--keep", "--report-dir", str(tmp_path / "reports")))
    name = next(line.split()[-1] for line in kept.splitlines() if line.startswith("sandbox kept:"))
    try:
        assert name in _labelled(docker_client)
        assert "postgresql://postgres:********@" in kept
        assert f"docker exec -it {name} psql -U postgres" in kept and f"crmops sandbox cleanup {name}" in kept
        argv = ["docker", "exec", name, "psql", "-U", "postgres", "-d", open_engine(pg_url).database_name(), "-tAc",
                "SELECT count(*) FROM contacts"]
        psql = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if "OCI runtime exec failed" in psql.stdout + psql.stderr:  # runc can fail to start an exec under load
            psql = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert psql.stdout.strip() == "600", psql.stderr
    finally:
        cleaned = ok(run(config, "--json", "sandbox", "cleanup", name))
    assert name in [e["name"] for e in cleaned["removed"]]
    assert name not in _labelled(docker_client)


@pytest.mark.mysql
def test_mariadb_snapshot_verifies_green(mysql_url: str, tmp_path: Path, docker_client) -> None:  # type: ignore[no-untyped-def]
    config, snap = demo_snapshot(tmp_path, mysql_url)
    out = ok(run(config, "--json", "verify", snap))
    assert out["ok"] and out["image"] == "mariadb:10.11" and out["engine"] == "mysql"
    assert len(out["tables"]) >= 10 and all(t["ok"] and t["checksum_ok"] for t in out["tables"])
    assert out["differences"] == []
    assert out["sandbox_name"] not in _labelled(docker_client)


@pytest.mark.mysql
def test_mariadb_float_the_dump_rounds_is_named_at_backup_and_in_verify(mysql_url: str, tmp_path: Path) -> None:
    """mariadb-dump writes FLOAT with 6 significant digits: the backup says which values that
    changes, and verify's red line names that cause instead of a bare checksum difference."""
    import pymysql

    from crmops.dburl import parse
    from tests.verify.verify_helpers import first_json, write_config

    u = parse(mysql_url)
    with pymysql.connect(host=u.host, port=u.port, user=u.username, password=u.password, database=u.database,
                         autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE deals (id int PRIMARY KEY, probability FLOAT, weight FLOAT, amount DOUBLE)")
        cur.execute("INSERT INTO deals VALUES (1, 0.75, 0.1, 16777216), (2, 16777216, 0.5, 0.1234567), "
                    "(3, 0.1234567, NULL, 1)")
        cur.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        cur.execute("INSERT INTO notes VALUES (1, 'call back')")
    config = write_config(tmp_path, mysql_url, verify={}, attachments=False)
    ok(run(config, "repo", "init"))
    r = run(config, "--json", "backup")
    done = ok(r)
    assert done["rounded_floats"] == {"deals": {"probability": 2}}  # 0.75 and 0.1 survive 6 digits; NULL is no value
    human = run(config, "backup")  # --json keeps stderr quiet; a terminal or cron log gets the warning
    assert human.returncode == 0 and ("crmops: warning: table deals: FLOAT column probability (2 values) holds more "
                                      "than the 6 significant digits") in human.stderr
    assert open_repository(load(config)).manifest(done["snapshot_id"])["rounded_floats"] == {
        "deals": {"probability": 2}}
    red = run(config, "--json", "verify", done["snapshot_id"])
    assert red.returncode != 0 and "Traceback" not in red.stderr
    tables = {t["name"]: t for t in first_json(red.stdout)["tables"]}
    assert tables["notes"]["ok"] and not tables["deals"]["ok"]
    assert tables["deals"]["reason"].startswith("content checksum differs: FLOAT column probability (2 values)")


@pytest.mark.postgres
def test_rewritten_table_authenticates_but_is_red_with_the_table_named(pg_url_factory: Callable[[], str],
                                                                       tmp_path: Path, docker_client) -> None:  # type: ignore[no-untyped-def]
    src = pg_url_factory()
    config, snap = demo_snapshot(tmp_path, src)
    cfg = load(config)
    repo = open_repository(cfg)
    old = repo.manifest(snap)
    # restore, change one contact, dump again, and store that stream under the OLD fingerprint:
    # every chunk is genuine (written with the repository key), only the content is not what was backed up
    scratch = pg_url_factory()
    open_engine(scratch).restore(repo.read_stream(old), format="pg-custom")
    with open_engine(scratch).connect() as conn:
        conn.execute("UPDATE contacts SET phone = '+1 555 0100' WHERE id = 42")
    with repo.writer(tags=["rewritten"]) as writer:
        with open_engine(scratch).dump() as dump:
            writer.add_stream("database", dump.chunks(), format=dump.format)
        for f in old["files"]:
            writer.files.append(f)
        forged = writer.commit({k: old[k] for k in ("engine", "server_version", "database", "source",
                                                    "schema_revision", "fingerprint", "attachments_root")})
    repo.authenticate(forged)  # every chunk authenticates
    r = run(config, "verify", forged["id"])
    assert r.returncode == 30, r.stdout
    assert "table contacts: content checksum differs" in r.stderr and "+1 555" not in r.stdout + r.stderr
    assert not is_verified_ok(repo, forged["id"])
    assert forged["id"] not in " ".join(_labelled(docker_client))


@pytest.mark.xdist_group("sandbox-cleanup")
@pytest.mark.postgres
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killing_verify_leaves_nothing_after_cleanup(sig: int, pg_url: str, tmp_path: Path,
                                                     docker_client) -> None:  # type: ignore[no-untyped-def]
    config, _ = demo_snapshot(tmp_path, pg_url, attachments=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env["TEST_PASSPHRASE"] = PASSPHRASE
    proc = subprocess.Popen([sys.executable, "-m", "crmops", "--config", str(config), "verify"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # type: ignore[union-attr]
        if "ready" in line:  # the sandbox exists and the restore is starting: mid-verify
            break
    else:
        pytest.fail(f"verify ended before its sandbox was ready: {proc.stderr.read()}")  # type: ignore[union-attr]
    assert _labelled(docker_client, **{"crmops.pid": str(proc.pid)})
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    if sig == signal.SIGTERM:
        assert code == 130, proc.stderr.read() + proc.stdout.read()
        assert _labelled(docker_client, **{"crmops.pid": str(proc.pid)}) == []  # removed by itself
        return
    assert _labelled(docker_client, **{"crmops.pid": str(proc.pid)})  # SIGKILL: nobody could remove it
    cleaned = ok(run(config, "--json", "sandbox", "cleanup"))
    assert cleaned["removed"]
    assert _labelled(docker_client, **{"crmops.pid": str(proc.pid)}) == []
    nets = docker_client.networks.list(filters={"label": ["crmops.sandbox=1", f"crmops.pid={proc.pid}"]})
    assert nets == []


@pytest.mark.postgres
def test_sandbox_vanishing_mid_restore_does_not_flag_the_snapshot(pg_url: str, tmp_path: Path,
                                                                   docker_client) -> None:  # type: ignore[no-untyped-def]
    from crmops.errors import SandboxUnavailable
    from crmops.verify.record import latest_verification
    from crmops.verify.workflow import verify

    config, snap = demo_snapshot(tmp_path, pg_url, attachments=False)
    cfg = load(config)

    def pull_the_plug(step: str) -> None:
        if step.startswith("sandbox ") and step.endswith("(postgres:15)"):
            docker_client.containers.get(step.split()[1]).remove(force=True)  # someone's docker rm -f

    with pytest.raises(SandboxUnavailable, match="vanished during the restore"):
        verify(cfg, snap, on_step=pull_the_plug)
    assert latest_verification(open_repository(cfg), snap) is None
