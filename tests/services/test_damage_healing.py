"""A damaged chunk is never silently re-used: found, quarantined, stored again by the next backup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from crmops.democrm.load import create
from crmops.engines import Fingerprint, open_engine
from crmops.repository import open_repository
from crmops.repository.paths import chunk_key, manifest_chunks
from tests.services.test_backup_restore import _cfg, run, write_config
from tests.verify.verify_helpers import first_json


def first_doc(text: str) -> dict:
    """The command's result: a failing command's one JSON document is the error envelope holding it."""
    return first_json(text)


def _two_snapshots(tmp_path: Path) -> tuple[Path, str, str, list[str]]:
    src = f"sqlite:///{tmp_path / 'crm.db'}"
    create(src, size="small")
    config = write_config(tmp_path, src)
    run(config, "repo", "init")
    first = json.loads(run(config, "backup").stdout)["snapshot_id"]
    second = json.loads(run(config, "backup").stdout)["snapshot_id"]
    repo = open_repository(_cfg(config))
    shared = sorted(set(manifest_chunks(repo.manifest(first))) & set(manifest_chunks(repo.manifest(second))))
    assert shared
    return config, first, second, shared


def _flip(tmp_path: Path, cid: str, at: int = 40) -> None:
    path = tmp_path / "repo" / chunk_key(cid)
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x10
    path.write_bytes(bytes(raw))


def test_bit_flip_is_quarantined_by_check_and_healed_by_the_next_backup(tmp_path: Path) -> None:
    config, first, second, shared = _two_snapshots(tmp_path)
    victim = shared[0]
    _flip(tmp_path, victim)
    assert run(config, "check").returncode == 0  # a flipped bit keeps the size: only reading finds it
    r = run(config, "check", "--read-data", check=False)
    assert r.returncode == 26 and victim in r.stderr
    report = first_doc(r.stdout)
    assert report["quarantined"] == [victim]
    assert {d["object"] for d in report["damaged"]} == {chunk_key(victim)}
    # quarantined: plain check keeps failing until it is healed
    assert run(config, "check", check=False).returncode == 26
    dry = first_doc(run(config, "repair", "--dry-run", check=False).stdout)
    assert sorted(s["id"] for s in dry["damaged_snapshots"]) == sorted([first, second])
    healed = json.loads(run(config, "backup").stdout)
    assert healed["chunks_healed"] == 1 and healed["chunks_quarantined"] == 0
    assert healed["chunks_new"] >= 1
    # the new snapshot restores, identical; the old ones are whole again too (same chunk, stored anew)
    for sid in (healed["snapshot_id"], first):
        dst = f"sqlite:///{tmp_path / f'restored-{sid}.db'}"
        run(config, "restore", sid, "--to", dst)
        manifest = open_repository(_cfg(config)).manifest(sid)
        assert Fingerprint.from_dict(manifest["fingerprint"]).compare(open_engine(dst).fingerprint()) == []
    final = json.loads(run(config, "check", "--read-data").stdout)
    assert final["ok"] and final["quarantined"] == []


def test_plain_check_catches_a_truncated_chunk_by_its_size(tmp_path: Path) -> None:
    config, first, second, shared = _two_snapshots(tmp_path)
    victim = shared[-1]
    path = tmp_path / "repo" / chunk_key(victim)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    r = run(config, "check", check=False)
    assert r.returncode == 26 and victim in r.stderr
    report = first_doc(r.stdout)
    assert report["chunks_read"] == 0 and report["sizes_unrecorded"] == 0
    damage = report["damaged"][0]
    assert damage["object"] == chunk_key(victim) and "expected" in damage["problem"]
    assert sorted(damage["snapshots"]) == sorted([first, second])
    # the next backup does not re-use it: it stores it again, and everything restores
    healed = json.loads(run(config, "backup").stdout)
    assert healed["chunks_healed"] == 1
    assert json.loads(run(config, "check", "--read-data").stdout)["ok"] is True


def test_a_backup_alone_notices_a_truncated_chunk(tmp_path: Path) -> None:
    config, first, second, shared = _two_snapshots(tmp_path)
    path = tmp_path / "repo" / chunk_key(shared[0])
    path.write_bytes(path.read_bytes()[:-7])
    healed = json.loads(run(config, "backup").stdout)  # no check in between
    assert healed["chunks_healed"] == 1
    assert json.loads(run(config, "check", "--read-data").stdout)["ok"] is True


def test_repair_names_exactly_the_damaged_snapshots_and_forgets_only_what_cannot_heal(tmp_path: Path) -> None:
    config, first, second, shared = _two_snapshots(tmp_path)
    (tmp_path / "crm.db").unlink()
    create(f"sqlite:///{tmp_path / 'crm.db'}", size="small", seed=2)  # the old data is gone from the CRM
    third = json.loads(run(config, "backup").stdout)["snapshot_id"]
    repo = open_repository(_cfg(config))
    gone = sorted(set(shared) - set(manifest_chunks(repo.manifest(third))))
    assert gone
    _flip(tmp_path, gone[0])
    assert run(config, "check", "--read-data", check=False).returncode == 26
    # and a chunk only the newest snapshot uses goes missing, unseen by any check
    only_third = sorted(set(manifest_chunks(repo.manifest(third))) - set(shared))[0]
    (tmp_path / "repo" / chunk_key(only_third)).unlink()
    r = run(config, "repair", "--dry-run", check=False)
    assert r.returncode == 26
    dry = first_doc(r.stdout)
    assert sorted(s["id"] for s in dry["damaged_snapshots"]) == sorted([first, second, third])
    assert dry["newest"] == third and dry["newest_needs"] == [only_third]
    assert {s["id"]: s["healable_by_backup"] for s in dry["damaged_snapshots"]} == {
        first: False, second: False, third: True}
    assert dry["damaged_chunks"] == {gone[0]: dry["damaged_chunks"][gone[0]], only_third: "missing"}
    assert len(json.loads(run(config, "snapshots").stdout)) == 3  # a dry run changes nothing
    assert not (tmp_path / "repo" / "quarantine" / only_third).exists()
    # the healing backup stores the newest snapshot's chunk again but cannot produce the old data:
    # those snapshots are forgotten, nothing else
    done = json.loads(run(config, "repair", "--forget-damaged").stdout)
    assert done["ok"] and sorted(done["forgotten"]) == sorted([first, second])
    assert done["healed_chunks"] == [only_third] and done["backup"]["chunks_healed"] == 1
    left = {s["id"] for s in json.loads(run(config, "snapshots").stdout)}
    assert third in left and first not in left and second not in left
    assert (tmp_path / "repo" / chunk_key(gone[0])).exists()  # repair deletes no chunk; prune does
    run(config, "prune")
    assert not (tmp_path / "repo" / chunk_key(gone[0])).exists()
    assert not (tmp_path / "repo" / "quarantine" / gone[0]).exists()
    assert json.loads(run(config, "check", "--read-data").stdout)["ok"] is True


def test_status_and_the_nightly_notification_name_damage_the_newest_snapshot_needs(tmp_path: Path) -> None:
    import yaml

    from tests.receivers import http_receiver

    config, first, second, shared = _two_snapshots(tmp_path)
    victim = shared[0]
    _flip(tmp_path, victim)
    with http_receiver() as rec:
        cfg = yaml.safe_load(config.read_text())
        cfg["notify"] = {"webhooks": [{"kind": "generic", "url": f"{rec.url}/hook"}]}
        config.write_text(yaml.safe_dump(cfg))
        status = run(config, "status", check=False)
        assert status.returncode == 0  # a flipped bit keeps its size: nothing can know before a read
        assert run(config, "check", "--read-data-subset", "100%", check=False).returncode == 26
        (sent,) = rec.to("/hook")
        body = json.loads(sent.body)
        assert body["ok"] is False and victim in body["figures"]["newest_needs"]
        status = run(config, "status", check=False)
        assert status.returncode == 61
        verdict = next(v for v in first_doc(status.stdout)["verdicts"] if v["name"] == "integrity")
        assert verdict["level"] == "red" and victim in verdict["summary"] and second in verdict["summary"]
        healed = json.loads(run(config, "backup").stdout)
        assert healed["chunks_healed"] == 1
        told = json.loads(rec.to("/hook")[-1].body)  # a healing backup is told once, as a success
        assert len(rec.to("/hook")) == 2 and told["ok"] and told["figures"]["chunks_healed"] == 1
        run(config, "backup")
        assert len(rec.to("/hook")) == 2  # a clean success is not notified
        status = run(config, "status", check=False)
        verdict = next(v for v in first_doc(status.stdout)["verdicts"] if v["name"] == "integrity")
        assert verdict["level"] == "green" and "within 30 days" in verdict["summary"], verdict


def test_restore_and_verify_quarantine_what_they_find_damaged(tmp_path: Path) -> None:
    config, first, second, shared = _two_snapshots(tmp_path)
    marker = tmp_path / "repo" / "quarantine"
    _flip(tmp_path, shared[0])
    r = run(config, "restore", second, "--to", f"sqlite:///{tmp_path / 'r.db'}", check=False)
    assert r.returncode == 26 and shared[0] in r.stderr
    assert sorted(p.name for p in marker.iterdir()) == [shared[0]]
    (marker / shared[0]).unlink()  # as if found by verify first
    r = run(config, "verify", second, check=False)
    assert r.returncode != 0 and sorted(p.name for p in marker.iterdir()) == [shared[0]], r.stderr
    assert open_repository(_cfg(config)).quarantine_markers()[shared[0]]["reason"].endswith(
        "fails authentication (damaged or tampered with)")


def _human(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A command as an administrator reads it: no --json, on an 80-column terminal."""
    from tests.services.test_backup_restore import PASSPHRASE

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env.update(TEST_PASSPHRASE=PASSPHRASE, COLUMNS="80")
    return subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_status_at_80_columns_names_each_damaged_chunk_in_full_and_backup_says_it_healed(tmp_path: Path) -> None:
    config, first, second, shared = _two_snapshots(tmp_path)
    victims = shared[:2]
    for cid in victims:
        _flip(tmp_path, cid)
    assert run(config, "check", "--read-data", check=False).returncode == 26
    status = _human(config, "status")
    assert status.returncode == 61, status.stderr
    lines = status.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in status.stdout, status.stdout
    folded = "".join(line.strip() for line in lines)  # a long id folds onto the next line, whole
    assert all(cid in folded for cid in victims), status.stdout
    healed = _human(config, "backup")
    assert healed.returncode == 0, healed.stderr
    assert f"healed {len(victims)} quarantined chunks" in healed.stdout, healed.stdout
    assert max(len(line) for line in healed.stdout.splitlines()) <= 80


def test_repair_at_80_columns_for_a_snapshot_whose_data_is_gone(tmp_path: Path) -> None:
    import sqlite3

    src = tmp_path / "crm.db"
    create(f"sqlite:///{src}", size="small")
    config = write_config(tmp_path, f"sqlite:///{src}")
    run(config, "repo", "init")
    old = json.loads(run(config, "backup").stdout)["snapshot_id"]
    with sqlite3.connect(src) as db:  # the data only the old snapshot holds is gone from the database
        db.execute("UPDATE activities SET subject = subject || ' (edited)'")
    new = json.loads(run(config, "backup").stdout)["snapshot_id"]
    repo = open_repository(_cfg(config))
    lost = sorted(set(manifest_chunks(repo.manifest(old))) - set(manifest_chunks(repo.manifest(new))))
    _flip(tmp_path, lost[0])
    assert run(config, "check", "--read-data", check=False).returncode == 26
    for args in (("repair", "--dry-run"), ("repair",)):
        r = _human(config, *args)
        assert r.returncode == 26 and r.stderr.count("\n") == 1, r.stderr
        assert max(len(line) for line in r.stdout.splitlines()) <= 80, r.stdout
        assert f"snapshot {old} (" in r.stdout and "UTC)" in r.stdout, r.stdout
    assert "only if the database still holds its data" in _human(config, "repair", "--dry-run").stdout
    assert "--forget-damaged" in r.stdout


def test_check_names_damage_within_80_columns(tmp_path: Path) -> None:
    config, first, second, shared = _two_snapshots(tmp_path)
    _flip(tmp_path, shared[0])
    r = _human(config, "check", "--read-data")
    assert r.returncode == 26 and r.stderr.count("crmops: error:") == 1, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, r.stdout
    assert chunk_key(shared[0]) in "".join(lines) and first in r.stdout and second in r.stdout


def test_repair_dry_run_does_not_promise_a_backup_heals_a_lost_manifest(tmp_path: Path) -> None:
    config, first, second, shared = _two_snapshots(tmp_path)
    manifest = tmp_path / "repo" / "snapshots" / first
    raw = bytearray(manifest.read_bytes())
    raw[60] ^= 0x01
    manifest.write_bytes(bytes(raw))
    r = _human(config, "repair", "--dry-run")
    assert r.returncode == 26, r.stderr
    said = " ".join(r.stdout.split())
    assert f"snapshot {first}" in said and "no backup can heal a lost manifest" in said, r.stdout
    assert "only if the database still holds" not in said
