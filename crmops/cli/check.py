"""`crmops check`: is every snapshot in the repository whole?"""

from __future__ import annotations

import click

from crmops.cli.context import AppContext, pass_app, repository_option
from crmops.errors import IntegrityError


def _percent(ctx: click.Context, param: click.Parameter, value: str | None) -> float | str | None:
    if value is None:
        return None
    if value.strip().lower() == "auto":
        return "auto"  # resolved from check.read_data_days once the configuration is read
    try:
        number = float(value.rstrip("%"))
    except ValueError:
        raise click.BadParameter("a percentage such as 10%, or auto") from None
    if not 0 < number <= 100:
        raise click.BadParameter("between 0 and 100%")
    return number


@click.command("check")
@repository_option
@click.option("--read-data", is_flag=True, help="Read and authenticate every chunk.")
@click.option("--read-data-subset", "subset", callback=_percent, metavar="N%",
              help="Read N% of the chunks, those read longest ago first, so runs cover everything in turn; "
                   '"auto": 1/check.read_data_days of them (the scheduled check).')
@pass_app
def check_cmd(app: AppContext, read_data: bool, subset: float | str | None) -> None:
    """Check that every manifest opens and every chunk it needs is present (and, optionally, intact)."""
    from crmops.services.check import check

    app.begin_job("check")
    if subset == "auto":
        subset = app.config.check.daily_percent()
    report = check(app.config, read_data=read_data, subset_percent=subset)  # type: ignore[arg-type]

    def human(console) -> None:  # type: ignore[no-untyped-def]
        def say(text: str) -> None:  # wrapped to the terminal: object keys and snapshot lists are long
            console.print(text, soft_wrap=False)

        snapshots = f"{report.snapshots} snapshot{'s' * (report.snapshots != 1)}"
        chunks = f"{report.chunks_referenced} chunk{'s' * (report.chunks_referenced != 1)}"
        say(f"{snapshots}, {chunks} referenced, "
                      f"{report.chunks_read} read and authenticated; coverage {report.coverage_percent}%")
        for d in report.damaged:
            say(f"[red]DAMAGED[/red] {d.object}: {d.problem}; affects snapshots {', '.join(d.snapshots)}")
        if report.newest_needs:
            say(f"[red]the newest snapshot of the configured database needs {len(report.newest_needs)} "
                          "quarantined chunk(s)[/red]: it cannot be restored until a backup stores them again")
        if report.damaged:
            say("damaged chunks are quarantined: the next backup stores again what the database still "
                          "holds; `crmops repair --dry-run` says which snapshots can be healed")
        for cid in report.released:
            say(f"[green]HEALED[/green] chunk {cid} reads whole again: released from quarantine")
        for lock in report.locks:
            state = f"[yellow]stale[/yellow] ({lock['stale']})" if lock["stale"] else "held"
            say(f"lock {lock['id']}: {lock['purpose']} on {lock['host']} (pid {lock['pid']}), {state}; "
                          "`crmops unlock` removes stale locks")
        for t in report.temporary_objects:
            say(f"temporary object {t['name']} ({t['size']} bytes, since {t['created']}): "
                          "left by an interrupted write; `crmops prune` removes those older than a day")

    from crmops.pitr.window import all_windows
    from crmops.repository import open_repository

    wal = [{k: v for k, v in w.items() if k in ("system_id", "segments", "start", "end", "gap")}
           for w in all_windows(open_repository(app.config))]
    gaps = [w["gap"] for w in wal if w.get("gap")]

    def human_wal(console) -> None:  # type: ignore[no-untyped-def]
        human(console)
        for w in wal:
            console.print(f"WAL archive of cluster {w['system_id']}: {w['segments']} segments"
                          + (f", [red]GAP[/red] {w['gap']['message']}" if w.get("gap") else ", no gap"))

    app.emit({**report.to_dict(), "wal": wal, "ok": report.ok and not gaps}, human_wal)
    if gaps and report.ok:
        raise IntegrityError(gaps[0]["message"], hint="take a new base backup (crmops backup --physical) to start "
                                                      "a recoverable window after the gap")
    if not report.ok:
        first = report.damaged[0]
        raise IntegrityError(f"{len(report.damaged)} damaged object(s), first {first.object}: {first.problem}",
                             hint=f"affects snapshots {', '.join(first.snapshots)}; damaged chunks are "
                                  "quarantined and the next backup stores them again if the data still exists; "
                                  "see `crmops repair --dry-run`")
