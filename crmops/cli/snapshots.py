"""`crmops snapshots`: what the repository holds, per source, damaged manifests named."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click

from crmops.cli.context import AppContext, pass_app, repository_option


def short_source(source: str, others: list[str]) -> str:
    """A cell-sized name: the database (file) name, with the host only when two sources share it."""
    def tail(s: str) -> str:
        return s.rstrip("/").rsplit("/", 1)[-1] or s

    name = tail(source)
    if sum(1 for o in others if tail(o) == name) > 1:
        host = source.split("://", 1)[-1].split("/", 1)[0]
        return f"{name}@{host}" if host else source
    return name


def _engine(s: Any) -> str:
    """Engine and major.minor version: the patch level does not decide where a snapshot restores."""
    return f"{s.engine} {'.'.join((s.server_version or '').split('.')[:2])}".strip()


@click.command("snapshots")
@repository_option
@click.option("--source", metavar="SOURCE",
              help="Only this source's snapshots (a source as listed, a part of one, or a database URL).")
@click.option("--all", "all_sources", is_flag=True, help="Every source's snapshots, not only the configured one's.")
@click.option("--strict", is_flag=True, help="Exit 26 when a snapshot's manifest is damaged.")
@pass_app
def snapshots_cmd(app: AppContext, source: str | None, all_sources: bool, strict: bool) -> None:
    """List the configured database's snapshots: time, tags, engine, schema revision, sizes.

    Damaged manifests are listed too (they hide nothing else); --all lists every source.
    """
    from crmops.errors import ConfigError, IntegrityError
    from crmops.repository import SnapshotInfo, open_repository
    from crmops.repository.source import match_source
    from crmops.services.sources import configured_source

    if source and all_sources:
        raise ConfigError("--source and --all exclude each other", hint="give one of them")
    listing = open_repository(app.config).listing()
    sources = listing.sources()
    mine = configured_source(app.config)
    wanted = None if all_sources else match_source(source, sources) if source else mine
    snaps = [SnapshotInfo.from_manifest(m) for m in listing.of_source(wanted)]
    hidden = [s for s in sources if wanted is not None and s != wanted]
    hidden_count = len(listing.manifests) - len(snaps)
    rows: list[dict[str, Any]] = [{**asdict(s), "damaged": False} for s in snaps]
    rows += [{"id": d.id, "damaged": True, "problem": d.problem} for d in listing.damaged]

    def human(console) -> None:  # type: ignore[no-untyped-def]
        from rich.markup import escape
        from rich.table import Column, Table

        many = wanted is None and len(sources) > 1
        if not many:
            label = " (configured)" if wanted == mine else ""
            console.print(f"source {escape(wanted or (sources[0] if sources else mine))}{label}", highlight=False)
        # several sources: one table per source under its name, rather than a source column that
        # leaves too little room at 80 columns; identifiers (ids, tags, engine and version) are never
        # broken: only the tag list wraps, between tags
        def new_table() -> Any:
            return Table(Column("id", no_wrap=True), Column("time (UTC)", no_wrap=True),
                         Column("tags", overflow="fold"), Column("engine", no_wrap=True),
                         Column("schema", no_wrap=True), Column("size", justify="right", no_wrap=True),
                         box=None, pad_edge=False)

        groups: dict[str, Any] = {}
        for s in snaps:
            key = short_source(s.source, sources) if many else ""
            t = groups.setdefault(key, new_table())
            t.add_row(s.id[:10], s.time[:16].replace("T", " "), escape(", ".join(s.tags)), _engine(s),
                      s.schema_revision or "", f"{s.size / 1e6:,.1f} MB")
        if listing.damaged:
            t = groups.setdefault("(damaged, source unknown)" if many else "", new_table())
            for d in listing.damaged:
                t.add_row(d.id[:10], "[red]DAMAGED[/red]", "", "", "", "")
        for key, t in groups.items():
            if many:
                console.print(f"source {escape(key)}", highlight=False)
            console.print(t)
        if not groups:
            console.print("no snapshots of this source" if hidden_count else "no snapshots yet: run `crmops backup`")
        for d in listing.damaged:
            console.print(f"[red]damaged[/red] {d.id}: {escape(d.problem)}", highlight=False, soft_wrap=False)
        if many:
            for s in sources:
                console.print(f"{escape(short_source(s, sources))} = {escape(s)}"
                              + (" (configured)" if s == mine else ""), highlight=False)
        if hidden_count:
            n = len(hidden)
            console.print(f"{hidden_count} snapshot{'s' * (hidden_count != 1)} of {n} other source"
                          f"{'s' * (n != 1)} not shown (--all lists them)")

    app.emit(rows, human)
    if strict and listing.damaged:
        raise IntegrityError(f"{len(listing.damaged)} snapshot manifest(s) damaged: "
                             + ", ".join(d.id for d in listing.damaged),
                             hint="`crmops check` shows the damage; the other snapshots are intact")
