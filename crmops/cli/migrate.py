"""`crmops migrate`: Alembic migrations with a safety snapshot, pre-checks, lint and a journal."""

from __future__ import annotations

from typing import Any

import click

from crmops.cli.context import DATABASE_URL, AppContext, pass_app

_url_opt = click.option("--url", type=DATABASE_URL,
                        help="Database URL instead of database.url (e.g. a copy to rehearse on).")


@click.group("migrate")
def migrate_group() -> None:
    """Schema migrations (Alembic): status, plan, up, down, baseline, lint, drift, history, validate."""


@migrate_group.command("status")
@_url_opt
@pass_app
def status_cmd(app: AppContext, url: str | None) -> None:
    """Current revision, head(s), pending revisions, edited scripts."""
    from crmops.errors import MigrationRefused
    from crmops.services.migrate import status

    s = status(app.config, url=url)

    def human(console: Any) -> None:
        console.print(f"database  {s['database']} ({s['engine']})")
        console.print(f"current   {s['current'] or '(not managed by Alembic)'}"
                      + (f"  {s['current_message']}" if s["current_message"] else ""))
        if s.get("foreign"):
            console.print(f"[yellow]not Alembic[/yellow] {s['foreign']['note']}")
            return
        console.print(f"head      {', '.join(s['heads']) or '(no revisions)'}")
        if s["pending"]:
            console.print(f"pending   {len(s['pending'])} revision(s):")
            for p in s["pending"]:
                console.print(f"  {p['revision']}  {p['message']}")
        elif s["up_to_date"]:
            console.print("[green]up to date[/green]")
        for m in s["modified"]:
            console.print(f"[red]EDITED[/red] {m['revision']} ({m['path']}) changed after it was applied")

    app.emit(s, human)
    if s["errors"]:
        raise MigrationRefused("; ".join(s["errors"]))


@migrate_group.command("plan")
@click.option("--to", "to", default="head", show_default=True, help="Target revision (id, head, base, 2.0).")
@click.option("--sql", is_flag=True, help="Also print each revision's SQL (Alembic offline mode), for review.")
@_url_opt
@pass_app
def plan_cmd(app: AppContext, to: str, sql: bool, url: str | None) -> None:
    """The revisions a migration would run, in order (and their SQL)."""
    from crmops.services.migrate import plan

    p = plan(app.config, to=to, url=url, sql=sql)

    def human(console: Any) -> None:
        if not p["revisions"]:
            console.print(f"nothing to do: the database is at {p['from'] or 'base'}")
            return
        console.print(f"{p['direction']} from {p['from'] or 'base'} to {p['to'] or 'base'}; transaction: "
                      f"{p['transaction']}")
        for r in p["revisions"]:
            console.print(f"  {r['direction']:4} {r['revision']}  {r['message']}")
            for c in r["prechecks"]:
                console.print(f"         pre-check: {c}")
            if sql:
                if r["sql"]:
                    click.echo(r["sql"])
                else:
                    console.print(f"         -- {r['sql_error']}")

    app.emit(p, human)


def _migrate_options(f: Any) -> Any:
    f = click.option("--no-safety-backup", is_flag=True,
                     help="Migrate without the pre-migrate snapshot (only if you have another way back).")(f)
    f = click.option("--skip-prechecks", is_flag=True,
                     help="Do not count rows that would break new unique/NOT NULL constraints.")(f)
    f = click.option("--allow-edited", is_flag=True, help="Run even if applied scripts were edited since.")(f)
    return _url_opt(f)


def _run(app: AppContext, to: str, url: str | None, no_safety_backup: bool, skip_prechecks: bool,
         allow_edited: bool, direction: str) -> None:
    from crmops.services import migrate as service

    kwargs = dict(url=url, safety_backup=not no_safety_backup, run_prechecks=not skip_prechecks,
                  allow_modified=allow_edited, command=f"migrate {direction}",
                  on_step=lambda r: app.say(f"· {r.step.direction} {r.step.revision} ({r.seconds:.2f} s)"))
    result = (service.up if direction == "up" else service.down)(app.config, to=to, **kwargs)

    def human(console: Any) -> None:
        if result.direction == "none":
            console.print(f"nothing to do: the database is at {result.from_revision or 'base'}")
            return
        if result.safety_snapshot:
            console.print(f"safety snapshot {result.safety_snapshot} (pre-migrate)")
        console.print(f"migrated {result.direction} from {result.from_revision or 'base'} to "
                      f"{result.to_revision or 'base'}: {len(result.revisions)} revision(s) in {result.seconds:.2f} s "
                      f"({result.transaction})")

    app.emit(result.to_dict(), human)


@migrate_group.command("up")
@click.option("--to", "to", default="head", show_default=True, help="Target revision (id, head, 2.0).")
@_migrate_options
@pass_app
def up_cmd(app: AppContext, to: str, url: str | None, no_safety_backup: bool, skip_prechecks: bool,
           allow_edited: bool) -> None:
    """Snapshot, pre-check, then migrate up (default: to the head)."""
    _run(app, to, url, no_safety_backup, skip_prechecks, allow_edited, "up")


@migrate_group.command("down")
@click.option("--to", "to", required=True, help="Target revision (id, base, 1.0).")
@_migrate_options
@pass_app
def down_cmd(app: AppContext, to: str, url: str | None, no_safety_backup: bool, skip_prechecks: bool,
             allow_edited: bool) -> None:
    """Snapshot, pre-check, then migrate down to --to."""
    _run(app, to, url, no_safety_backup, skip_prechecks, allow_edited, "down")


@migrate_group.command("baseline")
@click.option("--rev", required=True, help="The revision the database's schema already is at.")
@click.option("--force", is_flag=True, help="Stamp even if the schema differs (the differences are journalled).")
@_url_opt
@pass_app
def baseline_cmd(app: AppContext, rev: str, force: bool, url: str | None) -> None:
    """Adopt a database never managed by Alembic: check its schema matches REV, then stamp it."""
    from crmops.services.migrate import baseline

    r = baseline(app.config, rev=rev, url=url, force=force)

    def human(console: Any) -> None:
        for d in r["differences"]:
            console.print(f"[yellow]differs[/yellow] {d['kind']} {d['name']}: {d['change']} {d['detail']}")
        console.print(f"{r['database']} adopted at revision {r['revision']}")

    app.emit(r, human)


@migrate_group.command("lint")
@click.option("--to", "to", help="Lint pending revisions up to this one (default: head).")
@click.option("--all", "all_revisions", is_flag=True, help="Lint every revision, not only the pending ones.")
@click.option("--engine", type=click.Choice(["postgresql", "mysql", "sqlite"]),
              help="With --all: the engine to judge for (default: database.url's).")
@click.option("--rules", "show_rules", is_flag=True, help="List the rules and their severities, then exit.")
@_url_opt
@pass_app
def lint_cmd(app: AppContext, to: str | None, all_revisions: bool, engine: str | None, show_rules: bool,
             url: str | None) -> None:
    """Static checks for operations that hurt a live CRM (drops, renames, rewrites, locks)."""
    from crmops.errors import LintFailed
    from crmops.migrations.lint import RULES
    from crmops.services.migrate import lint, lint_failures

    if show_rules:
        levels = {rule: app.config.migrations.lint.get(rule, default) for rule, (default, _) in RULES.items()}

        def rules(console: Any) -> None:
            for rule, level in levels.items():
                console.print(f"{rule:26} {level:8} {RULES[rule][1]}")

        app.emit(levels, rules)
        return
    findings = lint(app.config, url=url, to=to, all_revisions=all_revisions, engine=engine)
    failed = lint_failures(app.config, findings)

    def human(console: Any) -> None:
        for f in findings:
            colour = "red" if f in failed else "yellow"
            console.print(f"[{colour}]{f.severity}[/{colour}] {f.revision} {f.path}:{f.line} {f.rule}: {f.why}")
        if not findings:
            console.print("[green]no findings[/green]")

    app.emit({"findings": [f.to_dict() for f in findings], "failed": len(failed)}, human)
    if failed:
        raise LintFailed(f"{len(failed)} lint finding(s) fail the check (first: {failed[0]})",
                         hint="rewrite the revision, or set the rule's severity in migrations.lint")


@migrate_group.command("drift")
@_url_opt
@pass_app
def drift_cmd(app: AppContext, url: str | None) -> None:
    """Compare the live schema with what its current revision's migrations create."""
    from crmops.errors import SchemaDrift
    from crmops.services.migrate import drift

    diffs = drift(app.config, url=url)

    def human(console: Any) -> None:
        for d in diffs:
            console.print(f"[red]drift[/red] {d}")
        if not diffs:
            console.print("[green]no drift[/green]: the schema is what its migrations create")

    app.emit({"differences": [d.to_dict() for d in diffs]}, human)
    if diffs:
        raise SchemaDrift(f"{len(diffs)} difference(s) between the live schema and its migrations (first: {diffs[0]})",
                          hint="write a migration for intended changes, or undo the hand edits")


@migrate_group.command("history")
@click.option("--all", "all_databases", is_flag=True, help="Runs on every database, not only the configured one.")
@_url_opt
@pass_app
def history_cmd(app: AppContext, all_databases: bool, url: str | None) -> None:
    """Every recorded migration run (from the hash-chained journal outside the database)."""
    from crmops.services.migrate import history

    h = history(app.config, url=url, all_databases=all_databases)

    def human(console: Any) -> None:
        for r in h["runs"]:
            revs = ", ".join(f"{x['revision']} {x['seconds']:.2f}s" for x in r["revisions"]) or "no revisions"
            result = r["result"] if r["result"] == "ok" else f"[red]{r['result']}[/red]"
            snap = f" snapshot {r['safety_snapshot'][:10]}" if r["safety_snapshot"] else ""
            console.print(f"{r['started'][:19]} {r['actor'] or ''} {r['command']}: {r['from'] or 'base'} → "
                          f"{r['to'] or 'base'} {result} ({revs}){snap}")
            if r["error"]:
                console.print(f"    {r['error']}")
        console.print(f"journal {h['journal']}: {h['records']} records, hash chain {h['chain']}")

    app.emit(h, human)


@migrate_group.command("validate")
@click.option("--accept", is_flag=True, help="Record the edited scripts' current checksums as intended.")
@_url_opt
@pass_app
def validate_cmd(app: AppContext, accept: bool, url: str | None) -> None:
    """Check that applied migration scripts were not edited since they ran (as Flyway's validate)."""
    from crmops.services.migrate import validate

    v = validate(app.config, url=url, accept=accept)

    def human(console: Any) -> None:
        if v["accepted"]:
            console.print(f"accepted edits of {', '.join(m['revision'] for m in v['modified'])}")
        else:
            console.print("[green]applied scripts unchanged[/green]")

    app.emit(v, human)
