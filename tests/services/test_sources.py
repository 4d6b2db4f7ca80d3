"""Snapshots per source: latest, status, verify, retention and the preflight pick the configured database's.

One repository holds two SQLite demo CRMs (a: the configured one, b: a second CRM),
pre-restore snapshots of a scratch database and of a itself, and verification records;
the newest snapshot overall is never a's newest backup, so "newest at all" is caught.
The repository is built once and copied for each test (tests change it).
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from crmops.democrm.load import create
from crmops.repository import open_repository
from crmops.repository.source import source_of_manifest, source_of_url
from crmops.services.backup import backup
from crmops.services.restore import restore
from crmops.verify.workflow import verify
from tests.verify.verify_helpers import load, ok, run

NO_FILES = {"checks": {"fk_orphans": True}}
NO_DOCKER = {"DOCKER_HOST": "tcp://127.0.0.1:1"}


def write_config(folder: Path, name: str, db: Path, repo: Path, **extra: Any) -> Path:
    cfg = {"database": {"url": f"sqlite:///{db}"}, "repository": {"url": f"file://{repo}", "chunk_avg_kib": 256},
           "encryption": {"passphrase": "${TEST_PASSPHRASE}"}, "state_dir": str(folder / f"state-{name}"),
           "verify": NO_FILES, **extra}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sources")
    a, b, scratch = root / "a.db", root / "b.db", root / "scratch.db"
    create(f"sqlite:///{a}", size="small")
    create(f"sqlite:///{b}", size="small", seed=2)
    with sqlite3.connect(b) as conn:  # b's dump is clearly bigger than a's: the preflight's size shows whose
        conn.execute("CREATE TABLE blobs (data BLOB)")
        conn.executemany("INSERT INTO blobs VALUES (randomblob(100000))", [()] * 60)
    shutil.copy(b, scratch)
    repo = root / "repo"
    ca, cb = write_config(root, "a", a, repo), write_config(root, "b", b, repo)
    ok(run(ca, "repo", "init"))
    cfg_a, cfg_b = load(ca), load(cb)
    ids: dict[str, str] = {}
    # in-process, for speed: the CLI is exercised by the tests themselves
    ids["a1"] = backup(cfg_a).snapshot_id
    assert verify(cfg_a, ids["a1"]).ok
    ids["b1"] = backup(cfg_b).snapshot_id
    assert verify(cfg_b, ids["b1"]).ok
    ids["a2"] = backup(cfg_a).snapshot_id
    for name, ref, target in (("p1", "b1", scratch), ("p2", "b1", scratch), ("p3", "a2", a)):
        # pre-restore snapshots of a scratch database, then of the configured database itself
        ids[name] = restore(cfg_a, ids[ref], to_url=f"sqlite:///{target}", force=True).safety_snapshot or ""
    ids["b2"] = backup(cfg_b).snapshot_id  # the newest snapshot of all
    return {"root": root, "a": a, "b": b, "scratch": scratch, "ids": ids}


@pytest.fixture
def copy(bed: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The bed's repository copied for one test, with configs for a, b and a never backed-up c."""
    repo = tmp_path / "repo"
    shutil.copytree(bed["root"] / "repo", repo)
    c = tmp_path / "c.db"
    shutil.copy(bed["a"], c)
    return {**bed, "repo": repo, "ca": write_config(tmp_path, "a", bed["a"], repo),
            "cb": write_config(tmp_path, "b", bed["b"], repo), "cc": write_config(tmp_path, "c", c, repo)}


def test_source_identity_drops_credentials_and_fills_defaults(tmp_path: Path) -> None:
    assert source_of_url("postgresql://crm:s3cret@DB.example.org/crm") == "postgresql://db.example.org:5432/crm"
    assert source_of_url("postgres://crm:s3cret@db:6432/crm") == "postgresql://db:6432/crm"
    assert source_of_url("mariadb://root:pw@10.0.0.5/suitecrm") == "mysql://10.0.0.5:3306/suitecrm"
    assert source_of_url(f"sqlite:///{tmp_path}/x/../crm.db") == f"sqlite://{tmp_path}/crm.db"
    # a snapshot older than the field: its source comes from the URL its manifest recorded
    old = {"engine": "postgresql", "database": "crm", "source": "postgresql+psycopg://crm:***@db/crm"}
    assert source_of_manifest(old) == "postgresql://db:5432/crm"
    assert source_of_manifest({"engine": "mysql", "database": "crm"}) == "mysql://unknown/crm"


def test_latest_and_listing_are_the_configured_sources(copy: dict[str, Any], tmp_path: Path) -> None:
    ids, ca = copy["ids"], copy["ca"]
    out = ok(run(ca, "--json", "restore", "--to", f"sqlite:///{tmp_path / 'back.db'}"))
    assert out["snapshot_id"] == ids["a2"]  # not b2 (another CRM), not p3 (a's own pre-restore snapshot)
    other = ok(run(ca, "--json", "restore", "--source", "b.db", "--to", f"sqlite:///{tmp_path / 'b-back.db'}"))
    assert other["snapshot_id"] == ids["b2"]
    listed = ok(run(ca, "--json", "snapshots"))
    assert [s["id"] for s in listed] == [ids["a1"], ids["a2"], ids["p3"]]
    assert {s["source"] for s in listed} == {f"sqlite://{copy['a']}"}
    assert [s["tags"] for s in listed][-1] == ["pre-restore"]
    everything = ok(run(ca, "--json", "snapshots", "--all"))
    assert len(everything) == len(ids)
    scratch = ok(run(ca, "--json", "snapshots", "--source", f"sqlite:///{copy['scratch']}"))
    assert [s["id"] for s in scratch] == [ids["p1"], ids["p2"]]
    text = run(ca, "snapshots", "--all", env={"COLUMNS": "80"}).stdout
    # the legend ("scratch.db = sqlite:///…") keeps each full path on one line to copy; its length is the
    # temporary folder's (longer under pytest-xdist), so only the table must fit 80 columns
    table = [line for line in text.splitlines() if " = sqlite://" not in line]
    assert max(len(line) for line in table) <= 80 and "scratch.db" in text
    assert f"scratch.db = sqlite://{copy['scratch']}" in text.splitlines()
    typo = run(ca, "snapshots", "--source", "nosuch.db")
    assert typo.returncode == 3 and "sources:" in typo.stderr and typo.stderr.count("\n") == 1
    # a source with only safety snapshots has no latest: they are named by id
    only = run(ca, "restore", "--source", "scratch.db", "--to", f"sqlite:///{tmp_path / 's.db'}")
    assert only.returncode == 28 and "pre-restore" in only.stderr


def test_verify_and_status_judge_the_configured_source(copy: dict[str, Any]) -> None:
    from crmops.config import Assertion
    from crmops.status.verdicts import gather

    ids = copy["ids"]
    # the scratch database's snapshot fails a check; that is no verdict on a's backups
    cfg_a = load(copy["ca"])
    strict = cfg_a.model_copy(deep=True)
    strict.verify.assertions = [Assertion(name="no contacts", sql="SELECT count(*) FROM contacts", expect=0)]
    assert verify(strict, ids["p2"]).ok is False
    out = ok(run(copy["ca"], "--json", "verify", env=NO_DOCKER))
    assert out["snapshot_id"] == ids["a2"] and out["ok"]
    ov = gather(load(copy["ca"]))
    levels = {v.name: v.level for v in ov.verdicts}
    assert levels["verification"] == "green" and levels["backup"] == "green", ov.verdicts
    assert {s["id"] for s in ov.snapshots} == {ids["a1"], ids["a2"], ids["p3"]}
    assert all(v["snapshot_id"] in (ids["a1"], ids["a2"]) for v in ov.verifications)
    sources = next(v.summary for v in ov.verdicts if v.name == "sources")
    assert f"judging sqlite://{copy['a']}" in sources and "b.db (2)" in sources and "scratch.db (2)" in sources
    # a database never backed up is not "fresh" because other databases are
    ov_c = gather(load(copy["cc"]))
    backup = next(v for v in ov_c.verdicts if v.name == "backup")
    assert backup.level == "red" and "no backup of sqlite://" in backup.summary
    assert ok(run(copy["cb"], "--json", "verify", env=NO_DOCKER))["snapshot_id"] == ids["b2"]


def test_status_jobs_are_the_configured_sources_when_crms_share_a_state_dir(copy: dict[str, Any],
                                                                             tmp_path: Path) -> None:
    """Two CRMs configured from the starter share /var/lib/crmops: one's failed backup is not the other's."""
    from crmops.status.verdicts import gather

    shared = yaml.safe_load(copy["ca"].read_text())["state_dir"]
    broken = yaml.safe_load(copy["cb"].read_text())
    broken["database"]["url"] = f"sqlite:///{tmp_path / 'gone.db'}"  # the second CRM's backup fails
    broken["state_dir"] = shared
    cb = tmp_path / "b-shared.yaml"
    cb.write_text(yaml.safe_dump(broken))
    assert run(copy["ca"], "backup").returncode == 0
    assert run(cb, "backup").returncode == 12
    runs = [json.loads(line) for line in (Path(shared) / "runs.jsonl").read_text().splitlines()]
    assert [r["source"] for r in runs[-2:]] == [f"sqlite://{copy['a']}", f"sqlite://{tmp_path / 'gone.db'}"]
    jobs = next(v for v in gather(load(copy["ca"])).verdicts if v.name == "jobs")
    assert jobs.level == "green" and "failed" not in jobs.summary, jobs
    jobs_b = next(v for v in gather(load(cb)).verdicts if v.name == "jobs")
    assert jobs_b.level == "red" and "gone.db" in jobs_b.summary, jobs_b


def test_upgrade_preflight_and_rehearsal_pick_the_configured_source(copy: dict[str, Any]) -> None:
    from crmops.services.sources import configured_source
    from crmops.upgrade.rehearsal import pick_snapshot
    from crmops.upgrade.steps import run_preflight

    ids, cfg = copy["ids"], load(copy["ca"])
    url = cfg.database.url
    fresh = run_preflight(cfg, {"check": "snapshot_fresh", "max_age_hours": 24, "require_verified": False},
                          url=url, run_id="t")
    assert fresh.ok and fresh.outputs["value"] == ids["a2"][:10]
    verified = run_preflight(cfg, {"check": "snapshot_fresh", "max_age_hours": 24, "require_verified": True},
                             url=url, run_id="t")
    assert verified.outputs["value"] == ids["a1"][:10]
    disk = run_preflight(cfg, {"check": "disk_free", "restore_factor": 1.0, "min_free_gb": 0}, url=url, run_id="t")
    repo = open_repository(cfg)
    a_size = repo.manifest(ids["a2"])["streams"]["database"]["size"]
    assert f"latest snapshot's {a_size / 1e6:.1f} MB" in disk.outputs["detail"]
    assert repo.manifest(ids["b2"])["streams"]["database"]["size"] > 2 * a_size
    manifest, was_verified = pick_snapshot(repo, configured_source(cfg))
    assert manifest["id"] == ids["a1"] and was_verified
    none = run_preflight(load(copy["cc"]), {"check": "snapshot_fresh", "max_age_hours": 24,
                                            "require_verified": False}, url=url, run_id="t")
    assert not none.ok and "no backup of" in none.outputs["detail"]


def test_forget_keeps_the_newest_verified_snapshot_of_each_source(copy: dict[str, Any], tmp_path: Path) -> None:
    ids, ca = copy["ids"], copy["ca"]
    plan = ok(run(ca, "--json", "forget", "--keep-last", "1", "--keep-daily", "0", "--keep-weekly", "0",
                  "--keep-monthly", "0", "--keep-yearly", "0", "--dry-run"))
    groups = {(g["source"].rsplit("/", 1)[-1], g["kind"]): g for g in plan["groups"]}
    assert set(groups) == {("a.db", "backups"), ("a.db", "pre-restore"), ("b.db", "backups"),
                           ("scratch.db", "pre-restore")}
    assert groups[("a.db", "backups")]["keep"] == {ids["a2"]: ["last"], ids["a1"]: ["newest verified"]}
    human = run(ca, "forget", "--keep-last", "1", "--keep-daily", "0", "--keep-weekly", "0",
                "--keep-monthly", "0", "--keep-yearly", "0", "--dry-run", env={"COLUMNS": "80"}).stdout
    assert "(pre-restore): keep 1, would forget 1" in human and "newest verified" in human
    done = ok(run(ca, "--json", "forget", "--keep-last", "1", "--keep-daily", "0", "--keep-weekly", "0",
                  "--keep-monthly", "0", "--keep-yearly", "0", "--prune"))
    assert sorted(done["forget"]) == sorted([ids["p1"]])
    left = {s["id"] for s in ok(run(ca, "--json", "snapshots", "--all"))}
    assert left == {ids["a1"], ids["a2"], ids["b1"], ids["b2"], ids["p2"], ids["p3"]}
    assert done["prune"]["chunks_deleted"] >= 0 and not done["prune"]["kept_everything_for"]
    # what was kept is whole after the prune: the verified snapshots still restore
    for sid in (ids["a1"], ids["b1"]):
        restore(load(ca), sid, to_url=f"sqlite:///{tmp_path / (sid + '.db')}")


def flip(path: Path, at: int = 40) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_one_damaged_manifest_hides_nothing(copy: dict[str, Any], tmp_path: Path) -> None:
    from crmops.status.verdicts import gather

    ids, ca = copy["ids"], copy["ca"]
    flip(copy["repo"] / "snapshots" / ids["a1"])  # an old backup of a: a bit flip
    (copy["repo"] / "snapshots" / ids["p1"]).write_bytes(b"")  # a scratch database's: truncated
    listed = run(ca, "--json", "snapshots")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows if not r["damaged"]] == [ids["a2"], ids["p3"]]
    bad = {r["id"]: r["problem"] for r in rows if r["damaged"]}  # whose they were is unknown: always listed
    assert set(bad) == {ids["a1"], ids["p1"]} and "authentication" in bad[ids["a1"]] and "truncated" in bad[ids["p1"]]
    human = run(ca, "snapshots", env={"COLUMNS": "80"})
    assert human.returncode == 0 and "DAMAGED" in human.stdout and ids["a1"][:10] in human.stdout
    # the header names the source, a path as long as the test's temporary folder: the rest holds 80 columns
    assert max(len(line) for line in human.stdout.splitlines() if not line.startswith("source ")) <= 80, human.stdout
    strict = run(ca, "snapshots", "--strict")
    assert strict.returncode == 26 and ids["a1"] in strict.stderr
    back = run(ca, "restore", "latest", "--to", f"sqlite:///{tmp_path / 'back.db'}")
    assert back.returncode == 0, back.stderr
    assert f"from snapshot {ids['a2']}" in back.stdout
    assert "passing over 2 damaged snapshot manifests" in back.stderr and ids["a1"] in back.stderr
    # forget and prune: the damaged snapshot stays, and no chunk is deleted while its chunks are unknown
    done = ok(run(ca, "--json", "forget", "--keep-last", "1", "--prune"))
    assert sorted(done["damaged"]) == sorted([ids["a1"], ids["p1"]]) and ids["a1"] not in done["forget"]
    assert done["forget"] == []  # each group's newest (and b's newest verified) is kept; the damaged are unknown
    assert done["prune"]["chunks_deleted"] == 0 and sorted(done["prune"]["kept_everything_for"]) == sorted(bad)
    ov = gather(load(ca))
    repo_verdict = next(v for v in ov.verdicts if v.name == "repository")
    assert repo_verdict.level == "red" and ids["a1"][:10] in repo_verdict.summary
    assert {d["id"] for d in ov.damaged} == set(bad)
    page = tmp_path / "status.html"
    assert run(ca, "report", "--html", str(page)).returncode == 0
    assert 'id="damaged"' in page.read_text() and ids["a1"][:12] in page.read_text()
    # check still calls the repository damaged
    assert run(ca, "check").returncode == 26


def test_postgresql_source_is_host_port_and_database(pg_url_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import psycopg
    from sqlalchemy.engine import make_url

    first, second = pg_url_factory(), pg_url_factory()
    for url in (first, second):
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE t (id int primary key, name text)")
            conn.execute("INSERT INTO t VALUES (1, 'one')")
    repo = tmp_path / "repo"
    cfgs = []
    for name, url in (("one", first), ("two", second)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "database": {"url": url},
            "repository": {"url": f"file://{repo}"}, "encryption": {"passphrase": "${TEST_PASSPHRASE}"},
            "state_dir": str(tmp_path / f"state-{name}")}))
        cfgs.append(path)
    env: dict[str, str] = {}
    ok(run(cfgs[0], "repo", "init"))
    one = ok(run(cfgs[0], "--json", "backup", env=env))["snapshot_id"]
    two = ok(run(cfgs[1], "--json", "backup", env=env))["snapshot_id"]
    u = make_url(first)
    want = f"postgresql://{u.host}:{u.port or 5432}/{u.database}"
    listed = ok(run(cfgs[0], "--json", "snapshots", env=env))
    assert [(s["id"], s["source"]) for s in listed] == [(one, want)]
    assert u.username not in want.split("://", 1)[1].split("/")[0]
    m = open_repository(load(cfgs[0])).manifest(one)
    assert m["source_id"] == want and (u.password or "\0") not in json.dumps(m)
    # the same server, another database: another source; --source takes a URL with credentials too
    assert [s["id"] for s in ok(run(cfgs[0], "--json", "snapshots", "--source", second, env=env))] == [two]
    # at 80 columns every cell is whole: each source heads its own table, nothing ends in "…" or is broken
    text = run(cfgs[0], "snapshots", "--all", env={"COLUMNS": "80"}).stdout
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
    assert [line for line in text.splitlines() if line.startswith("source ") and u.database in line], text
    assert re.search(r"\bpostgresql \d+\.\d+", text), text
