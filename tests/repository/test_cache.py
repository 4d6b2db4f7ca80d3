"""A remote repository's local copies of manifests, records and key slots: used only as the
listing names them, authenticated like the stored objects, never hiding damage or a removed slot.

The copies serve any store; the tests give a local one a cache folder, which is what
open_repository does for S3 (tests/storage/test_s3.py covers the S3 side end to end).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crmops.errors import IntegrityError, WrongKey
from crmops.repository import Credential, Repository
from crmops.repository.cache import ObjectCache
from crmops.storage.local import LocalStore

PW = Credential(passphrase="correct horse battery staple")


class CountingStore(LocalStore):
    """A local store that counts GETs per key prefix, as an S3 bill would."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets: dict[str, int] = {}

    def get(self, key: str) -> bytes:
        top = key.split("/", 1)[0]
        self.gets[top] = self.gets.get(top, 0) + 1
        return super().get(key)


def backup(repo: Repository, data: bytes) -> dict:
    with repo.writer() as w:
        w.add_stream("database", [data], format="raw")
        return w.commit({})


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    Repository.init(LocalStore(tmp_path / "repo"), PW, chunk_avg=64 * 1024)
    return CountingStore(tmp_path / "repo")


def test_a_second_listing_reads_no_manifest_from_the_store(store: CountingStore, tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    repo = Repository.open(store, PW, cache)
    ids = [backup(repo, bytes([i]) * 70_000)["id"] for i in range(3)]
    repo.put_record(ids[0], "verification", {"ok": True})
    first = Repository.open(store, PW, cache)
    assert [m["id"] for m in first.listing().manifests] == ids
    assert len(first.all_records()[ids[0]]) == 1
    store.gets.clear()
    again = Repository.open(store, PW, cache)
    assert [m["id"] for m in again.listing().manifests] == ids
    assert again.all_records()[ids[0]][0]["ok"] is True
    assert store.gets == {"config": 1}  # the key slot, the manifests and the record came from the copies


def test_a_damaged_copy_is_dropped_and_the_store_read(store: CountingStore, tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    repo = Repository.open(store, PW, cache)
    sid = backup(repo, b"x" * 70_000)["id"]
    repo.listing()
    copy = next((tmp_path / "cache").rglob(sid))
    raw = bytearray(copy.read_bytes())
    raw[-5] ^= 1  # same size, one bit flipped: only authentication can tell
    copy.write_bytes(bytes(raw))
    store.gets.clear()
    assert [m["id"] for m in Repository.open(store, PW, cache).listing().manifests] == [sid]
    assert store.gets.get("snapshots") == 1


def test_damage_in_the_store_shows_once_the_listing_changes(store: CountingStore, tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    repo = Repository.open(store, PW, cache)
    sid = backup(repo, b"y" * 70_000)["id"]
    repo.listing()
    stored = tmp_path / "repo" / "snapshots" / sid
    stored.write_bytes(stored.read_bytes()[:-3])  # truncated: the listed size no longer matches the copy
    listing = Repository.open(store, PW, cache).listing()
    assert listing.manifests == [] and [d.id for d in listing.damaged] == [sid]


def test_a_deleted_snapshot_leaves_no_copy(store: CountingStore, tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    repo = Repository.open(store, PW, cache)
    keep, gone = backup(repo, b"a" * 70_000)["id"], backup(repo, b"b" * 70_000)["id"]
    repo.listing()
    store.delete(f"snapshots/{gone}")
    assert [m["id"] for m in Repository.open(store, PW, cache).listing().manifests] == [keep]
    assert not list((tmp_path / "cache").rglob(gone))


def test_a_removed_key_slot_no_longer_opens_through_its_copy(store: CountingStore, tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    repo = Repository.open(store, PW, cache)
    other = Credential(passphrase="the departing administrator's")
    slot = repo.add_key(other, "departing")
    Repository.open(store, other, cache)  # its slot is now copied locally
    repo.remove_key(slot)
    with pytest.raises(WrongKey):
        Repository.open(store, other, cache)


def test_check_reads_the_store_not_the_copies(store: CountingStore, tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    repo = Repository.open(store, PW, cache)
    sid = backup(repo, b"z" * 70_000)["id"]
    repo.listing()
    stored = tmp_path / "repo" / "snapshots" / sid
    raw = bytearray(stored.read_bytes())
    raw[-5] ^= 1  # same size: the listing cannot tell, a read can
    stored.write_bytes(bytes(raw))
    cached = Repository.open(store, PW, cache)
    assert [m["id"] for m in cached.listing().manifests] == [sid]  # the copy, as the listing allows
    with pytest.raises(IntegrityError):  # what `check` does: each manifest by id, from the store
        cached._load_manifest(sid)
