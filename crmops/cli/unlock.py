"""`crmops unlock`: the way out when a lock cannot be judged stale automatically."""

from __future__ import annotations

import click

from crmops.cli.context import AppContext, pass_app


@click.command("unlock")
@click.option("--remove-all", is_flag=True,
              help="Remove every lock, held or not: only when no crmops runs on any host.")
@pass_app
def unlock_cmd(app: AppContext, remove_all: bool) -> None:
    """Remove stale repository locks (a crashed run's); --remove-all removes every lock."""
    from crmops.services.locks import unlock

    result = unlock(app.config, remove_all=remove_all)

    def human(console) -> None:  # type: ignore[no-untyped-def]
        for lock in result["removed"]:
            why = lock["stale"] or "removed on request (--remove-all)"
            console.print(f"removed lock {lock['id']}: {lock['purpose']} on {lock['host']} (pid {lock['pid']}): {why}")
        for lock in result["kept"]:
            console.print(f"kept lock {lock['id']}: {lock['purpose']} on {lock['host']} (pid {lock['pid']}) is "
                          "still held (refreshed " + str(lock["refreshed"]) + "); --remove-all removes it")
        if not result["removed"] and not result["kept"]:
            console.print("no locks")

    app.emit(result, human)
