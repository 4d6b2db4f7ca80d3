"""Retention: which snapshots go, and prune never deleting what a snapshot or a running backup needs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crmops.config import Config, RetentionConfig
from crmops.errors import LockBusy
from crmops.prune.workflow import forget, prune
from crmops.repository import Credential, Repository
from crmops.repository.retention import plan
from crmops.services.check import check
from crmops.storage.local import LocalStore
from tests.repository.test_repository import data_of, pieces, snapshot

NONE = RetentionConfig(keep_last=0, keep_hourly=0, keep_daily=0, keep_weekly=0, keep_monthly=0, keep_yearly=0)


def nightly(days: int) -> list[tuple[str, datetime]]:
    """One snapshot a night at 02:30 for `days` nights up to 2026-11-22, plus a second on the last day."""
    end = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)
    snaps = [(f"n{i:03d}", end - timedelta(days=i)) for i in range(days)]
    return [("extra", end + timedelta(hours=9)), *snaps]


def test_keep_last() -> None:
    keep, drop = plan(nightly(10), NONE.model_copy(update={"keep_last": 3}))
    assert list(keep) == ["extra", "n000", "n001"] and len(drop) == 8


def test_daily_keeps_the_newest_of_each_day() -> None:
    keep, drop = plan(nightly(10), NONE.model_copy(update={"keep_daily": 3}))
    assert sorted(keep) == ["extra", "n001", "n002"]  # extra (11:30) beats n000 (02:30) on 2026-11-22
    assert "n000" in drop


def test_weekly_monthly_yearly_over_two_years() -> None:
    snaps = nightly(800)
    keep, drop = plan(snaps, NONE.model_copy(update={"keep_weekly": 4, "keep_monthly": 12, "keep_yearly": 3}))
    weeks = {r for rs in keep.values() for r in rs if r.startswith("weekly")}
    months = {r for rs in keep.values() for r in rs if r.startswith("monthly")}
    years = {r for rs in keep.values() for r in rs if r.startswith("yearly")}
    assert len(weeks) == 4 and len(months) == 12 and years == {"yearly 2026", "yearly 2025", "yearly 2024"}
    assert len(keep) + len(drop) == len(snaps)
    assert keep["extra"] == ["weekly 2026-W47", "monthly 2026-11", "yearly 2026"]


def test_every_reason_is_listed() -> None:
    keep, _ = plan(nightly(3), RetentionConfig(keep_last=1, keep_daily=1, keep_hourly=0, keep_weekly=0,
                                               keep_monthly=0, keep_yearly=0))
    assert keep == {"extra": ["last", "daily 2026-11-22"]}


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalStore(tmp_path / "repo"), Credential(passphrase="p"), chunk_avg=64 * 1024)


def test_forget_and_prune_free_space_and_keep_the_rest_whole(repo: Repository) -> None:
    snaps = [snapshot(repo, data_of(400_000, seed=i)) for i in range(4)]
    policy = NONE.model_copy(update={"keep_last": 2})
    dry = forget(Config(), policy=policy, dry_run=True, prune_after=True, repo=repo)
    assert dry.forget == [snaps[1]["id"], snaps[0]["id"]] and dry.prune.chunks_deleted > 0
    assert len(repo.snapshot_ids()) == 4  # a dry run changes nothing
    before = sum(1 for _ in repo.store.list("data/"))
    done = forget(Config(), policy=policy, prune_after=True, repo=repo)
    assert done.prune.chunks_deleted == dry.prune.chunks_deleted
    assert sum(1 for _ in repo.store.list("data/")) == before - done.prune.chunks_deleted
    assert sorted(repo.snapshot_ids()) == sorted([snaps[2]["id"], snaps[3]["id"]])
    assert check(Config(), read_data=True, repo=repo).ok
    assert b"".join(repo.read_stream(repo.manifest(snaps[2]["id"]))) == data_of(400_000, seed=2)


def test_prune_waits_for_running_backups(repo: Repository) -> None:
    """A backup's uploaded-but-unreferenced chunks are safe: prune refuses while it runs."""
    started, finish = threading.Event(), threading.Event()
    data = data_of(600_000, seed=42)

    def slow_pieces():  # type: ignore[no-untyped-def]
        for i, p in enumerate(pieces(data)):
            if i == 3:
                started.set()
                finish.wait(30)
            yield p

    result: dict = {}

    def run_backup() -> None:
        with repo.writer() as w:
            w.add_stream("database", slow_pieces(), format="raw")
            result["m"] = w.commit({})

    t = threading.Thread(target=run_backup)
    t.start()
    assert started.wait(30)
    with pytest.raises(LockBusy, match="backup"):
        prune(Config(), repo=repo)
    finish.set()
    t.join(30)
    assert prune(Config(), repo=repo).chunks_deleted == 0
    assert b"".join(repo.read_stream(repo.manifest(result["m"]["id"]))) == data
