"""`crmops sandbox list / cleanup`: see and remove throwaway containers by their label."""

from __future__ import annotations

import click

from crmops.cli.context import AppContext, pass_app, table


@click.group("sandbox")
def sandbox_group() -> None:
    """List or remove the throwaway containers verify and drill start."""


def _owner(e) -> str:  # type: ignore[no-untyped-def]
    return f"pid {e.pid} running" if e.owner_running else "gone (leftover or kept)"


@sandbox_group.command("list")
@pass_app
def list_cmd(app: AppContext) -> None:
    """Show every crmops sandbox on the Docker engine, and whether its owner still runs."""
    from crmops.sandbox.leftovers import list_sandboxes

    entries = list_sandboxes()

    def human(console) -> None:  # type: ignore[no-untyped-def]
        if not entries:
            console.print("no crmops sandboxes")
            return
        t = table("name", "kind", "status", "image", "created (UTC)", "owner", whole=("name",))
        for e in entries:
            t.add_row(e.name, e.kind, e.status, e.image, e.created.replace("T", " ")[:19], _owner(e))
        console.print(t)

    app.emit([e.to_dict() for e in entries], human)


@sandbox_group.command("cleanup")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--all", "include_running", is_flag=True,
              help="Also remove sandboxes whose crmops process still runs (or runs on another host).")
@pass_app
def cleanup_cmd(app: AppContext, names: tuple[str, ...], include_running: bool) -> None:
    """Remove leftover sandboxes (containers, their volumes and networks), e.g. after a power cut.

    With NAMEs, exactly those (e.g. one kept by `crmops drill --keep`), even if in use.
    """
    from crmops.sandbox.leftovers import cleanup

    removed, skipped = cleanup(include_running=include_running, names=names)

    def human(console) -> None:  # type: ignore[no-untyped-def]
        for e in removed:
            console.print(f"removed {e.kind} {e.name}")
        for e in skipped:
            console.print(f"kept {e.name}: in use by pid {e.pid} on {e.host or 'this host'} (--all removes it)")
        if not removed and not skipped:
            console.print("nothing to clean up")

    app.emit({"removed": [e.to_dict() for e in removed], "skipped": [e.to_dict() for e in skipped]}, human)
