"""`crmops backup`: the nightly job."""

from __future__ import annotations

import click

from crmops.cli.context import AppContext, pass_app


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@click.command("backup")
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@click.option("--physical", is_flag=True,
              help="PostgreSQL base backup (pg_basebackup) for point-in-time recovery with the WAL archive.")
@click.option("--wal-timeout", type=click.IntRange(1, 86400), default=120, show_default=True, metavar="SECONDS",
              help="With --physical: give up (exit 85) when the WAL the base backup needs is not archived "
                   "within this many seconds.")
@pass_app
def backup_cmd(app: AppContext, tags: tuple[str, ...], physical: bool, wal_timeout: int) -> None:
    """Snapshot the CRM's database and attachments into the repository."""
    from crmops.services.backup import backup

    app.begin_job("backup")
    if physical:
        from crmops.cli.pitr import physical_backup_cmd

        return physical_backup_cmd(app, tags, wal_timeout)
    try:
        with app.progress("backup") as advance:
            result = backup(app.config, tags=tags, progress=advance)
    except KeyboardInterrupt:  # the manifest is written last: before it, nothing is a snapshot
        from crmops.cli import main
        from crmops.errors import Interrupted

        why = f"stopped by {main._STOPPED_BY}" if main._STOPPED_BY else "stopped"
        raise Interrupted(f"backup {why}; nothing was stored: no snapshot was written and the repository's "
                          "snapshots are unchanged", hint="the chunks uploaded so far are reused by the next "
                                                          "backup") from None

    def human(console) -> None:  # type: ignore[no-untyped-def]
        ratio = f"dedup ratio {result.dedup_ratio}" if result.dedup_ratio else "nothing new to store"
        console.print(f"snapshot {result.snapshot_id} of {result.engine} {result.server_version} "
                      f"in {result.duration_s} s:\n  read {_mb(result.bytes_read)}, new {_mb(result.bytes_new)} "
                      f"({result.chunks_new}/{result.chunks} chunks new, {ratio}),\n  "
                      f"{_plural(result.attachment_files, 'attachment file')}"
                      + (f" in {_plural(result.files - result.attachment_files, 'folder')}"
                         if result.files > result.attachment_files else "")
                      + (f"\n  healed {_plural(result.chunks_healed, 'quarantined chunk')}: stored again and "
                         "read back" if result.chunks_healed else ""))

    app.emit(result.to_dict(), human)
