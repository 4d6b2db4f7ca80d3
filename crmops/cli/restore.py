"""`crmops restore`: bring a snapshot back, never over live data by accident."""

from __future__ import annotations

from pathlib import Path

import click

from crmops.cli.context import DATABASE_URL, AppContext, pass_app, repository_option


@click.command("restore")
@repository_option
@click.argument("snapshot", default="latest")
@click.option("--to", "to_url", type=DATABASE_URL,
              help="Target database URL (empty, unless --force); write its password as ${VAR}.")
@click.option("--tables", help="Only these tables, comma-separated (PostgreSQL: schema.table; plain names are in "
                               "public). Into a non-empty target, replaces just them (needs --force).")
@click.option("--as", "prefix", metavar="PREFIX",
              help="With --tables: restore them beside the live ones as PREFIX<table> (e.g. --as restored_; "
                   "PostgreSQL also --as SCHEMA. for SCHEMA.<table>); replaces nothing, needs no --force. "
                   "Also with --at.")
@click.option("--attachments-to", type=click.Path(file_okay=False, path_type=Path),
              help="Also restore the attachments into this folder.")
@click.option("--force", is_flag=True, help="Replace a non-empty target, after a pre-restore snapshot of it.")
@click.option("--source", metavar="SOURCE", help="latest of this source instead of the configured database's.")
@click.option("--at", "at", metavar="TIME",
              help='Point in time (WAL or binlog archive), e.g. "2026-12-01 14:05:00+00"; '
                   'latest: the end of the WAL archive.')
@click.option("--at-lsn", metavar="LSN", help="Point-in-time recovery up to this WAL position (0/3000060).")
@click.option("--at-name", metavar="NAME", help="Point-in-time recovery up to a pg_create_restore_point() name.")
@click.option("--before-xid", metavar="XID", help="Point-in-time recovery up to, not including, this transaction.")
@click.option("--sandbox", is_flag=True, help="With --at: recover into a throwaway container (the proof).")
@click.option("--keep", is_flag=True, help="With --sandbox: leave the container running for inspection.")
@click.option("--to-datadir", type=click.Path(file_okay=False, path_type=Path),
              help="With --at: write an empty folder as a data directory that recovers to the point on start.")
@click.option("--port", type=click.IntRange(1, 65535),
              help="With --to-datadir: the port the copy listens on (default: the first free one from 5433).")
@pass_app
def restore_cmd(app: AppContext, snapshot: str, to_url: str | None, tables: str | None, prefix: str | None,
                attachments_to: Path | None, force: bool, source: str | None, at: str | None, at_lsn: str | None,
                at_name: str | None, before_xid: str | None, sandbox: bool, keep: bool,
                to_datadir: Path | None, port: int | None) -> None:
    """Restore SNAPSHOT (an id, a unique prefix, or latest) into the database at --to,
    or with --at the database as it was at that moment (base backup + WAL, or snapshot + binlogs).

    latest is the newest backup of the configured database (see `crmops snapshots`).
    """
    from crmops.services.restore import restore

    chosen = [t.strip() for t in tables.split(",") if t.strip()] if tables is not None else None
    if chosen == []:  # e.g. --tables "$TABLES" with the variable unset: never the whole database instead
        raise click.UsageError("--tables is empty: name the tables, e.g. --tables contacts,accounts")
    if port is not None and to_datadir is None:
        raise click.UsageError("--port is for --to-datadir (the port the restored copy listens on)")
    if at or at_lsn or at_name or before_xid or sandbox or to_datadir:
        from crmops.cli.pitr import parse_target, restore_at_cmd

        if snapshot != "latest":
            raise click.UsageError("--at picks its base backup itself: leave out SNAPSHOT")
        if attachments_to is not None or source is not None:
            raise click.UsageError("--attachments-to and --source belong to snapshot restores; "
                                   "they do not combine with --at")
        if prefix is not None and not chosen:
            raise click.UsageError("--as needs --tables (the tables to restore beside the live ones)")
        return restore_at_cmd(app, target=parse_target(at, at_lsn, at_name, before_xid), to_url=to_url,
                              tables=chosen, sandbox=sandbox, keep=keep, to_datadir=to_datadir, force=force,
                              prefix=prefix, port=port)
    if to_url is None:
        raise click.UsageError("Missing option '--to'.")
    if prefix is not None and not chosen:
        raise click.UsageError("--as needs --tables (the tables to restore beside the live ones)")
    with app.progress("restore") as advance:
        result = restore(app.config, snapshot, to_url=to_url, tables=chosen, attachments_to=attachments_to,
                         force=force, progress=advance, prefix=prefix, source=source)

    def human(console) -> None:  # type: ignore[no-untyped-def]
        from crmops.dburl import display

        if result.safety_snapshot:
            console.print(f"the target's previous content is in snapshot {result.safety_snapshot} (pre-restore)")
        if result.replaced:
            console.print(f"replaced {', '.join(result.replaced)} in {display(result.target)}")
        if prefix:  # copies beside the live tables: say so, not as if the live ones were replaced
            console.print(f"restored {', '.join(result.tables or [])} from snapshot {result.snapshot_id} beside the "
                          f"live tables, as {', '.join(result.created)} in {display(result.target)} in "
                          f"{result.seconds} s; the live tables were not changed")
            return
        if result.created and result.replaced:
            console.print(f"created {', '.join(result.created)} in {display(result.target)}")
        what = f"tables {', '.join(result.tables)}" if result.tables else "the database"
        console.print(f"restored {what} from snapshot {result.snapshot_id} into {display(result.target)} "
                      f"in {result.seconds} s"
                      + (f", {result.files} attachment files and folders" if result.files else ""))
        if result.files_left:
            console.print(f"not restored: the snapshot's {result.files_left} attachment "
                          f"file{'s' * (result.files_left != 1)} (add --attachments-to DIR to restore them)")

    app.emit(result.to_dict(), human)
