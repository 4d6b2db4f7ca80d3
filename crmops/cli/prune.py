"""`crmops forget` and `crmops prune`: retention."""

from __future__ import annotations

import click

from crmops.cli.context import AppContext, pass_app, repository_option

KEEPS = ["last", "hourly", "daily", "weekly", "monthly", "yearly"]


def _keep_options(f):  # type: ignore[no-untyped-def]
    for name in reversed(KEEPS):
        f = click.option(f"--keep-{name}", type=click.IntRange(min=0),
                         help=f"Override retention.keep_{name} from the configuration.")(f)
    return f


@click.command("forget")
@repository_option
@_keep_options
@click.option("--prune", "and_prune", is_flag=True, help="Also delete the chunks no snapshot needs any more.")
@click.option("--dry-run", is_flag=True, help="Show what would go, change nothing.")
@pass_app
def forget_cmd(app: AppContext, and_prune: bool, dry_run: bool, **keeps: int | None) -> None:
    """Forget snapshots the retention policy does not keep, per source; never a source's newest verified one."""
    from crmops.prune.workflow import forget

    if not dry_run:
        app.begin_job("forget")
    overrides = {k: v for k, v in keeps.items() if v is not None}
    policy = app.config.retention.model_copy(update=overrides)
    result = forget(app.config, policy=policy, dry_run=dry_run, prune_after=and_prune)

    def human(console) -> None:  # type: ignore[no-untyped-def]
        from rich.markup import escape
        from rich.table import Column, Table

        gone = "[red]would forget[/red]" if dry_run else "[red]forgotten[/red]"
        for g in result.groups:
            console.print(f"[bold]{escape(g['source'])}[/bold] ({g['kind']}): keep {len(g['keep'])}, "
                          f"{'would forget' if dry_run else 'forgot'} {len(g['forget'])}", highlight=False)
            t = Table(Column("snapshot", no_wrap=True), Column("verdict", no_wrap=True), "why kept",
                      box=None, pad_edge=False, padding=(0, 2, 0, 0), show_header=False)
            for sid, reasons in g["keep"].items():
                t.add_row(f"  {sid[:10]}", "keep", ", ".join(reasons))
            for sid in g["forget"]:
                t.add_row(f"  {sid[:10]}", gone, "")
            console.print(t)
        if not result.groups:
            console.print("no snapshots")
        for sid in result.damaged:
            console.print(f"[yellow]kept[/yellow] {sid}: its manifest is damaged (source and age unknown)")
        if result.pitr:
            p = result.pitr
            verb = "would delete" if dry_run else "deleted"
            for sid, start in p["window_start_before"].items():
                console.print(f"point-in-time window of cluster {sid} starts {start} -> "
                              f"{p['window_start_after'].get(sid)} (retention.pitr_days={p['pitr_days']}); "
                              f"{verb} {p['wal_files_deleted']} WAL files ({p['wal_bytes_freed'] / 1e6:,.1f} MB)",
                              markup=False)
        if result.pitr and result.pitr.get("binlog_files_deleted"):
            verb = "would delete" if dry_run else "deleted"
            console.print(f"{verb} {result.pitr['binlog_files_deleted']} archived binary logs older than every kept "
                          f"snapshot ({result.pitr['binlog_bytes_freed'] / 1e6:,.1f} MB)", markup=False)
        if result.prune:
            _say_prune(console, result.prune)

    app.emit(result.to_dict(), human)


def _say_prune(console, p) -> None:  # type: ignore[no-untyped-def]
    verb = "would delete" if p.dry_run else "deleted"
    if not p.kept_everything_for:
        console.print(f"prune {verb} {p.chunks_deleted} chunks ({p.bytes_freed / 1e6:,.1f} MB)")
    else:
        console.print(f"[yellow]prune {'would delete' if p.dry_run else 'deleted'} nothing[/yellow]: the manifest of "
                      f"{', '.join(p.kept_everything_for)} is damaged, so no chunk can be proven unreferenced "
                      "(`crmops check` shows the damage)")
    for line in p.refused:
        console.print(f"[yellow]kept (refused by storage)[/yellow] {line}")


@click.command("prune")
@repository_option
@click.option("--dry-run", is_flag=True, help="Count what would be deleted, delete nothing.")
@pass_app
def prune_cmd(app: AppContext, dry_run: bool) -> None:
    """Delete chunks no snapshot references (under the exclusive lock)."""
    from dataclasses import asdict

    from crmops.prune.workflow import prune

    if not dry_run:
        app.begin_job("prune")
    result = prune(app.config, dry_run=dry_run)
    app.emit(asdict(result), lambda c: _say_prune(c, result))
