"""`crmops copy`: snapshots and the WAL/binlog archive to the configured copies in other places."""

from __future__ import annotations

import click

from crmops.cli.context import AppContext, pass_app


@click.command("copy")
@click.argument("snapshots", nargs=-1, metavar="[SNAPSHOT]...")
@click.option("--to", "to", multiple=True, metavar="NAME", help="Only this copy (repeatable; default: every copy).")
@click.option("--all", "all_", is_flag=True, help="Every snapshot, not only those the copy's retention keeps.")
@pass_app
def copy_cmd(app: AppContext, snapshots: tuple[str, ...], to: tuple[str, ...], all_: bool) -> None:
    """Copy snapshots and the WAL/binlog archive to each copy: only what it lacks, every chunk authenticated
    first, manifests last; run it again after a kill and it resumes."""
    from crmops.copy.workflow import failure, run

    app.begin_job("copy")
    with app.progress("copying") as advance:
        result = run(app.config, list(to), list(snapshots), all_, advance)

    def human(console) -> None:  # type: ignore[no-untyped-def]
        for c in result["copies"]:
            mark = "[green]OK[/green]" if c["ok"] else "[red]INCOMPLETE[/red]"
            console.print(f"{mark} copy {c['name']} ({c['url']}): {len(c['copied'])} snapshots copied, "
                          f"{len(c['already'])} already there; {c['chunks_copied']} chunks "
                          f"({c['bytes_copied'] / 1e6:.1f} MB) written, {c['chunks_present']} present; "
                          f"archive: {c['archive']['files_copied']} files written in {c['seconds']} s")
            for sid, why in c["failed"].items():
                console.print(f"[red]NOT COPIED[/red] snapshot {sid}: {why}")
            for key, why in c["archive"]["damaged"].items():
                console.print(f"[red]NOT COPIED[/red] {key}: {why}")

    app.emit(result, human)
    error = failure(result)
    if error is not None:
        raise error
