"""A copy with its own keys (key: own): the repository's key does not open it, its own does, and it
stands alone once the repository is gone; nightly runs write only the new chunks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from crmops.config import load_config
from crmops.copy.target import open_copy
from crmops.errors import IntegrityError, WrongKey
from crmops.repository import Credential, Repository, open_repository, write_key_file
from crmops.repository.paths import manifest_chunks
from crmops.storage.local import LocalStore
from tests.copy.helpers import PASSPHRASE, crm, doc, run, tree_digest, write_config


def _setup(tmp_path: Path) -> Path:
    crm(tmp_path)
    write_key_file(tmp_path / "vault.key")
    config = write_config(tmp_path, [{"name": "vault", "url": f"file://{tmp_path / 'vault'}", "key": "own",
                                      "encryption": {"key_file": str(tmp_path / "vault.key")}}])
    run(config, "repo", "init")
    return config


def test_own_key_copy_is_sealed_under_its_own_key_and_restorable_alone(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    first = doc(run(config, "backup"))["snapshot_id"]
    c = doc(run(config, "copy"))["copies"][0]
    assert c["ok"] and c["key"] == "own" and c["created"] and c["copied"] == [first] and c["chunks_copied"] > 20

    os.environ["TEST_PASSPHRASE"] = PASSPHRASE
    cfg = load_config(config)
    primary = open_repository(cfg)
    vault_store = LocalStore(tmp_path / "vault")
    # the repository's passphrase does not open the copy, nor does its key authenticate the copy's objects
    with pytest.raises(WrongKey):
        Repository.open(vault_store, Credential(passphrase=PASSPHRASE))
    vault = open_copy(cfg, "vault")
    assert vault.id != primary.id and vault.config["copy_of"] == primary.id
    copy_manifest = vault.manifest(first)
    source_manifest = primary.manifest(first)
    mine, theirs = manifest_chunks(copy_manifest), manifest_chunks(source_manifest)
    assert len(mine) == len(theirs) and not set(mine) & set(theirs)  # its own keyed ids
    assert set(copy_manifest["chunk_sizes"]) == set(mine)
    for cid in mine[:5]:
        sealed = vault_store.get(f"data/{cid[:2]}/{cid}")
        with pytest.raises(IntegrityError):
            primary.sealer.authenticate(sealed, cid, "copy chunk")
        assert vault.read_chunk(cid)  # the copy's key opens it, content checked against its id
    with pytest.raises(IntegrityError):
        primary.sealer.open(vault_store.get(f"snapshots/{first}"), f"manifest:{first}", "copy manifest")
    # the same plaintext, chunk by chunk
    assert b"".join(vault.read_chunks(mine)) == b"".join(primary.read_chunks(theirs))

    # the second night: only the new snapshot's new chunks are written, nothing present is rewritten
    before = tree_digest(tmp_path / "vault")
    (tmp_path / "files" / "new-quote.pdf").write_bytes(os.urandom(300_000))
    second = doc(run(config, "backup"))["snapshot_id"]
    c2 = doc(run(config, "copy"))["copies"][0]
    assert c2["copied"] == [second] and c2["already"] == [first]
    assert 0 < c2["chunks_copied"] < c["chunks_copied"] and c2["chunks_present"] > 0
    after = tree_digest(tmp_path / "vault")
    assert {k: v for k, v in after.items() if k in before} == before
    new_chunks = [k for k in after if k.startswith("data/") and k not in before]
    assert len(new_chunks) == c2["chunks_copied"]
    assert sorted(k for k in after if k not in before and not k.startswith("data/"))[0].startswith("idmap/")
    # a third run: nothing to do
    c3 = doc(run(config, "copy"))["copies"][0]
    assert c3["copied"] == [] and c3["chunks_copied"] == 0
    assert tree_digest(tmp_path / "vault") == after

    state = doc(run(config, "status", check=False))["copies"][0]
    assert state["key"] == "own" and state["error"] is None and state["newest_snapshot"] == second
    # the copy's key alone: check --read-data, drill and restore with the repository gone
    shutil.rmtree(tmp_path / "repo")
    listed = json.loads(run(config, "snapshots", "--repository", "vault").stdout)
    assert {s["id"] for s in listed} == {first, second}
    assert doc(run(config, "check", "--read-data", "--repository", "vault"))["ok"]
    drill = doc(run(config, "drill", "--repository", "vault", "--report-dir", str(tmp_path / "drills")))
    assert drill["ok"] and drill["snapshot_id"] == second
    run(config, "restore", "--repository", "vault", second, "--to", f"sqlite:///{tmp_path / 'back.db'}",
        "--attachments-to", str(tmp_path / "files-back"))
    back = (tmp_path / "files-back" / "new-quote.pdf").read_bytes()
    assert back == (tmp_path / "files" / "new-quote.pdf").read_bytes()


def test_a_wrong_copy_key_is_one_line_and_a_shared_copy_is_not_taken_over(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    run(config, "backup")
    run(config, "copy")
    write_key_file(tmp_path / "other.key")
    (tmp_path / "vault.key").write_text((tmp_path / "other.key").read_text())
    before = tree_digest(tmp_path / "vault")
    r = run(config, "copy", check=False)
    assert r.returncode == 24 and "copy vault: its own key" in r.stderr and "Traceback" not in r.stderr
    r = run(config, "snapshots", "--repository", "vault", check=False)
    assert r.returncode == 24 and "Traceback" not in r.stderr
    assert tree_digest(tmp_path / "vault") == before
    # a place holding a shared-key copy is refused by a key: own copy, before any write
    shared = write_config(tmp_path, [{"name": "usb", "url": f"file://{tmp_path / 'usb'}"}], name="shared.yaml")
    run(shared, "copy")
    own = write_config(tmp_path, [{"name": "usb", "url": f"file://{tmp_path / 'usb'}", "key": "own",
                                   "encryption": {"key_file": str(tmp_path / "other.key")}}], name="own.yaml")
    usb_before = tree_digest(tmp_path / "usb")
    r = run(own, "copy", check=False)
    assert r.returncode == 3 and "key: shared" in r.stderr, r.stderr
    assert tree_digest(tmp_path / "usb") == usb_before
    # and the other way round
    r = run(shared, "copy", "--to", "usb", check=False)
    assert r.returncode == 0
    ownplace = write_config(tmp_path, [{"name": "usb", "url": f"file://{tmp_path / 'vault'}"}], name="s2.yaml")
    r = run(ownplace, "copy", check=False)
    assert r.returncode == 3 and "key: own" in r.stderr, r.stderr


def test_key_own_without_a_key_is_refused_by_the_configuration(tmp_path: Path) -> None:
    crm(tmp_path)
    config = write_config(tmp_path, [{"name": "vault", "url": f"file://{tmp_path / 'vault'}", "key": "own"}])
    r = run(config, "snapshots", check=False)
    assert r.returncode == 3 and "key: own needs encryption" in r.stderr and "Traceback" not in r.stderr


def test_a_run_killed_before_its_id_map_resumes_without_writing_a_chunk_twice(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    snap = doc(run(config, "backup"))["snapshot_id"]
    first = doc(run(config, "copy"))["copies"][0]
    # what a kill after the chunks but before the id map and the manifest leaves
    for p in [*(tmp_path / "vault" / "idmap").iterdir(), tmp_path / "vault" / "snapshots" / snap]:
        p.unlink()
    data = {k: v for k, v in tree_digest(tmp_path / "vault").items() if k.startswith("data/")}
    again = doc(run(config, "copy"))["copies"][0]
    assert again["copied"] == [snap] and again["chunks_copied"] == 0
    assert again["chunks_present"] == first["chunks_copied"]
    assert {k: v for k, v in tree_digest(tmp_path / "vault").items() if k.startswith("data/")} == data
    assert doc(run(config, "check", "--read-data", "--repository", "vault"))["ok"]
    # the map is written again, naming every chunk of the snapshot
    os.environ["TEST_PASSPHRASE"] = PASSPHRASE
    from crmops.copy.reseal import IdMap

    vault = open_copy(load_config(config), "vault")
    assert len(list((tmp_path / "vault" / "idmap").iterdir())) == 1
    assert set(IdMap(vault).pairs.values()) == set(manifest_chunks(vault.manifest(snap)))


@pytest.mark.parametrize("key", ["own", "shared"])
def test_a_chunk_damaged_in_the_copy_is_written_again_by_the_next_copy(tmp_path: Path, key: str) -> None:
    crm(tmp_path)
    write_key_file(tmp_path / "vault.key")
    entry = {"name": "vault", "url": f"file://{tmp_path / 'vault'}"}
    if key == "own":
        entry.update(key="own", encryption={"key_file": str(tmp_path / "vault.key")})
    config = write_config(tmp_path, [entry])
    run(config, "repo", "init")
    snap = doc(run(config, "backup"))["snapshot_id"]
    run(config, "copy")
    os.environ["TEST_PASSPHRASE"] = PASSPHRASE
    victim = manifest_chunks(open_copy(load_config(config), "vault").manifest(snap))[2]
    path = tmp_path / "vault" / "data" / victim[:2] / victim
    raw = bytearray(path.read_bytes())
    raw[30] ^= 0x01
    path.write_bytes(bytes(raw))
    bad = run(config, "check", "--read-data", "--repository", "vault", check=False)
    assert bad.returncode == 26 and victim in bad.stderr, bad.stderr
    assert (tmp_path / "vault" / "quarantine" / victim).exists()
    healed = doc(run(config, "copy", "--all"))["copies"][0]
    assert healed["ok"]
    assert doc(run(config, "check", "--read-data", "--repository", "vault"))["ok"]
    assert not (tmp_path / "vault" / "quarantine" / victim).exists()
