"""Run migration steps with the transaction policy each engine allows.

PostgreSQL and SQLite have transactional DDL: the whole run is one transaction, so a
failure anywhere leaves the database exactly as it was. (SQLite's driver does not
issue BEGIN before DDL by itself, so this session does, with BEGIN IMMEDIATE.)

MySQL/MariaDB commit every DDL statement implicitly, so there a run goes revision by
revision and every statement is recorded as it runs: when a revision fails halfway,
the report names it and lists which of its statements already took effect.

Every session carries a lock timeout, so a migration queued behind a long-running
transaction gives up quickly instead of holding every other CRM session behind it.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event
from sqlalchemy.engine import Connection

from crmops.dburl import engine_kind, safe
from crmops.engines.connect import classify, connect_engine
from crmops.errors import MigrationRefused, db_said
from crmops.migrations.scripts import Scripts, Step

#: statements that change nothing; left out of the list of what a failed revision did
_READS = ("select", "show", "describe", "explain", "pragma", "set ")
#: Connection.info key: this connection's transactions will write (SQLite: BEGIN IMMEDIATE)
_WRITES = "crmops_writes"
#: statement text kept in reports and the journal (parameters are never kept)
MAX_SQL = 400


@dataclass
class Statement:
    sql: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"sql": self.sql, "seconds": self.seconds}


@dataclass
class StepResult:
    step: Step
    seconds: float
    statements: list[Statement] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.step.to_dict(), "seconds": self.seconds, "statements": len(self.statements)}


class StepFailed(Exception):
    """A step raised; carries what a person needs to decide how to roll back."""

    def __init__(self, step: Step, error: str, *, done: list[StepResult], ran: list[Statement],
                 failed_sql: str | None, rolled_back: bool, lock_timeout: bool) -> None:
        super().__init__(error)
        self.step, self.error, self.done, self.ran = step, error, done, ran
        self.failed_sql, self.rolled_back, self.lock_timeout = failed_sql, rolled_back, lock_timeout


class StepRefused(Exception):
    """A pre-check found rows the step would fail on; nothing of the step ran."""

    def __init__(self, step: Step, refusal: MigrationRefused, *, done: list[StepResult], rolled_back: bool) -> None:
        super().__init__(refusal.line())
        self.step, self.refusal, self.done, self.rolled_back = step, refusal, done, rolled_back


class EnvIgnoresConnection(Exception):
    """The scripts' env.py opens its own connection, so crmops could not control transaction and lock timeout.

    Found by a read-only probe before anything runs; step is the revision that would have run first
    (or, should env.py change its mind mid-run, the one that ran outside the session).
    """

    def __init__(self, step: Step, *, ran: bool) -> None:
        super().__init__(step.revision)
        self.step, self.ran = step, ran


class Session:
    """One connection set up for migrating: lock timeout, statement recording, explicit BEGIN on SQLite."""

    def __init__(self, url: str, *, lock_timeout: float, must_exist: bool = True) -> None:
        self.url = url
        self.kind = engine_kind(url)
        self.lock_timeout = lock_timeout
        self.engine = connect_engine(url, must_exist=must_exist, connect_args=_session_args(self.kind, lock_timeout))
        if self.kind == "sqlite":
            event.listen(self.engine, "connect", _sqlite_manual_transactions)
            event.listen(self.engine, "begin", _sqlite_begin)
            self.engine.dispose()  # the probe connection predates the listeners
        self.connection = self.engine.connect()
        self._current: list[Statement] = []
        self._pending: tuple[str, float] | None = None
        self._versioned = False
        #: set when Ctrl-C/SIGTERM stopped a run: (step, statements that ran, the one running, rolled back)
        self.interrupted: tuple[Step, list[Statement], str | None, bool] | None = None
        event.listen(self.connection, "before_cursor_execute", self._before)
        event.listen(self.connection, "after_cursor_execute", self._after)

    @property
    def transactional(self) -> bool:
        """True where DDL is transactional, so the whole run can be one transaction."""
        return self.kind != "mysql"

    def current(self) -> str | None:
        """The revision the database is at (None: not managed by Alembic yet)."""
        try:
            heads = MigrationContext.configure(self.connection).get_current_heads()
        except sa.exc.DBAPIError as e:
            raise classify(e, self.url) from None
        finally:
            self.connection.rollback()
        if len(heads) > 1:
            raise MigrationRefused(f"{safe(self.url)} is at several revisions at once ({', '.join(heads)})",
                                   hint="merge the heads in the scripts, then migrate to the merge revision")
        return heads[0] if heads else None

    def close(self) -> None:
        try:
            self.connection.close()
        finally:
            self.engine.dispose()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- statement recording ----------------------------------------------------

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                executemany: bool) -> None:
        self._pending = (statement, time.monotonic())
        if "alembic_version" in statement.lower() or "alembic_version" in str(parameters):
            self._versioned = True  # Alembic's bookkeeping (even a failing probe): env.py uses this connection

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        started = self._pending[1] if self._pending else time.monotonic()
        self._pending = None
        text = " ".join(statement.split())
        lowered = text.lower()
        if lowered.startswith(_READS) or "alembic_version" in lowered:
            return
        self._current.append(Statement(text[:MAX_SQL], round(time.monotonic() - started, 3)))

    def _take(self) -> tuple[list[Statement], str | None]:
        ran, self._current = self._current, []
        failed = " ".join(self._pending[0].split())[:MAX_SQL] if self._pending else None
        self._pending = None
        return ran, failed

    # --- running ------------------------------------------------------------------

    def run(self, scripts: Scripts, steps: list[Step], *, whole: bool = True,
            check: Callable[[Step, Connection], None] | None = None,
            on_step: Callable[[StepResult], None] | None = None) -> list[StepResult]:
        """Apply steps in order; StepFailed / StepRefused say how far it got and what was undone.

        whole=False runs a transactional engine revision by revision too (each revision in its own
        transaction): a revision with an autocommit block (CREATE INDEX CONCURRENTLY) needs that.
        """
        cfg = scripts.alembic_config(self.url, connection=self.connection)
        if steps:
            self._probe(scripts, steps[0])
        done: list[StepResult] = []
        whole = whole and self.transactional
        transaction: sa.Transaction | None = None
        if whole:
            self.connection.rollback()
            self.connection.info[_WRITES] = True
            transaction = self._begin(steps[0] if steps else None, done)
        for step in steps:
            if not whole:
                self.connection.commit()  # end any read transaction; Alembic commits each revision itself
            self._take()
            self._versioned = False
            try:
                if check is not None:
                    check(step, self.connection)
                    self._take()
                    if not whole:
                        self.connection.commit()
                started = time.monotonic()
                if step.direction == "up":
                    command.upgrade(cfg, step.revision)
                else:
                    command.downgrade(cfg, step.after or "base")
            except MigrationRefused as refusal:
                rolled_back = self._undo(transaction)
                raise StepRefused(step, refusal, done=done, rolled_back=rolled_back) from None
            except BaseException as e:  # any error a migration script raises, and Ctrl-C
                ran, failed = self._take()
                if not isinstance(e, Exception):  # interrupted: undo what can be, keep the facts, re-raise
                    self.interrupted = (step, ran, failed, self._undo(transaction))
                    raise
                rolled_back = self._undo(transaction)
                raise StepFailed(step, _one_line(e), done=done, ran=ran, failed_sql=failed,
                                 rolled_back=rolled_back, lock_timeout=_is_lock_timeout(e, self.kind)) from e
            ran, _ = self._take()
            if not self._versioned:
                self._undo(transaction)
                raise EnvIgnoresConnection(step, ran=True)
            result = StepResult(step, round(time.monotonic() - started, 3), ran)
            done.append(result)
            if on_step is not None:
                on_step(result)
        if transaction is not None:
            try:
                transaction.commit()
            except Exception as e:
                rolled_back = self._undo(transaction)
                last = steps[-1]
                raise StepFailed(last, f"commit failed: {_one_line(e)}", done=[], ran=[], failed_sql="COMMIT",
                                 rolled_back=rolled_back, lock_timeout=_is_lock_timeout(e, self.kind)) from e
        else:
            self.connection.commit()
        self.connection.info.pop(_WRITES, None)
        return done

    def _probe(self, scripts: Scripts, first: Step) -> None:
        """Run env.py once read-only (`alembic current`): it must use this session's connection."""
        self._versioned = False
        try:
            command.current(scripts.alembic_config(self.url, connection=self.connection, output=io.StringIO()))
        finally:
            self.connection.rollback()
        if not self._versioned:
            raise EnvIgnoresConnection(first, ran=False)

    def _begin(self, first: Step | None, done: list[StepResult]) -> sa.Transaction:
        try:
            return self.connection.begin()
        except sa.exc.DBAPIError as e:  # SQLite: BEGIN IMMEDIATE waits for a writer, then gives up
            assert first is not None
            raise StepFailed(first, _one_line(e), done=done, ran=[], failed_sql="BEGIN IMMEDIATE",
                             rolled_back=True, lock_timeout=_is_lock_timeout(e, self.kind)) from e

    def _undo(self, transaction: sa.Transaction | None) -> bool:
        """Roll back what can be; True if nothing of the run remains (transactional engines)."""
        try:
            if transaction is not None and transaction.is_active:
                transaction.rollback()
            else:
                self.connection.rollback()
        except sa.exc.DBAPIError:
            self.connection.invalidate()
        return transaction is not None


def _session_args(kind: str, lock_timeout: float) -> dict[str, Any]:
    """Driver options that give every statement of the session the lock timeout."""
    if kind == "postgresql":
        return {"options": f"-c lock_timeout={max(1, round(lock_timeout * 1000))}"}
    if kind == "mysql":
        seconds = max(1, math.ceil(lock_timeout))  # MariaDB takes whole seconds
        return {"init_command": f"SET SESSION lock_wait_timeout = {seconds}, "
                                f"SESSION innodb_lock_wait_timeout = {seconds}"}
    return {"timeout": lock_timeout}  # SQLite's busy timeout


def _sqlite_manual_transactions(dbapi_connection: Any, record: Any) -> None:
    # let SQLAlchemy, not the sqlite3 module, decide where transactions begin
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    # DDL inside the transaction too; a migrating transaction takes the write lock up front
    # (waiting at most the busy timeout), reads do not
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get(_WRITES) else "BEGIN")


def _is_lock_timeout(exc: BaseException, kind: str) -> bool:
    orig = getattr(exc, "orig", exc)
    if kind == "postgresql":
        return getattr(orig, "sqlstate", None) == "55P03"
    if kind == "mysql":
        args = getattr(orig, "args", ())
        return bool(args) and args[0] == 1205
    return "database is locked" in str(orig)


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    first = db_said(orig)
    return f"{type(orig).__name__}: {first}" if first != type(orig).__name__ else first
