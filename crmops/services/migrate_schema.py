"""The migrate commands about the schema and its record: lint, drift, baseline, history.

Split from migrate.py (the runs that change the database); both share the session,
scripts and journal helpers defined here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from crmops.config import Config
from crmops.dburl import engine_kind, safe
from crmops.errors import ConfigError, MigrationFailed, MigrationRefused
from crmops.journal import actor
from crmops.migrations.foreign import foreign_state
from crmops.migrations.history import MigrationJournal
from crmops.migrations.lint import RULES, Finding, failing, lint_script
from crmops.migrations.runner import EnvIgnoresConnection, Session, StepFailed
from crmops.migrations.schema import SchemaDifference, ScratchUnavailable, build, compare, scratch_database
from crmops.migrations.scripts import Scripts

log = logging.getLogger("crmops.migrate")


def scripts_for(config: Config) -> Scripts:
    """The configured Alembic script folder (the demo CRM's by default)."""
    return Scripts(config.migrations.script_location)


def journal_for(config: Config) -> MigrationJournal:
    return MigrationJournal(config.state_dir)


def session_for(config: Config, url: str | None) -> Session:
    return Session(url or config.database.url, lock_timeout=config.migrations.lock_timeout_seconds)


# --- status, plan, validate ------------------------------------------------------------

# --- lint ----------------------------------------------------------------------------------

def lint(config: Config, *, url: str | None = None, to: str | None = None, all_revisions: bool = False,
         engine: str | None = None) -> list[Finding]:
    """Findings for the pending revisions (up to `to`, default head), or every revision with all_revisions.

    The database is only asked for its current revision; with all_revisions it is not touched,
    and engine ("postgresql", "mysql", "sqlite") may be given instead of reading it from the URL.
    """
    target_url = url or config.database.url
    scripts = scripts_for(config)
    severities = _lint_severities(config)
    kind = engine or engine_kind(target_url)
    if all_revisions:
        revisions = scripts.all_revisions()
    else:
        with session_for(config, target_url) as session:
            current = session.current()
        steps = scripts.steps(current, scripts.resolve(to or "head"))
        revisions = [s.revision for s in steps if s.direction == "up"]
    findings: list[Finding] = []
    for rev in revisions:
        findings += lint_script(rev, scripts.script(rev).path, engine=kind, severities=severities)
    return findings


def lint_failures(config: Config, findings: list[Finding]) -> list[Finding]:
    """The findings that fail the lint (errors; warnings too with migrations.lint_fail_on: warning)."""
    return failing(findings, config.migrations.lint_fail_on)


def _lint_severities(config: Config) -> dict[str, str]:
    unknown = sorted(set(config.migrations.lint) - set(RULES))
    if unknown:
        raise ConfigError(f"{config.source}: key migrations.lint: unknown rule {unknown[0]!r}",
                          hint=f"known rules: {', '.join(RULES)}")
    return dict(config.migrations.lint)


# --- drift and baseline --------------------------------------------------------------------

@contextmanager
def _expected(config: Config, url: str, revision: str | None) -> Iterator[str]:
    """A database holding exactly the schema `revision` expects: scratch on the server, else a sandbox."""
    scripts = scripts_for(config)
    with ExitStack() as stack:
        try:
            scratch = stack.enter_context(scratch_database(url))
        except ScratchUnavailable as e:
            from crmops.engines import open_engine
            from crmops.sandbox import open_sandbox

            log.info("no scratch database on the server (%s); building the expected schema in a sandbox", e)
            live = open_engine(url, config.database)
            box = stack.enter_context(open_sandbox(config.verify, live.name, live.server_version()))
            scratch = box.url
        try:
            build(scripts, scratch, revision)
        except EnvIgnoresConnection:
            raise ConfigError(f"{scripts.location}/env.py does not use the connection crmops passes in "
                              "config.attributes['connection']",
                              hint="make env.py use that connection (docs/MIGRATIONS.md shows how)") from None
        except StepFailed as e:
            raise MigrationFailed(f"building the schema of revision {revision} in a scratch database failed at "
                                  f"{e.step.revision}: {e.error}") from None
        yield scratch


def drift(config: Config, *, url: str | None = None) -> list[SchemaDifference]:
    """How the live schema differs from what its current revision's migrations create (e.g. hand edits)."""
    target_url = url or config.database.url
    scripts = scripts_for(config)
    with session_for(config, target_url) as session:
        current = session.current()
        foreign = foreign_state(session.connection) if current is None else None
    if foreign is not None:
        raise MigrationRefused(f"{safe(target_url)}: {foreign['note']}",
                               hint="drift compares with Alembic revisions only")
    if current is None:
        raise MigrationRefused(f"{safe(target_url)} is not managed by Alembic (no alembic_version)",
                               hint="adopt it first with `crmops migrate baseline --rev REV`")
    scripts.script(current)
    with _expected(config, target_url, current) as expected:
        return compare(target_url, expected)


def baseline(config: Config, *, rev: str, url: str | None = None, force: bool = False) -> dict[str, Any]:
    """Adopt a database never managed by Alembic: stamp `rev` if its schema is what rev expects, else refuse."""
    from alembic import command as alembic_command

    target_url = url or config.database.url
    database = safe(target_url)
    scripts = scripts_for(config)
    revision = scripts.resolve(rev)
    journal = journal_for(config)
    with journal.lock(), session_for(config, target_url) as session:
        current = session.current()
        if current is not None:
            raise MigrationRefused(f"{database} is already managed by Alembic (at {current})",
                                   hint="baseline is only for databases that never were; see `crmops migrate status`")
        with _expected(config, target_url, revision) as expected:
            differences = compare(target_url, expected)
        if differences and not force:
            shown = "; ".join(str(d) for d in differences[:8]) + (
                f" (+{len(differences) - 8} more)" if len(differences) > 8 else "")
            error = MigrationRefused(f"{database} does not match revision {revision}: {shown}",
                                     hint="pick the revision the database really is at, or fix the differences "
                                          "(`--json` lists them all)")
            error.differences = [d.to_dict() for d in differences]  # type: ignore[attr-defined]
            raise error
        cfg = scripts.alembic_config(target_url, connection=session.connection)
        with session.connection.begin():
            alembic_command.stamp(cfg, revision or "base")
        sums = {r: scripts.checksum(r) for r in scripts.ancestors(revision)}
        journal.append("baseline", actor=actor(), database=database, engine=session.kind, to=revision,
                       checksums=sums, forced=bool(differences), differences=[str(d) for d in differences])
    return {"database": database, "revision": revision, "stamped": True,
            "differences": [d.to_dict() for d in differences]}


# --- history ---------------------------------------------------------------------------------

def history(config: Config, *, url: str | None = None, all_databases: bool = False) -> dict[str, Any]:
    """Every recorded run (newest last) for the database, after checking the journal's hash chain."""
    journal = journal_for(config)
    database = None if all_databases else safe(url or config.database.url)
    runs = journal.runs(database)
    return {"journal": str(journal.journal.path), "records": journal.journal.verify() if journal.journal.exists()
            else 0, "chain": "intact", "runs": runs}
