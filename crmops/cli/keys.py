"""`crmops key add / list / remove / change-passphrase`: the repository's key slots."""

from __future__ import annotations

import os
from pathlib import Path

import click

from crmops.cli.context import AppContext, pass_app, table
from crmops.errors import ConfigError


def _new_passphrase() -> str:
    """From $CRMOPS_NEW_PASSPHRASE (scripts) or a hidden prompt; never from the command line."""
    value = os.environ.get("CRMOPS_NEW_PASSPHRASE")
    if value:
        return value
    if not click.get_text_stream("stdin").isatty():
        raise ConfigError("no new passphrase: set CRMOPS_NEW_PASSPHRASE or run on a terminal")
    return click.prompt("new passphrase", hide_input=True, confirmation_prompt=True)


@click.group("key")
def key_group() -> None:
    """Manage who can open the repository (key slots)."""


@key_group.command("list")
@pass_app
def list_cmd(app: AppContext) -> None:
    """List key slots; the one that opened the repository is marked."""
    from crmops.repository import open_repository

    slots = open_repository(app.config).key_slots()

    def human(console) -> None:  # type: ignore[no-untyped-def]
        t = table("slot", "label", "kind", "created (UTC)", "in use")
        for s in slots:
            t.add_row(s["id"], s["label"], s["kind"], s["created"][:16].replace("T", " "), "yes" if s["in_use"] else "")
        console.print(t)

    app.emit(slots, human)


@key_group.command("add")
@click.option("--label", required=True, help="Who or what this slot is for (e.g. an administrator's name).")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Generate a new key file here instead of asking for a passphrase.")
@pass_app
def add_cmd(app: AppContext, label: str, key_file: Path | None) -> None:
    """Add a key slot (new passphrase from $CRMOPS_NEW_PASSPHRASE or a prompt)."""
    from crmops.repository import Credential, open_repository, write_key_file

    repo = open_repository(app.config)
    if key_file is not None:
        if key_file.exists():
            raise ConfigError(f"{key_file} exists; choose a new path for the key file")
        write_key_file(key_file)
        cred = Credential(key_file=key_file)
    else:
        cred = Credential(passphrase=_new_passphrase())
    slot = repo.add_key(cred, label)
    app.emit({"ok": True, "slot": slot, "label": label}, lambda c: c.print(f"added key slot {slot} ({label})"))


@key_group.command("remove")
@click.argument("slot")
@pass_app
def remove_cmd(app: AppContext, slot: str) -> None:
    """Remove a key slot; the others keep working. The last slot cannot be removed."""
    from crmops.repository import open_repository

    open_repository(app.config).remove_key(slot)
    app.emit({"ok": True, "removed": slot}, lambda c: c.print(f"removed key slot {slot}"))


@key_group.command("change-passphrase")
@pass_app
def change_cmd(app: AppContext) -> None:
    """Replace the slot in use with one for a new passphrase."""
    from crmops.repository import Credential, open_repository

    repo = open_repository(app.config)
    old = repo.slot_id
    label = next(s["label"] for s in repo.key_slots() if s["id"] == old)
    new = repo.add_key(Credential(passphrase=_new_passphrase()), label)
    repo.remove_key(old)
    app.emit({"ok": True, "old_slot": old, "new_slot": new}, lambda c: c.print(f"passphrase changed (slot {new})"))
