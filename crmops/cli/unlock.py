"""`crmops unlock`: the way out when a lock cannot be judged stale automatically."""

from __future__ import annotations

import socket

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
            console.print(f"removed lock {lock['id']}: {lock['purpose']} on {lock['host']} (pid {lock['pid']}): {why}",
                          markup=False, soft_wrap=False)
        for lock in result["kept"]:
            if lock["host"] == socket.gethostname():  # its process runs here: removing it would break that run
                advice = "it still runs on this host: let it finish (or stop it), then run again"
            else:
                advice = ("--remove-all removes it, but only if no crmops runs on that host; it turns stale "
                          "30 minutes after its last refresh")
            console.print(f"kept lock {lock['id']}: {lock['purpose']} on {lock['host']} (pid {lock['pid']}, "
                          f"refreshed {str(lock['refreshed'])[:19].replace('T', ' ')} UTC): {advice}",
                          markup=False, soft_wrap=False)
        if not result["removed"] and not result["kept"]:
            console.print("no locks")

    app.emit(result, human)
