"""crmops copy to a local folder: only what is missing, the repository untouched, a damaged chunk never copied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from crmops.repository.paths import chunk_key, manifest_chunks
from tests.copy.helpers import PASSPHRASE, crm, doc, run, tree_digest, write_config


def _setup(tmp_path: Path) -> Path:
    crm(tmp_path)
    config = write_config(tmp_path, [{"name": "usb", "url": f"file://{tmp_path / 'usb'}"}])
    run(config, "repo", "init")
    return config


def test_copy_is_deduplicated_idempotent_and_restorable_with_the_primary_gone(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    first = doc(run(config, "backup"))["snapshot_id"]
    before = tree_digest(tmp_path / "repo")
    r = doc(run(config, "copy"))
    assert tree_digest(tmp_path / "repo") == before  # the repository is only read
    c = r["copies"][0]
    assert c["ok"] and c["created"] and c["copied"] == [first] and c["chunks_copied"] > 20
    # the second night: only the new snapshot's new chunks travel
    (tmp_path / "files" / "new-quote.pdf").write_bytes(b"quote " * 50_000)
    second = doc(run(config, "backup"))["snapshot_id"]
    c2 = doc(run(config, "copy"))["copies"][0]
    assert c2["copied"] == [second] and c2["already"] == [first]
    assert 0 < c2["chunks_copied"] < c["chunks_copied"] and c2["chunks_present"] > 0
    # again: nothing to do
    c3 = doc(run(config, "copy"))["copies"][0]
    assert c3["copied"] == [] and c3["chunks_copied"] == 0 and c3["archive"]["files_copied"] == 0
    # the copy holds exactly the repository's objects (minus locks and run state)
    usb = tree_digest(tmp_path / "usb")
    assert usb == {k: v for k, v in tree_digest(tmp_path / "repo").items() if k in usb}
    assert {k for k in usb if k.startswith("data/")} == {k for k in before | tree_digest(tmp_path / "repo")
                                                         if k.startswith("data/")}

    # the primary is gone: every reading command works from the copy
    shutil.rmtree(tmp_path / "repo")
    assert run(config, "snapshots", check=False).returncode != 0
    listed = json.loads(run(config, "snapshots", "--repository", "usb").stdout)
    assert {s["id"] for s in listed} == {first, second}
    assert doc(run(config, "check", "--read-data", "--from-copy", "usb"))["ok"]
    restored = tmp_path / "restored.db"
    run(config, "restore", "--repository", "usb", second, "--to", f"sqlite:///{restored}",
        "--attachments-to", str(tmp_path / "files-back"))
    assert restored.exists()
    assert (tmp_path / "files-back" / "new-quote.pdf").read_bytes() == b"quote " * 50_000


def test_a_bit_flipped_chunk_is_not_copied_and_is_named(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    snap = doc(run(config, "backup"))["snapshot_id"]
    import os

    from crmops.config import load_config
    from crmops.repository import open_repository

    os.environ["TEST_PASSPHRASE"] = PASSPHRASE
    repo = open_repository(load_config(config))
    victim = manifest_chunks(repo.manifest(snap))[3]
    path = tmp_path / "repo" / chunk_key(victim)
    raw = bytearray(path.read_bytes())
    raw[40] ^= 0x01
    path.write_bytes(bytes(raw))

    r = run(config, "copy", check=False)
    assert r.returncode == 26, r.stderr
    assert victim in r.stderr and snap in r.stderr and "Traceback" not in r.stderr
    c = doc(r)["copies"][0]
    assert c["failed"] and victim in c["damaged_chunks"] and c["copied"] == []
    assert not (tmp_path / "usb" / chunk_key(victim)).exists()  # never copied
    assert not (tmp_path / "usb" / "snapshots" / snap).exists()  # and no manifest naming it
    assert (tmp_path / "repo" / "quarantine" / victim).exists()  # quarantined at the source, as check does
    # the next backup stores it again (healing), the next copy completes
    doc(run(config, "backup"))
    healed = doc(run(config, "copy"))["copies"][0]
    assert healed["ok"] and snap in healed["copied"]
    assert doc(run(config, "check", "--read-data", "--repository", "usb"))["ok"]


def test_unknown_copy_and_another_repository_are_refused_before_any_write(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    doc(run(config, "backup"))
    r = run(config, "copy", "--to", "nowhere", check=False)
    assert r.returncode == 3 and "no copy named 'nowhere' (copies: usb)" in r.stderr
    assert not (tmp_path / "usb").exists()
    r = run(config, "snapshots", "--repository", "nowhere", check=False)
    assert r.returncode == 3 and "no copy named" in r.stderr
    # a place holding another repository is not overwritten
    other = tmp_path / "other"
    other_cfg = write_config(other if other.mkdir() is None else other, [])
    run(other_cfg, "repo", "init")
    bad = write_config(tmp_path, [{"name": "usb", "url": f"file://{other / 'repo'}"}], name="bad.yaml")
    held = tree_digest(other / "repo")
    r = run(bad, "copy", check=False)
    assert r.returncode == 3 and "holds another repository" in r.stderr
    assert tree_digest(other / "repo") == held
