"""`crmops snapshots`: what the repository holds."""

from __future__ import annotations

from dataclasses import asdict

import click

from crmops.cli.context import AppContext, pass_app, table


@click.command("snapshots")
@pass_app
def snapshots_cmd(app: AppContext) -> None:
    """List snapshots: time, tags, engine and version, schema revision, sizes."""
    from crmops.repository import open_repository

    snaps = open_repository(app.config).snapshots()

    def human(console) -> None:  # type: ignore[no-untyped-def]
        t = table("id", "time (UTC)", "tags", "engine", "schema", "size", "new")
        for s in snaps:
            t.add_row(s.id[:10], s.time[:19].replace("T", " "), ",".join(s.tags), f"{s.engine} {s.server_version}",
                      s.schema_revision or "", f"{s.size / 1e6:,.1f} MB", f"{s.bytes_new / 1e6:,.1f} MB")
        console.print(t if snaps else "no snapshots yet: run `crmops backup`")

    app.emit([asdict(s) for s in snaps], human)
