"""`crmops repair`: name the damaged snapshots, heal them with a fresh backup, forget the lost ones."""

from __future__ import annotations

import click

from crmops.cli.context import AppContext, pass_app
from crmops.errors import IntegrityError


def _when(iso: str | None) -> str:
    """A snapshot's time as the snapshot list shows it, short enough for 80 columns."""
    if not iso:
        return "time unknown"
    from datetime import UTC, datetime

    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso


@click.command("repair")
@click.option("--dry-run", is_flag=True, help="Only say what is damaged and what a backup could heal; change nothing.")
@click.option("--forget-damaged", is_flag=True,
              help="Forget the snapshots a fresh backup could not heal (their data is gone).")
@click.option("--no-backup", "no_backup", is_flag=True,
              help="Do not take the healing backup (heal later with the nightly one).")
@pass_app
def repair_cmd(app: AppContext, dry_run: bool, forget_damaged: bool, no_backup: bool) -> None:
    """Heal damaged snapshots: quarantined chunks are stored again by a fresh backup of the database."""
    from crmops.services.repair import repair

    report = repair(app.config, dry_run=dry_run, forget_damaged=forget_damaged and not dry_run,
                    run_backup=not no_backup)

    from rich.markup import escape

    def human(console) -> None:  # type: ignore[no-untyped-def]
        if not report.damaged_snapshots and not report.healed_chunks:
            console.print("no damaged snapshot: nothing to repair")
            return
        for cid in report.healed_chunks:
            console.print(f"[green]HEALED[/green] chunk {cid}: stored again by the backup and read back")
        if not report.damaged_snapshots:
            console.print("every snapshot is whole again")
            return
        for s in report.damaged_snapshots:
            if s.problem:
                what = f"its manifest is unreadable: {escape(s.problem)}"
            else:
                what = f"needs {len(s.chunks)} damaged chunk(s): {', '.join(c[:12] for c in s.chunks)}"
            if s.id in report.forgotten:
                verdict = "[red]forgotten[/red]"
            elif dry_run and s.problem:  # no backup writes an old snapshot's manifest again
                verdict = "[red]damaged, no backup can heal a lost manifest[/red]"
            elif dry_run and s.healable_by_backup:
                verdict = "[yellow]damaged, a backup should heal it[/yellow]"
            elif dry_run:
                verdict = "[red]damaged, a backup heals it only if the database still holds its data[/red]"
            else:
                verdict = "[red]cannot be healed[/red]"
            console.print(f"snapshot {s.id} ({_when(s.time)}): {verdict}; {what}", soft_wrap=False)
        if report.newest_needs:
            console.print(f"the newest snapshot of the configured database ({report.newest}) needs "
                          f"{len(report.newest_needs)} quarantined chunk(s); the next backup stores again what "
                          "the database still holds", soft_wrap=False)
        if report.backup_error:
            console.print(f"[red]the healing backup failed[/red]: {escape(report.backup_error)}; nothing was "
                          "forgotten", soft_wrap=False)
        elif report.cannot_heal and not report.forgotten:
            console.print("what the database no longer holds is gone: `crmops repair --forget-damaged` forgets "
                          "those snapshots, then `crmops prune` deletes the chunks nothing needs", soft_wrap=False)

    app.emit(report.to_dict(), human)
    remaining = [s.id for s in report.damaged_snapshots if s.id not in report.forgotten]
    if remaining:
        raise IntegrityError(f"{len(remaining)} damaged snapshot(s): {', '.join(remaining)}",
                             hint="`crmops repair` heals what a backup can, `--forget-damaged` forgets the rest"
                             if dry_run or no_backup else "`crmops repair --forget-damaged` forgets them")
