"""The nightly job: dump the CRM's database and attachments into the repository.

The dump streams straight into chunking, compression, encryption and parallel
upload; nothing is staged on disk and memory stays flat whatever the database size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from crmops.config import Config
from crmops.dburl import safe
from crmops.engines import open_engine
from crmops.engines.files import read_pieces, walk
from crmops.repository import Repository, open_repository
from crmops.repository.paths import manifest_chunks
from crmops.repository.source import source_of_url


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
    #: of the `files` entries, how many are regular files (the rest are folders and symlinks)
    attachment_files: int = 0
    #: damaged chunks this backup stored again (and read back): they left quarantine
    chunks_healed: int = 0
    #: quarantined chunks some snapshot still needs after it: those stay damaged (`crmops repair`)
    chunks_quarantined: int = 0
    #: MariaDB: table -> FLOAT column -> values with more significant digits than the dump keeps
    rounded_floats: dict[str, dict[str, int]] = field(default_factory=dict)
    #: MariaDB: views the server cannot open (a table they read is gone, their definer is gone),
    #: written from the catalog as they are
    damaged_views: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def backup(config: Config, *, tags: Iterable[str] = (), url: str | None = None,
           progress: Callable[[int], None] | None = None, repo: Repository | None = None) -> BackupResult:
    """Take one snapshot of the configured CRM (or of url, e.g. a restore target before --force)."""
    started = time.monotonic()
    repo = repo or open_repository(config)
    source = url or config.database.url
    engine = open_engine(source, config.database)
    # PostgreSQL reads it inside the dump's snapshot, on the dump's connection
    revision = None if getattr(engine, "revision_in_dump", False) else engine.schema_revision()
    with repo.writer(tags=tags) as writer:
        with engine.dump() as dump:
            revision = getattr(dump, "schema_revision", revision)
            writer.add_stream("database", dump.chunks(), format=dump.format, progress=progress)
            fingerprint = dump.fingerprint
            server_version = dump.server_version
            dump_tool = getattr(dump, "tool", None)
            binlog = getattr(dump, "binlog", None)  # MariaDB/MySQL: the binlog position the dump is consistent with
            rounded = getattr(dump, "rounded", None) or {}  # MariaDB: FLOAT values the dump text rounds
            damaged = getattr(dump, "damaged_views", None) or []
        for view in damaged:
            logging.getLogger("crmops").warning(
                "view %s cannot be opened (%s): stored as it is, from the catalog%s", view["view"],
                view["reason"].splitlines()[0],
                f"; it reads {', '.join(view['missing_tables'])}, which is gone" if view["missing_tables"] else "")
        for table, columns in rounded.items():
            logging.getLogger("crmops").warning(
                "table %s: %s; restores of this snapshot will differ there (store those columns as DOUBLE)",
                table, rounded_text(columns))
        files = regular = 0
        folder = config.attachments.path if url is None else None
        if folder is not None:
            for entry in walk(folder, config.attachments.exclude):
                if entry.kind == "file":
                    writer.add_file(entry.to_dict(), read_pieces(folder, entry), progress)
                    regular += 1
                else:
                    writer.add_file(entry.to_dict())
                files += 1
        manifest = writer.commit({
            "engine": engine.name, "server_version": server_version, "database": engine.database_name(),
            "source": safe(source), "source_id": source_of_url(source),
            "schema_revision": revision, "fingerprint": fingerprint.to_dict(),
            "attachments_root": str(folder) if folder else None, "dump_tool": dump_tool,
            **({"binlog": binlog} if binlog else {}),
            **({"rounded_floats": rounded} if rounded else {}),
            **({"damaged_views": damaged} if damaged else {}),
        })
        # the quarantine as the backup's own listing found it, less what it healed, plus what it quarantined
        # itself: no second listing of quarantine/ (a round trip on S3) for a figure the next backup refreshes
        quarantined = (writer.quarantined | repo.quarantined_here()) - set(writer.healed)
    stats = manifest["stats"]
    return BackupResult(snapshot_id=manifest["id"], duration_s=round(time.monotonic() - started, 2),
                        bytes_read=stats["bytes_read"], bytes_new=stats["bytes_new"],
                        bytes_uploaded=stats["bytes_uploaded"], dedup_ratio=stats["dedup_ratio"],
                        chunks=stats["chunks"], chunks_new=stats["chunks_new"], files=files, engine=engine.name,
                        server_version=server_version, schema_revision=revision, tags=list(tags),
                        attachment_files=regular, chunks_healed=stats.get("chunks_healed", 0),
                        chunks_quarantined=len(_still_damaged(repo, quarantined)), rounded_floats=rounded,
                        damaged_views=damaged)


def rounded_text(columns: dict[str, int]) -> str:
    """'FLOAT column probability (2 values) holds more than the 6 significant digits mariadb-dump writes'."""
    parts = [f"{c} ({n:,} value{'s' if n != 1 else ''})" for c, n in columns.items()]
    many = len(parts) > 1
    return (f"FLOAT column{'s' if many else ''} {', '.join(parts)} {'hold' if many else 'holds'} more than "
            "the 6 significant digits mariadb-dump writes")


def _still_damaged(repo: Repository, quarantined: set[str]) -> set[str]:
    """Of the quarantined chunks, those some snapshot still needs (the others only wait for prune)."""
    if not quarantined:
        return set()
    manifests, _ = repo.readable_manifests()
    return quarantined & {c for m in manifests for c in manifest_chunks(m)}
