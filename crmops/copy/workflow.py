"""`crmops copy`: bring each configured copy up to date with the repository.

Which snapshots: the ones named, every one with --all, or by default the ones the copy's
own retention would keep among the repository's (plus base backups within its pitr_days),
so a snapshot the copy's `forget` removed is not copied back the next night.

Locks: the copy is locked like a backup locks a repository (shared; the copy's prune
waits). The repository is locked the same way when the credentials allow it; a pull-mode
host with read-only credentials copies without, and a snapshot forgotten in the repository
during the copy then simply fails to copy (named), nothing else.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from crmops.config import Config, CopyConfig
from crmops.copy.archive import copy_archive
from crmops.copy.reseal import ResealingCopier
from crmops.copy.snapshots import ChunkCopier, copy_snapshots
from crmops.copy.target import open_copy_store, prepare, prepare_own
from crmops.errors import ConfigError, CrmopsError, IntegrityError
from crmops.pitr.retention import plan_physical
from crmops.repository import Repository, open_repository
from crmops.repository.listing import Listing
from crmops.repository.retention import plan_groups

log = logging.getLogger("crmops.copy")


def select(listing: Listing, refs: list[str], all_: bool, copy: CopyConfig, config: Config) -> list[dict[str, Any]]:
    """The manifests to copy (see the module docstring); an unknown ref is refused before any write."""
    manifests = listing.manifests
    if refs:
        chosen = []
        for ref in refs:
            matches = [m for m in manifests if m["id"].startswith(ref)]
            if len(matches) != 1:
                from crmops.errors import SnapshotNotFound

                raise SnapshotNotFound(f"no snapshot {ref!r}" if not matches else f"{ref!r} matches several snapshots",
                                       hint="`crmops snapshots` lists them")
            chosen.append(matches[0])
        return chosen
    if all_:
        return list(manifests)
    policy = copy.retention or config.retention
    logical = [m for m in manifests if m.get("kind") != "physical"]
    keep: set[str] = set()
    for g in plan_groups(logical, policy):
        keep.update(g["keep"])
    physical = [m for m in manifests if m.get("kind") == "physical"]
    keep.update(plan_physical(physical, policy.pitr_days)[0])
    return [m for m in manifests if m["id"] in keep]


def _threads(config: Config, name: str) -> int:
    c = config.copy_named(name)
    return c.s3.max_concurrency if c.url.startswith("s3://") else 4


def copy_one(config: Config, source: Repository, listing: Listing, name: str, refs: list[str], all_: bool,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Copy snapshots and the archive to one copy; the result names what failed and why."""
    started = time.monotonic()
    copy = config.copy_named(name)
    store = open_copy_store(config, name)
    chosen = select(listing, refs, all_, copy, config)
    threads = _threads(config, name)
    own = copy.key == "own"
    if own:
        prepared, dest = prepare_own(source, store, config, name)
        copier: ChunkCopier = ResealingCopier(source, dest, threads, progress)
    else:
        prepared = prepare(source, store, name)
        # the same config and key slots, so the same master key: no second key derivation
        dest = Repository(store, json.loads(store.get("config")), source.key, source.slot_id)
        copier = ChunkCopier(source, dest, threads, progress)
    with ExitStack() as stack:
        stack.enter_context(dest.lock(exclusive=False, purpose="copy"))
        try:
            stack.enter_context(source.lock(exclusive=False, purpose=f"copy to {name}"))
            source_locked = True
        except CrmopsError as e:  # read-only credentials (pull mode), or a prune under way there
            if "locked by" in e.message:
                raise
            log.info("copy %s: the repository is not locked (%s); reading it as it is", name, e.message)
            source_locked = False
        snaps = copy_snapshots(copier, chosen)
        archive = copy_archive(source, store, threads, progress, dest.sealer if own else None)
    ok = not snaps.failed and not archive["damaged"]
    return {"name": name, "url": store.url, "ok": ok, "_repository": dest, "key": copy.key, **prepared,
            "snapshots_selected": len(chosen), **snaps.to_dict(),
            "archive": archive, "repository_locked": source_locked,
            "seconds": round(time.monotonic() - started, 2)}


def run(config: Config, to: list[str], refs: list[str], all_: bool,
        progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Every named copy (all configured ones when none is named); failure() says what one that failed lacks."""
    if config.reading_copy:
        raise ConfigError("copy reads the repository and writes its copies; it cannot run with --repository")
    if not config.copies:
        raise ConfigError("no copies are configured", hint="add a `copies:` list to the configuration "
                                                           "(README: \"A second copy in another place\")")
    if refs and all_:
        raise ConfigError("name snapshots or give --all, not both")
    names = list(dict.fromkeys(to)) or [c.name for c in config.copies]
    for n in names:
        config.copy_named(n)  # every name checked before anything is written
    source = open_repository(config)
    listing = source.listing()
    copies = [copy_one(config, source, listing, n, refs, all_, progress) for n in names]
    from crmops.copy.lag import states

    opened = {c["name"]: c.pop("_repository") for c in copies}
    after = {s["name"]: s for s in states(config, primary=source, copies=opened)}
    for c in copies:  # how far each copy lags now: the run record keeps it for the metrics
        s = after[c["name"]]
        c["state"] = {"newest_snapshot_time": s["newest_snapshot_time"], "lag_seconds": s["lag_seconds"],
                      "archive_lag_seconds": s["archive_lag_seconds"]}
    result = {"ok": all(c["ok"] for c in copies), "copies": copies,
              "damaged_manifests": [d.id for d in listing.damaged]}
    return result


def failure(result: dict[str, Any]) -> IntegrityError | None:
    """The one error line for a run in which a copy did not receive everything, or None."""
    for c in result["copies"]:
        if c["failed"]:
            sid, why = next(iter(c["failed"].items()))
            more = len(c["failed"]) - 1
            return IntegrityError(f"copy {c['name']}: snapshot {sid} not copied: {why}"
                                  + (f" (+{more} more)" if more else ""),
                                  hint="the damaged chunk is quarantined in the repository; the next backup "
                                       "stores it again, then run `crmops copy` once more")
        if c["archive"]["damaged"]:
            key, why = next(iter(c["archive"]["damaged"].items()))
            return IntegrityError(f"copy {c['name']}: archive file {key} not copied: {why}",
                                  hint="`crmops check` on the repository shows the damage")
    return None
