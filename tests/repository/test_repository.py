"""The repository: round trips, dedup, tamper detection by name, keys, and the documented format."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

from crmops.errors import IntegrityError, KeyFileMissing, LockBusy, RepositoryTooNew, SnapshotNotFound, WrongKey
from crmops.repository import Credential, Repository, write_key_file
from crmops.storage.local import LocalStore

PW = Credential(passphrase="correct horse battery staple")


def pieces(data: bytes, size: int = 65536) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def snapshot(repo: Repository, data: bytes, **meta: object) -> dict:
    with repo.writer() as w:
        w.add_stream("database", pieces(data), format="raw")
        return w.commit(dict(meta))


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalStore(tmp_path / "repo"), PW, chunk_avg=64 * 1024)


def data_of(n: int, seed: int = 1) -> bytes:
    r = random.Random(seed)
    words = [bytes(r.getrandbits(8) for _ in range(r.randint(3, 12))) for _ in range(500)]
    return b" ".join(r.choice(words) for _ in range(n // 7))[:n]


def test_round_trip_and_dedup(repo: Repository) -> None:
    data = data_of(3 << 20)
    first = snapshot(repo, data)
    again = Repository.open(repo.store, PW)
    assert b"".join(again.read_stream(again.manifest(first["id"][:6]))) == data
    second = snapshot(repo, data)
    assert second["stats"]["chunks_new"] == 0 and second["stats"]["bytes_uploaded"] == 0
    edited = data[:1_000_000] + b"a new contact row" + data[1_000_000:]
    third = snapshot(repo, edited)
    assert 0 < third["stats"]["chunks_new"] <= 3  # content-defined: only the chunks around the insert
    assert third["stats"]["chunks"] > 20
    assert b"".join(repo.read_stream(repo.manifest("latest"))) == edited


def test_chunk_ids_and_objects_reveal_nothing(repo: Repository, tmp_path: Path) -> None:
    import hashlib

    data = b"Contact: Wang Wei <wang@example.cn> " * 5000
    m = snapshot(repo, data)
    cid = m["streams"]["database"]["chunks"][0]
    assert cid != hashlib.sha256(data[:len(data)]).hexdigest()
    for path in (tmp_path / "repo").rglob("*"):
        if path.is_file():
            assert b"Wang Wei" not in path.read_bytes()


def _objects(root: Path, prefix: str) -> list[Path]:
    return sorted(p for p in (root / prefix).rglob("*") if p.is_file())


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "swap"])
def test_damaged_chunk_is_named(repo: Repository, tmp_path: Path, damage: str) -> None:
    from crmops.config import Config
    from crmops.services.check import check

    m = snapshot(repo, data_of(1 << 20))
    chunks = _objects(tmp_path / "repo", "data")
    victim = chunks[len(chunks) // 2]
    if damage == "flip":
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        victim.write_bytes(bytes(raw))
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:20])
    elif damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(chunks[0].read_bytes())
    name = victim.relative_to(tmp_path / "repo").as_posix()
    with pytest.raises(IntegrityError) as e:
        repo.authenticate(m)
    assert name in e.value.line()
    report = check(Config(), read_data=True, repo=repo)
    assert [d.object for d in report.damaged] == [name]
    assert report.damaged[0].snapshots == [m["id"]]


def test_flipped_manifest_bit_is_detected(repo: Repository, tmp_path: Path) -> None:
    from crmops.config import Config
    from crmops.services.check import check

    m = snapshot(repo, b"x" * 1000)
    path = tmp_path / "repo" / "snapshots" / m["id"]
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x80
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=f"snapshots/{m['id']}"):
        repo.manifest(m["id"])
    assert check(Config(), repo=repo).damaged[0].object == f"snapshots/{m['id']}"


def test_wrong_passphrase_missing_key_file_newer_format(repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(WrongKey):
        Repository.open(repo.store, Credential(passphrase="wrong"))
    with pytest.raises(KeyFileMissing):
        Repository.open(repo.store, Credential(key_file=tmp_path / "nope.key"))
    config = json.loads((tmp_path / "repo" / "config").read_text())
    (tmp_path / "repo" / "config").write_text(json.dumps({**config, "format": 99}))
    with pytest.raises(RepositoryTooNew):
        Repository.open(repo.store, PW)


def test_key_slots(repo: Repository, tmp_path: Path) -> None:
    keyfile = tmp_path / "admin2.key"
    write_key_file(keyfile)
    assert oct(keyfile.stat().st_mode & 0o777) == "0o600"
    m = snapshot(repo, b"payload" * 100)
    slot = repo.add_key(Credential(key_file=keyfile), "second admin")
    via_file = Repository.open(repo.store, Credential(key_file=keyfile))
    assert b"".join(via_file.read_stream(via_file.manifest(m["id"]))) == b"payload" * 100
    # the departing administrator's passphrase slot goes; the key file still opens everything
    via_file.remove_key(repo.slot_id)
    with pytest.raises(WrongKey):
        Repository.open(repo.store, PW)
    with pytest.raises(Exception, match="last key slot"):
        via_file.remove_key(slot)
    assert len(via_file.key_slots()) == 1


def test_snapshot_refs(repo: Repository) -> None:
    with pytest.raises(SnapshotNotFound):
        repo.manifest("latest")
    snapshot(repo, b"a" * 10)
    with pytest.raises(SnapshotNotFound):
        repo.manifest("zzzz")


def test_records_come_back_in_the_order_written(repo: Repository) -> None:
    """The newest record is last even when many land in one second: the latest verification
    decides whether a snapshot may serve as an upgrade's base, so a failed one must not hide."""
    snap = snapshot(repo, data_of(1000))
    for i in range(30):
        repo.put_record(snap["id"], "verification", {"n": i, "ok": i % 2 == 0})
    assert [r["n"] for r in repo.records(snap["id"])] == list(range(30))


def test_exclusive_lock_waits_for_backups(repo: Repository) -> None:
    with repo.writer(), pytest.raises(LockBusy, match="backup"), repo.lock(exclusive=True, purpose="prune"):
        pass
    with repo.lock(exclusive=True, purpose="prune"), pytest.raises(LockBusy, match="prune"), repo.writer():
        pass


def test_format_doc_recipe_decrypts_a_snapshot(tmp_path: Path) -> None:
    """docs/FORMAT.md's recipe, run as written against a real repository."""
    doc = (Path(__file__).parents[2] / "docs" / "FORMAT.md").read_text(encoding="utf-8")
    recipe = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    passphrase = "an administrator's passphrase"
    repo = Repository.init(LocalStore(tmp_path / "repo"), Credential(passphrase=passphrase), chunk_avg=64 * 1024)
    data = data_of(600_000, seed=9)
    m = snapshot(repo, data)
    recipe = recipe.replace('repo, passphrase, snapshot = "/backup/crm", b"…", "…16 hex…"',
                            f'repo, passphrase, snapshot = {str(tmp_path / "repo")!r}, {passphrase.encode()!r}, '
                            f'{m["id"]!r}')
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(recipe, "FORMAT.md", "exec"), {})
    finally:
        os.chdir(cwd)
    assert (tmp_path / "dump.out").read_bytes() == data
