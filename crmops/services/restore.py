"""Bring a snapshot back: authenticate everything first, then write; never over live data.

Every chunk the restore needs is fetched and authenticated before the target is
touched, so a damaged repository can never leave a half-restored database. A
non-empty target is refused unless forced, and forcing first snapshots the target.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crmops.config import Config
from crmops.dburl import engine_kind, safe
from crmops.engines import open_engine
from crmops.engines.files import FileEntry, finish_dirs, restore_entry
from crmops.errors import ConfigError, IntegrityError, TargetNotEmpty
from crmops.repository import Repository, open_repository
from crmops.services.sources import resolve

ENGINE_OF_FORMAT = {"pg-custom": "postgresql", "mysql-sql": "mysql", "sqlite-db": "sqlite"}


@dataclass
class RestoreResult:
    snapshot_id: str
    target: str
    tables: list[str] | None
    seconds: float
    bytes: int
    files: int = 0
    safety_snapshot: str | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def restore(config: Config, ref: str, *, to_url: str, tables: list[str] | None = None,
            attachments_to: Path | None = None, force: bool = False, repo: Repository | None = None,
            progress: Callable[[int], None] | None = None, source: str | None = None) -> RestoreResult:
    started = time.monotonic()
    timeline: list[dict[str, Any]] = []

    def mark(step: str) -> None:
        timeline.append({"step": step, "at_s": round(time.monotonic() - started, 3)})

    repo = repo or open_repository(config)
    manifest = resolve(config, repo, ref, source=source)
    stream = manifest["streams"]["database"]
    wanted = ENGINE_OF_FORMAT.get(stream["format"])
    if wanted != engine_kind(to_url):
        raise ConfigError(f"snapshot {manifest['id']} holds a {wanted} dump; {safe(to_url)} is not {wanted}")
    target = open_engine(to_url, config.database)
    safety = None
    if not force and not target.is_empty():
        raise TargetNotEmpty(f"{safe(to_url)} is not empty",
                             hint="restore into an empty database, or add --force (a pre-restore snapshot "
                                  "of the target is taken first)")
    # every chunk's tag is checked before the target changes at all (a forced target's old
    # data included); the restore then opens each chunk fully again as it streams it
    repo.authenticate(manifest, progress)
    mark("every chunk authenticated")
    if force and not target.is_empty():
        from crmops.services.backup import backup

        safety = backup(config, tags=["pre-restore"], url=to_url, repo=repo).snapshot_id
        mark("safety snapshot of the target")
        _empty(target)
    target.restore(repo.read_stream(manifest), format=stream["format"], tables=tables)
    mark("database restored")
    files = 0
    if attachments_to is not None:
        files = restore_files(repo, manifest, attachments_to)
        mark("attachments restored")
    return RestoreResult(snapshot_id=manifest["id"], target=safe(to_url), tables=tables,
                         seconds=round(time.monotonic() - started, 2), bytes=stream["size"], files=files,
                         safety_snapshot=safety, timeline=timeline)


def restore_files(repo: Repository, manifest: dict[str, Any], folder: Path) -> int:
    """Write the snapshot's attachments under folder, each file checked against its hash."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = [FileEntry(**{k: v for k, v in f.items() if k != "chunks"}) for f in manifest.get("files", [])]
    count = 0
    for meta, entry in zip(manifest.get("files", []), entries, strict=True):
        if entry.kind == "file":
            digest = hashlib.sha256()

            def pieces(ids: list[str] = meta["chunks"], h: Any = digest) -> Any:
                for data in repo.read_chunks(ids):
                    h.update(data)
                    yield data

            restore_entry(folder, entry, pieces())
            if digest.hexdigest() != entry.sha256:
                raise IntegrityError(f"attachment {entry.path} does not match its recorded hash")
        else:
            restore_entry(folder, entry)
        count += 1
    finish_dirs(folder, entries)
    return count


def _empty(engine: Any) -> None:
    """Clear a forced target after its safety snapshot (PostgreSQL: schemas; MySQL: tables; SQLite: replaced)."""
    if engine.name == "sqlite":
        return  # the restore replaces the file atomically
    if engine.name == "postgresql":
        with engine.connect() as conn:
            for (schema,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_%' "
                                          "AND nspname <> 'information_schema'").fetchall():
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            conn.execute("CREATE SCHEMA public")
            conn.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata")
        return
    conn = engine.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET FOREIGN_KEY_CHECKS = 0")
            cur.execute("SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = DATABASE()")
            for name, kind in cur.fetchall():
                cur.execute(f"DROP {'VIEW' if kind == 'VIEW' else 'TABLE'} `{name}`")
            for kind in ("PROCEDURE", "FUNCTION"):
                cur.execute("SELECT routine_name FROM information_schema.routines WHERE routine_schema = DATABASE() "
                            "AND routine_type = %s", (kind,))
                for (name,) in cur.fetchall():
                    cur.execute(f"DROP {kind} `{name}`")
            cur.execute("SELECT event_name FROM information_schema.events WHERE event_schema = DATABASE()")
            for (name,) in cur.fetchall():
                cur.execute(f"DROP EVENT `{name}`")
    finally:
        conn.close()
