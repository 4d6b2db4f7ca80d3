"""Copying the WAL and binlog archive, so the copy alone can restore to a point in time.

Each archived file is authenticated (its name is bound into the seal) before it is
written; the state objects (`walstate/`, `binlogstate/`: the newest push, the window's
end) are written after the files they describe. Files the copy's own retention removed
are not brought back: per cluster, only files from the copy's oldest kept one on are copied.
A `.partial` segment the repository replaced by its full segment is removed from the copy too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from crmops.copy.reseal import reseal
from crmops.errors import CrmopsError, IntegrityError
from crmops.pitr.archive import FILE_RE, SEGMENT_RE, parse_segment
from crmops.repository import Repository
from crmops.repository.objects import Sealer
from crmops.storage import Store

log = logging.getLogger("crmops.copy")


def _aad(key: str) -> tuple[str, str, str] | None:
    """(system or server id, file name, associated data) of an archive object key, or None if not one."""
    parts = key.split("/")
    if parts[0] == "wal" and len(parts) == 4 and FILE_RE.match(parts[3]):
        return parts[1], parts[3], f"wal:{parts[1]}/{parts[3]}"
    if parts[0] == "binlog" and len(parts) == 3:
        return parts[1], parts[2], f"binlog:{parts[1]}/{parts[2]}"
    return None


def _order(key: str, name: str) -> tuple[int, str] | None:
    """Where a file sits in its archive, to compare with the copy's oldest; None: always copied."""
    if key.startswith("wal/"):
        if name.endswith(".history"):
            return None
        return parse_segment(name[:24])[1], ""
    return 0, name


def copy_archive(source: Repository, dest: Store, threads: int,
                 progress: Callable[[int], None] | None = None, dest_sealer: Sealer | None = None) -> dict[str, Any]:
    """Copy what the copy lacks of the archive; {"files_copied", "bytes_copied", "damaged", ...}.

    dest_sealer: the copy's own keys (key: own), under which each file is sealed again; its
    sealed size stays the repository's, so presence is still judged by size.
    """
    out: dict[str, Any] = {"files_copied": 0, "bytes_copied": 0, "files_present": 0, "damaged": {},
                           "partials_removed": []}
    theirs: dict[str, int] = {}
    mine: dict[str, int] = {}
    for prefix in ("wal/", "binlog/"):
        theirs.update(dest.list(prefix))
        mine.update(source.store.list(prefix))
    oldest: dict[tuple[str, str], tuple[int, str]] = {}  # (kind, id) -> the copy's oldest file
    for key in theirs:
        parsed = _aad(key)
        order = _order(key, parsed[1]) if parsed else None
        if parsed and order is not None:
            group = (key.split("/")[0], parsed[0])
            oldest[group] = min(oldest.get(group, order), order)
    todo = []
    for key, size in sorted(mine.items()):
        parsed = _aad(key)
        if parsed is None:
            continue
        if theirs.get(key) == size:
            out["files_present"] += 1
            continue
        order = _order(key, parsed[1])
        floor = oldest.get((key.split("/")[0], parsed[0]))
        if key not in theirs and order is not None and floor is not None and order < floor:
            continue  # the copy's retention removed it, or it predates what the copy keeps
        todo.append((key, parsed[2]))

    lock = threading.Lock()

    def one(key: str, aad: str) -> None:
        try:
            sealed = reseal(source.sealer, dest_sealer, source.store.get(key), aad, key)
        except IntegrityError as e:
            with lock:
                out["damaged"][key] = e.message
            log.warning("archive file %s not copied: %s", key, e.message)
            return
        dest.put(key, sealed)
        with lock:
            out["files_copied"] += 1
            out["bytes_copied"] += len(sealed)
        if progress:
            progress(len(sealed))

    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(one, key, aad) for key, aad in todo]:
            f.result()
    # the state objects last: they name the newest file, which is now in the copy
    for prefix, label in (("walstate/", "walstate"), ("binlogstate/", "binlogstate")):
        for key, _size in source.store.list(prefix):
            ident = key.split("/", 1)[1]
            try:
                sealed = reseal(source.sealer, dest_sealer, source.store.get(key), f"{label}:{ident}", key)
            except IntegrityError as e:
                out["damaged"][key] = e.message
                continue
            dest.put(key, sealed)
    for key in theirs:
        name = key.rsplit("/", 1)[1]
        if key.startswith("wal/") and name.endswith(".partial") and key not in mine \
                and SEGMENT_RE.match(name[:-8]) and key[:-8] in theirs | mine:
            try:
                dest.delete(key)
                out["partials_removed"].append(name)
            except CrmopsError as e:
                log.warning("copy: %s stays (%s)", key, e.message)
    return out
