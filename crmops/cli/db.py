"""`crmops db check`: can crmops reach the CRM's database and back it up?"""

from __future__ import annotations

import click

from crmops.cli.context import DATABASE_URL, AppContext, pass_app, table


@click.group("db")
def db_group() -> None:
    """Inspect the CRM's database."""


@db_group.command("check")
@click.option("--url", type=DATABASE_URL, help="Database URL (default: database.url from the configuration).")
@pass_app
def check_cmd(app: AppContext, url: str | None) -> None:
    """Connect; print engine, version, size, tables and whether the dump tools are usable."""
    from crmops.engines import open_engine
    from crmops.errors import ToolMissing

    report = open_engine(url or app.config.database.url, app.config.database).check()

    def human(console) -> None:  # type: ignore[no-untyped-def]
        t = table(show_header=False, box=None, padding=(0, 2, 0, 0))
        t.add_row("engine", report["engine"])
        t.add_row("database", report["url"])
        t.add_row("server version", report["server_version"])
        t.add_row("size", f"{report['size_bytes'] / 1e6:,.1f} MB")
        t.add_row("tables", str(report["tables"]))
        for name, where in report["tools"].items():
            t.add_row(name, where)
        console.print(t)

    app.emit({"ok": report["tools_ok"], **report}, human)
    if not report["tools_ok"]:
        bad = next(v for v in report["tools"].values() if v.startswith("unusable"))
        raise ToolMissing(bad.removeprefix("unusable: "))
