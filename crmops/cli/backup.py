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
@click.option("--copy", "then_copy", is_flag=True, help="Then copy to every configured copy (as `crmops copy`).")
@pass_app
def backup_cmd(app: AppContext, tags: tuple[str, ...], physical: bool, wal_timeout: int, then_copy: bool) -> None:
    """Snapshot the CRM's database and attachments into the repository."""
    from crmops.services.backup import backup

    app.begin_job("backup")
    if then_copy and not app.config.copies:  # refused before the backup, not after it
        from crmops.errors import ConfigError

        raise ConfigError("--copy: no copies are configured", hint="add a `copies:` list to the configuration")
    if physical:
        from crmops.cli.pitr import physical_backup_cmd

        physical_backup_cmd(app, tags, wal_timeout)
        if then_copy:
            _copy_after(app)
        return None
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
    if then_copy:
        _copy_after(app)


def _copy_after(app: AppContext) -> None:
    """`backup --copy`: the copies right after the backup; the result carries both, a failed copy fails the job."""
    from crmops.copy.workflow import failure, run

    backed_up = app.result
    with app.progress("copying") as advance:
        copied = run(app.config, [], [], False, advance)

    def human(console) -> None:  # type: ignore[no-untyped-def]
        for c in copied["copies"]:
            console.print(f"copy {c['name']}: {len(c['copied'])} snapshots copied, {c['chunks_copied']} chunks "
                          f"({c['bytes_copied'] / 1e6:.1f} MB), {c['archive']['files_copied']} archive files")

    app.emit({**backed_up, "copy": copied} if isinstance(backed_up, dict) else copied, human)
    error = failure(copied)
    if error is not None:
        raise error
