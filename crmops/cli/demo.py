"""`crmops demo create`: a demo CRM to try every command on."""

from __future__ import annotations

from pathlib import Path

import click

from crmops.cli.context import DATABASE_URL, AppContext, pass_app, table


@click.group("demo")
def demo_group() -> None:
    """Create the demo CRM (schema under Alembic, realistic data)."""


@demo_group.command("create")
@click.option("--url", type=DATABASE_URL, help="Database URL (default: database.url from the configuration).")
@click.option("--size", type=click.Choice(["tiny", "small", "medium", "large"]), default="small", show_default=True)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same data.")
@click.option("--version", "version", type=click.Choice(["1.0", "2.0"]), default="1.0", show_default=True,
              help="Demo CRM release to create.")
@click.option("--attachments", "attachments", type=click.Path(file_okay=False, path_type=Path),
              help="Also write the attachment files here (default: attachments.path, unless --url is given).")
@click.option("--no-attachments", is_flag=True, help="Do not write attachment files.")
@click.option("--force", is_flag=True, help="Replace an existing demo CRM in that database.")
@pass_app
def create_cmd(app: AppContext, url: str | None, size: str, seed: int, version: str, attachments: Path | None,
               no_attachments: bool, force: bool) -> None:
    """Create the demo CRM and fill it with deterministic data.

    The database must exist (crmops never creates databases: owner, encoding and grants are the
    administrator's); with --url the configuration file's settings and secrets are not needed.
    """
    from crmops.democrm.load import create

    # with --url the configuration's database, its secrets and its (production) upload folder are not used
    target = url or app.config.database.url
    folder = None if no_attachments else (attachments or (None if url else app.config.attachments.path))
    if target.startswith("sqlite:///"):
        Path(target[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    with app.progress(f"demo CRM ({size})") as advance:
        result = create(target, size=size, seed=seed, version=version, attachments_dir=folder, force=force,
                        progress=lambda table, n: advance(n))

    def human(console) -> None:  # type: ignore[no-untyped-def]
        t = table(title=f"demo CRM {result.version} ({result.size}, seed {result.seed}) at {result.url}")
        t.add_column("table")
        t.add_column("rows", justify="right")
        for name, rows in result.rows.items():
            t.add_row(name, f"{rows:,}")
        console.print(t)
        size_mb = f", {result.database_mb} MB" if result.database_mb is not None else ""
        console.print(f"{sum(result.rows.values()):,} rows in {result.seconds} s "
                      f"({result.rows_per_second:,.0f} rows/s{size_mb})")
        if result.attachments_dir:
            console.print(f"{result.attachment_files} attachment files in {result.attachments_dir}")

    app.emit(result.to_dict(), human)
