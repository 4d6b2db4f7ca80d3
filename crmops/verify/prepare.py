"""What a verification does while its sandbox starts: everything that does not need the sandbox.

The database stream is fetched, authenticated and staged in a private file, the other
streams' chunks authenticated, the attachments restored and hashed, and the snapshot
before this one looked up for the shrink check. A container's start is seconds of
waiting (initdb, a temporary server, the real one); side by side with this work the
slower of the two sets the pace. Nothing is skipped: every chunk is still opened and
checked before the restore reads it, and a bad one fails the restore exactly as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crmops.engines.base import STAGE_LIMIT
from crmops.errors import CrmopsError, DatabaseError, IntegrityError
from crmops.repository import Repository
from crmops.services.restore import restore_files, stage
from crmops.verify import checks
from crmops.verify.checks import CheckResult

#: dump formats restored from a staged file (pg_restore -j or one transaction; mysql reading the file);
#: SQLite's sandbox is a folder, ready at once, and streams as before
STAGED = {"pg-custom", "mysql-sql"}


@dataclass
class Prepared:
    """The sandbox-independent half of a verification, done before the sandbox is ready."""

    #: the database stream whole, every chunk authenticated (None: streamed during the restore)
    staged: Path | None = None
    #: seconds the staging took: part of the recovery time a drill reports
    staged_seconds: float = 0.0
    #: "restore failed: ..." when a chunk of the database stream failed (the snapshot's fault)
    restore_failure: str | None = None
    #: the attachments, restored under a temporary folder (None: the snapshot has none, or they failed)
    attachments: Path | None = None
    attachments_check: CheckResult | None = None
    files_checked: int = 0
    previous: dict[str, Any] | None = None


def prepare(repo: Repository, manifest: dict[str, Any], stack: ExitStack, folder: Path,
            alive: Callable[[], None], previous: Callable[[], dict[str, Any] | None],
            mark: Callable[[str], None]) -> Prepared:
    """Stage, authenticate and restore what needs no sandbox; alive() raises once the sandbox's start has
    failed (no use staging a gigabyte for a sandbox that is not coming). Errors outside the snapshot
    (an unreachable repository) raise; a damaged snapshot comes back in restore_failure."""
    out = Prepared()
    stream = manifest["streams"]["database"]
    if stream["format"] in STAGED and stream["size"] <= STAGE_LIMIT:
        t0 = time.monotonic()
        try:
            out.staged = stack.enter_context(stage(repo, manifest, lambda n: alive(), files=False))
        except (IntegrityError, DatabaseError) as e:
            out.restore_failure = f"restore failed: {e.line()}"
            return out
        out.staged_seconds = time.monotonic() - t0
        mark("database stream fetched, authenticated and staged")
    for name, other in manifest["streams"].items():
        if name != "database":
            for _ in repo.read_chunks(other["chunks"]):
                alive()
    if manifest.get("files"):
        out.attachments, out.attachments_check, out.files_checked = attachments(repo, manifest, folder)
        if out.attachments is not None:
            mark("attachments restored and hashed")
    out.previous = previous()
    return out


def attachments(repo: Repository, manifest: dict[str, Any], folder: Path) -> tuple[Path | None, CheckResult, int]:
    """(folder, the attachments check, files checked): each file restored and compared with its hash."""
    files = [f for f in manifest.get("files", []) if f.get("kind") == "file"]
    try:
        restore_files(repo, manifest, folder)
    except CrmopsError as e:
        return None, CheckResult("attachments", "attachments", False, f"attachments: {e.line()}"), 0
    bad = [f["path"] for f in files if checks.sha256_file(folder / f["path"]) != f.get("sha256")]
    if bad:
        return folder, CheckResult("attachments", "attachments", False,
                                   f"attachments: {len(bad)} restored files do not match their hashes, "
                                   f"first {checks.mask_path(bad[0])}"), len(files)
    return folder, CheckResult("attachments", "attachments", True,
                               f"{len(files)} attachment files restored, every hash matches"), len(files)
