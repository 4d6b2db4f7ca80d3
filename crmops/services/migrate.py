"""Schema migrations for a live CRM: Alembic underneath, production safety around it.

status / plan / up / down / baseline / lint / drift / history / validate. Every run
that could change the database takes a safety snapshot first (tag ``pre-migrate``),
checks the data the pending revisions would trip over, runs under a lock timeout
with the engine's transaction policy (crmops.migrations.runner), and is written to
the journal under ``<state_dir>/migrations`` whatever its outcome.

``url`` lets a caller (e.g. an upgrade's dry run) point a workflow at a sandbox copy
instead of ``config.database.url``.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crmops.config import Config
from crmops.dburl import display, engine_kind, parse, safe
from crmops.errors import ConfigError, CrmopsError, Interrupted, MigrationFailed, MigrationRefused
from crmops.migrations import prechecks, source
from crmops.migrations.foreign import foreign_state
from crmops.migrations.history import MigrationJournal
from crmops.migrations.runner import EnvIgnoresConnection, Session, StepFailed, StepRefused, StepResult
from crmops.migrations.scripts import Scripts, Step
from crmops.services.migrate_schema import (
    baseline,
    drift,
    history,
    journal_for,
    lint,
    lint_failures,
    scripts_for,
    session_for,
)

log = logging.getLogger("crmops.migrate")

__all__ = ["MigrateResult", "baseline", "down", "drift", "history", "journal_for", "lint", "lint_failures",
           "migrate", "plan", "resolve", "scripts_for", "status", "up", "validate"]


@dataclass
class MigrateResult:
    """What a migrate run did; to_dict() is the --json output and what the upgrade journal keeps."""

    database: str
    engine: str
    from_revision: str | None
    to_revision: str | None
    direction: str
    revisions: list[dict[str, Any]] = field(default_factory=list)
    safety_snapshot: str | None = None
    seconds: float = 0.0
    run: str | None = None
    transaction: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"database": self.database, "engine": self.engine, "from": self.from_revision,
                "to": self.to_revision, "direction": self.direction, "revisions": self.revisions,
                "safety_snapshot": self.safety_snapshot, "seconds": self.seconds, "run": self.run,
                "transaction": self.transaction}


def status(config: Config, *, url: str | None = None) -> dict[str, Any]:
    """Where the database stands: current revision, heads, pending revisions, edited scripts, problems."""
    target = url or config.database.url
    scripts = scripts_for(config)
    with session_for(config, target) as session:
        current = session.current()
        foreign = foreign_state(session.connection) if current is None else None
    heads = scripts.heads()
    errors: list[str] = []
    if len(heads) > 1:
        try:
            scripts.single_head()
        except MigrationRefused as e:
            errors.append(e.line())
    pending: list[dict[str, str]] = []
    if current is not None and not scripts.knows(current):
        errors.append(f"the database is at revision {current}, which {scripts.location} does not hold")
    elif len(heads) == 1 and foreign is None:
        pending = [{"revision": s.revision, "message": s.message} for s in scripts.steps(current, heads[0])]
    modified = _modified(config, scripts, safe(target), current)
    return {"database": display(target), "engine": engine_kind(target), "script_location": scripts.location,
            "current": current, "current_message": scripts.message(current) if current and scripts.knows(current)
            else None, "heads": heads, "pending": pending, "modified": modified, "errors": errors,
            "foreign": foreign,
            "up_to_date": not pending and not errors and current is not None and current in heads}


def _modified(config: Config, scripts: Scripts, database: str, current: str | None) -> list[dict[str, str]]:
    """Applied revisions whose script changed since (compared with the checksum the journal kept)."""
    if current is None or not scripts.knows(current):
        return []
    recorded = journal_for(config).checksums(database)
    found = []
    for rev in scripts.ancestors(current):
        was = recorded.get(rev)
        if was is not None and was != scripts.checksum(rev):
            found.append({"revision": rev, "recorded": was, "now": scripts.checksum(rev),
                          "path": str(scripts.script(rev).path)})
    return found


def validate(config: Config, *, url: str | None = None, accept: bool = False) -> dict[str, Any]:
    """Applied scripts must be unchanged; accept=True records their current checksums as intended edits."""
    target = url or config.database.url
    scripts = scripts_for(config)
    with session_for(config, target) as session:
        current = session.current()
    modified = _modified(config, scripts, safe(target), current)
    if modified and accept:
        journal = journal_for(config)
        with journal.lock():
            journal.append("checksum-accepted", database=safe(target),
                           checksums={m["revision"]: m["now"] for m in modified})
    elif modified:
        names = ", ".join(f"{m['revision']} ({m['path']})" for m in modified)
        raise MigrationRefused(f"applied migration scripts were edited since they ran: {names}",
                               hint="restore the original files, or run `crmops migrate validate --accept` if "
                                    "the edit is intended")
    return {"database": safe(target), "current": current, "modified": modified, "accepted": accept and bool(modified)}


def plan(config: Config, *, to: str = "head", url: str | None = None, sql: bool = False) -> dict[str, Any]:
    """The revisions a migration to `to` would run, in order; with sql, each one's SQL (Alembic offline mode)."""
    target_url = url or config.database.url
    scripts = scripts_for(config)
    with session_for(config, target_url) as session:
        current = session.current()
        _refuse_foreign(session, current, target_url)
    target = scripts.resolve(to)
    steps = scripts.steps(current, target)
    checks = prechecks.plan(steps)
    rows = []
    for step in steps:
        row: dict[str, Any] = step.to_dict()
        row["prechecks"] = [c.describe() for c in prechecks.checks_of(step)]
        if sql:
            row["sql"], row["sql_error"] = _offline_sql(scripts, target_url, step)
        rows.append(row)
    return {"database": display(target_url), "from": current, "to": target,
            "direction": steps[0].direction if steps else None, "revisions": rows,
            "prechecks_up_front": len(checks.upfront),
            "transaction": _policy(engine_kind(target_url), _needs_autocommit(steps))}


def _refuse_foreign(session: Session, current: str | None, url: str) -> None:
    """A database another tool migrates gets no Alembic revisions: it would end up with two schemas' worth."""
    foreign = foreign_state(session.connection) if current is None else None
    if foreign is not None:
        raise MigrationRefused(f"{safe(url)}: {foreign['note']}",
                               hint="crmops migrate runs the configured Alembic scripts only; an upgrade playbook's "
                                    "app_command step runs the application's own migration command")


def _offline_sql(scripts: Scripts, url: str, step: Step) -> tuple[str | None, str | None]:
    """One revision's SQL as Alembic renders it offline; revisions that read data cannot be rendered."""
    from alembic import command

    buffer = io.StringIO()
    cfg = scripts.alembic_config(url, output=buffer)
    try:
        if step.direction == "up":
            before = scripts.script(step.revision).down_revision
            start = before if isinstance(before, str) else "base" if before is None else None
            if start is None:
                return None, "a merge revision cannot be rendered on its own"
            command.upgrade(cfg, f"{start}:{step.revision}", sql=True)
        else:
            command.downgrade(cfg, f"{step.revision}:{step.after or 'base'}", sql=True)
    except Exception as e:  # the script needs a live connection (it reads data or asks the dialect)
        import logging

        logging.getLogger("crmops.migrate").debug("offline SQL of %s failed: %s: %s", step.revision,
                                                  type(e).__name__, e)
        return None, ("no SQL to show: this revision reads the database while it runs, so its statements "
                      "depend on the data; rehearse it on a copy (`migrate up --url COPY` or "
                      "`upgrade PLAYBOOK --dry-run`)")
    return buffer.getvalue(), None


def _needs_autocommit(steps: list[Step]) -> list[str]:
    """Revisions that open an autocommit block: they cannot run inside one transaction for the whole run."""
    found = []
    for step in steps:
        try:
            if source.parse(step.path).uses_autocommit(step.function):
                found.append(step.revision)
        except SyntaxError:
            continue
    return found


def _policy(kind: str, autocommit: list[str]) -> str:
    if kind == "mysql":
        return "per revision (DDL commits implicitly)"
    if autocommit:
        return f"per revision ({', '.join(autocommit)} needs autocommit, e.g. CREATE INDEX CONCURRENTLY)"
    return "one transaction for the whole run"


# --- up / down ---------------------------------------------------------------------------

def migrate(config: Config, *, to: str, url: str | None = None, safety_backup: bool = True,
            tags: tuple[str, ...] | list[str] = ("pre-migrate",), run_prechecks: bool = True,
            allow_modified: bool = False, command: str = "migrate",
            on_step: Callable[[StepResult], None] | None = None) -> MigrateResult:
    """Migrate up or down to `to` (a revision, head, base or demo release), with every safety net.

    Raises MigrationRefused (nothing changed, or the refusal says what did) and MigrationFailed
    (naming the revision, what of it ran, and the rollback path), each with one clear line.
    """
    started = time.monotonic()
    target_url = url or config.database.url
    database = safe(target_url)
    scripts = scripts_for(config)
    journal = journal_for(config)
    with journal.lock(), session_for(config, target_url) as session:
        current = session.current()
        _refuse_foreign(session, current, target_url)
        target = scripts.resolve(to)
        steps = scripts.steps(current, target)
        direction = steps[0].direction if steps else "none"
        autocommit = _needs_autocommit(steps)
        result = MigrateResult(database=database, engine=session.kind, from_revision=current, to_revision=target,
                               direction=direction, transaction=_policy(session.kind, autocommit))
        if not steps:
            result.seconds = round(time.monotonic() - started, 3)
            return result
        run_id = result.run = journal.start(database=database, engine=session.kind, from_rev=current,
                                            to_rev=target, direction=direction, command=command)
        try:
            modified = [] if allow_modified else _modified(config, scripts, database, current)
            if modified:
                names = ", ".join(m["revision"] for m in modified)
                raise MigrationRefused(f"applied migration scripts were edited since they ran: {names}",
                                       hint="`crmops migrate validate` shows them; restore the files or accept "
                                            "the edit with `crmops migrate validate --accept`")
            checks = prechecks.plan(steps) if run_prechecks else prechecks.CheckPlan()
            violations = prechecks.run(checks.upfront, session.connection)
            session.connection.rollback()
            if violations:
                raise prechecks.refusal(violations, changed="nothing was changed")
            if safety_backup and config.migrations.safety_backup:
                result.safety_snapshot = _safety_snapshot(config, target_url, tags)
                journal.append("safety-snapshot", run=run_id, snapshot=result.safety_snapshot, tags=list(tags))

            def check(step: Step, conn: Any) -> None:
                found = prechecks.run(checks.deferred.get(step.revision, []), conn)
                if found:
                    raise prechecks.refusal(found, changed="")

            committed: list[dict[str, Any]] = []

            def record(done: StepResult) -> None:
                checksum = scripts.checksum(done.step.revision)
                fields: dict[str, Any] = {"run": run_id, "database": database, "revision": done.step.revision,
                                          "direction": done.step.direction, "seconds": done.seconds,
                                          "checksum": checksum, "statements": len(done.statements)}
                result.revisions.append({**done.to_dict(), "checksum": checksum})
                if session.transactional and not autocommit:
                    committed.append(fields)  # journalled once the whole run has committed
                else:  # committed as it ran: keep exactly what it did, now
                    journal.append("revision", **fields, sql=[s.to_dict() for s in done.statements])
                if on_step is not None:
                    on_step(done)

            session.run(scripts, steps, whole=not autocommit, check=check if checks.deferred else None,
                        on_step=record)
            for fields in committed:
                journal.append("revision", **fields)
        except StepRefused as e:
            error = _refused_midway(e)
            _end(journal, run_id, started, "refused", error, at=e.step.revision)
            raise error from None
        except StepFailed as e:
            error = _failed(e, session, result, target_url)
            _end(journal, run_id, started, "failed", error, at=e.step.revision,
                 ran=[s.to_dict() for s in e.ran], failed_sql=e.failed_sql)
            raise error from None
        except EnvIgnoresConnection as e:
            error = ConfigError(
                f"{scripts.location}/env.py does not use the connection crmops passes in "
                "config.attributes['connection'], so crmops cannot give the run its transaction and lock timeout; "
                + (f"revision {e.step.revision} ran on a connection of its own and may be applied" if e.ran
                   else "nothing was run"),
                hint="make env.py use that connection (docs/MIGRATIONS.md shows how)")
            _end(journal, run_id, started, "failed", error, at=e.step.revision)
            raise error from None
        except CrmopsError as e:
            _end(journal, run_id, started, "refused" if isinstance(e, MigrationRefused) else "failed", e)
            raise
        except BaseException as e:  # Ctrl-C or a bug: still on record, with what the revision had done
            stopped = session.interrupted
            facts: dict[str, Any] = {}
            if stopped is not None:
                step, ran, running, rolled_back = stopped
                facts = {"at": step.revision, "ran": [s.to_dict() for s in ran], "failed_sql": running,
                         "rolled_back": rolled_back}
            _end(journal, run_id, started, "interrupted", MigrationFailed(f"{type(e).__name__}: {e}"), **facts)
            if isinstance(e, KeyboardInterrupt):
                raise Interrupted(_interrupted_line(stopped)) from None
            raise
        result.seconds = round(time.monotonic() - started, 3)
        _end(journal, run_id, started, "ok", None)
        return result


def _interrupted_line(stopped: tuple[Any, list[Any], str | None, bool] | None) -> str:
    """What Ctrl-C left behind, which differs by engine: say it rather than a generic line."""
    if stopped is None:
        return "migration stopped by Ctrl-C or SIGTERM before a revision started; nothing was changed"
    step, ran, _, rolled_back = stopped
    if rolled_back or not ran:
        return f"migration stopped by Ctrl-C or SIGTERM in revision {step.revision}; its changes were rolled back"
    return (f"migration stopped by Ctrl-C or SIGTERM in revision {step.revision} after {len(ran)} statement(s) "
            "took effect (MariaDB commits each DDL); `crmops migrate history` shows them and the rollback path")


def resolve(config: Config, to: str) -> str | None:
    """The revision id a target names (an id or prefix, head, base, or a demo release such as 2.0)."""
    return scripts_for(config).resolve(to)


def up(config: Config, *, to: str = "head", **kwargs: Any) -> MigrateResult:
    """Migrate up to `to` (default: the single head)."""
    return migrate(config, to=to, **kwargs)


def down(config: Config, *, to: str, **kwargs: Any) -> MigrateResult:
    """Migrate down to `to` (a revision, or base); refuses a target above the current revision."""
    target_url = kwargs.get("url") or config.database.url
    scripts = scripts_for(config)
    with session_for(config, target_url) as session:
        current = session.current()
    steps = scripts.steps(current, scripts.resolve(to))
    if steps and steps[0].direction != "down":
        raise MigrationRefused(f"{to} is above the database's revision {current}; `down` only goes down",
                               hint=f"use `crmops migrate up --to {to}`")
    return migrate(config, to=to, **kwargs)


def _safety_snapshot(config: Config, url: str, tags: tuple[str, ...] | list[str]) -> str:
    from crmops.services.backup import backup

    try:
        return backup(config, tags=list(tags), url=None if url == config.database.url else url).snapshot_id
    except CrmopsError as e:
        raise type(e)(f"the safety snapshot before migrating failed: {e.message}",
                      hint=(e.hint + "; " if e.hint else "") + "fix that, or skip the snapshot explicitly with "
                           "--no-safety-backup") from None


def _end(journal: MigrationJournal, run_id: str, started: float, outcome: str, error: CrmopsError | None,
         **fields: Any) -> None:
    journal.append("run-end", run=run_id, result=outcome, error=error.line() if error else None,
                   seconds=round(time.monotonic() - started, 3), **fields)


def _applied_note(done: list[StepResult], rolled_back: bool) -> str:
    if rolled_back or not done:
        return "nothing was changed" + (" (the whole run was rolled back)" if done else "")
    names = ", ".join(d.step.revision for d in done)
    return f"{names} of this run stayed applied; the database is at {done[-1].step.after or 'base'}"


def _refused_midway(e: StepRefused) -> MigrationRefused:
    """A just-in-time pre-check refused: say what the earlier revisions of the run left behind."""
    changed = _applied_note(e.done, e.rolled_back)
    error = MigrationRefused(e.refusal.message, hint=f"fix or merge these rows, then run again; {changed}")
    error.violations = getattr(e.refusal, "violations", [])  # type: ignore[attr-defined]
    return error


def _failed(e: StepFailed, session: Session, result: MigrateResult, url: str) -> MigrationFailed:
    """The one line after a failure: which revision, what of it ran, and how to roll back."""
    secs = f"{session.lock_timeout:g} s"
    if e.lock_timeout:
        what = (f"revision {e.step.revision} waited more than the lock timeout ({secs}) for a table another "
                "session holds")
        fix = "find the long-running transaction (PostgreSQL: pg_stat_activity; MariaDB: SHOW PROCESSLIST), " \
              "end it, and run again; or raise migrations.lock_timeout_seconds"
    else:
        what = f"revision {e.step.revision} ({e.step.direction}) failed: {e.error}"
        fix = ""
    snapshot = result.safety_snapshot
    where = safe(url) if parse(url).password is None else "<the database URL>"
    restore = (f"crmops restore {snapshot} --to {where} --force" if snapshot
               else "restore your latest backup (no safety snapshot was taken)")
    if e.rolled_back:
        state = "nothing was changed (the whole run was rolled back)"
        path = fix or "fix the cause and run again"
    else:
        done = [d.step.revision for d in e.done]
        at = e.done[-1].step.after if e.done else result.from_revision
        if session.transactional:  # revision by revision for an autocommit block: the failed one rolled back
            state = f"revision {e.step.revision} was rolled back (except what an autocommit block of it ran)"
            ran = []
        else:
            state = f"revision {e.step.revision} is HALF-APPLIED: " + (
                f"{len(e.ran)} of its statements took effect ({'; '.join(s.sql for s in e.ran)})" if e.ran
                else "none of its statements took effect") + (
                f", then `{e.failed_sql}` failed" if e.failed_sql else "")
            ran = e.ran
        state += f"; {', '.join(done)} of this run completed" if done else ""
        state += f"; alembic_version says {at or 'base'}"
        back = f"`crmops migrate down --to {result.from_revision or 'base'}`"
        by_hand = "undo those statements by hand" + (f", then {back}" if done else "")
        undo = by_hand if ran else back if done else ""
        path = f"roll back: {restore}" + (f", or {undo}" if undo else "") + (f"; {fix}" if fix else "")
    error = MigrationFailed(f"{what}; {state}", hint=path)
    error.details = {"revision": e.step.revision, "rolled_back": e.rolled_back,  # type: ignore[attr-defined]
                     "statements_ran": [s.sql for s in e.ran], "failed_statement": e.failed_sql,
                     "completed": [d.step.revision for d in e.done], "safety_snapshot": snapshot,
                     "lock_timeout": e.lock_timeout}
    return error
