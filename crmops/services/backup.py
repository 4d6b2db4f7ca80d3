"""The nightly job: dump the CRM's database and attachments into the repository.

The dump streams straight into chunking, compression, encryption and parallel
upload; nothing is staged on disk and memory stays flat whatever the database size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from crmops.config import Config
from crmops.dburl import safe
from crmops.engines import open_engine
from crmops.engines.files import read_pieces, walk
from crmops.repository import Repository, open_repository


@dataclass
class BackupResult:
    snapshot_id: str
    duration_s: float
    bytes_read: int
    bytes_new: int
    bytes_uploaded: int
    dedup_ratio: float | None
    chunks: int
    chunks_new: int
    files: int
    engine: str
    server_version: str
    schema_revision: str | None
    tags: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def backup(config: Config, *, tags: Iterable[str] = (), url: str | None = None,
           progress: Callable[[int], None] | None = None, repo: Repository | None = None) -> BackupResult:
    """Take one snapshot of the configured CRM (or of url, e.g. a restore target before --force)."""
    started = time.monotonic()
    repo = repo or open_repository(config)
    source = url or config.database.url
    engine = open_engine(source, config.database)
    revision = engine.schema_revision()
    with repo.writer(tags=tags) as writer:
        with engine.dump() as dump:
            writer.add_stream("database", dump.chunks(), format=dump.format, progress=progress)
            fingerprint = dump.fingerprint
            server_version = dump.server_version
            binlog = getattr(dump, "binlog", None)  # MariaDB/MySQL: the binlog position the dump is consistent with
        files = 0
        folder = config.attachments.path if url is None else None
        if folder is not None:
            for entry in walk(folder, config.attachments.exclude):
                if entry.kind == "file":
                    writer.add_file(entry.to_dict(), read_pieces(folder, entry), progress)
                else:
                    writer.add_file(entry.to_dict())
                files += 1
        manifest = writer.commit({
            "engine": engine.name, "server_version": server_version, "database": engine.database_name(),
            "source": safe(source), "schema_revision": revision, "fingerprint": fingerprint.to_dict(),
            "attachments_root": str(folder) if folder else None,
            **({"binlog": binlog} if binlog else {}),
        })
    stats = manifest["stats"]
    return BackupResult(snapshot_id=manifest["id"], duration_s=round(time.monotonic() - started, 2),
                        bytes_read=stats["bytes_read"], bytes_new=stats["bytes_new"],
                        bytes_uploaded=stats["bytes_uploaded"], dedup_ratio=stats["dedup_ratio"],
                        chunks=stats["chunks"], chunks_new=stats["chunks_new"], files=files, engine=engine.name,
                        server_version=server_version, schema_revision=revision, tags=list(tags))
