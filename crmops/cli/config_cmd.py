"""`crmops init` and `crmops config show`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import click

from crmops.cli.context import AppContext, pass_app
from crmops.errors import ConfigError


@click.command("init")
@click.option("--path", "path", default="crmops.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the starter configuration.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@pass_app
def init_cmd(app: AppContext, path: str, force: bool) -> None:
    """Write a commented starter crmops.yaml."""
    target = Path(path)
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists", hint="use --force to overwrite it")
    text = resources.files("crmops").joinpath("starter.yaml").read_text(encoding="utf-8")
    target.write_text(text, encoding="utf-8")
    target.chmod(0o600)
    app.emit({"ok": True, "path": str(target)}, lambda c: c.print(f"wrote {target}; edit it, then run "
                                                                   "`crmops config show`"))


@click.group("config")
def config_group() -> None:
    """Inspect the effective configuration."""


@config_group.command("show")
@pass_app
def show_cmd(app: AppContext) -> None:
    """Print the effective configuration, secrets masked."""
    import os

    cfg = app.config
    data = cfg.masked()
    enc = data.get("encryption") or {}
    if enc.get("passphrase") is None and not enc.get("key_file") and os.environ.get("CRMOPS_PASSPHRASE"):
        enc["passphrase"] = "******** (from $CRMOPS_PASSPHRASE)"  # what is used, not "null"

    def human(console) -> None:  # type: ignore[no-untyped-def]
        import yaml

        console.print(f"# source: {cfg.source}", markup=False)
        console.print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n"), markup=False)

    app.emit({"source": cfg.source, "config": data}, human)
