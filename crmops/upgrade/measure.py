"""Timing a rehearsed step: run it on the sandbox, and a migration again on copies of it.

One run of a sub-second migration on a busy host is noise, so a migration runs on a few
throwaway copies (PostgreSQL templates) too and the plan shows the median; the lock
sampler watches the first run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from crmops.dburl import engine_kind, parse
from crmops.engines import open_engine
from crmops.playbooks.model import Step
from crmops.playbooks.runner import attempt
from crmops.playbooks.steps import StepContext
from crmops.upgrade.forecast import LockSampler

#: extra timed runs of each migration on copies of the sandbox database, and up to which size
EXTRA_REHEARSALS = 2
COPY_LIMIT_BYTES = 2_000_000_000

def execute(step: Step, params: dict[str, Any], execs: dict[str, Any], ctx: StepContext, entry: dict[str, Any],
             say: Callable[[str], None], sandbox_url: str) -> None:
    sampler = LockSampler(sandbox_url) if step.type == "migrate" and engine_kind(sandbox_url) == "postgresql" \
        else None
    extra = _timed_on_copies(step, params, execs, ctx, say, sandbox_url) if sampler else []
    if sampler:
        sampler.start()
    try:
        res = attempt(execs[step.type], step, params, ctx.fresh(), say)
    finally:
        if sampler:
            sampler.stop.set()
            sampler.join(5)
    timings = [res.seconds, *extra]
    entry.update(mode="production, read-only" if step.type == "preflight" else "rehearsed", measured=True,
                 rehearsed=True,
                 seconds=statistics.median(timings) if res.result.ok else res.seconds, timings=timings,
                 ok=res.result.ok, error=res.result.error, summary=res.result.summary,
                 outputs=res.result.outputs)
    if sampler:
        entry["locks"] = sampler.report()
        entry["lock_waits"] = sampler.waits
    say(f"  {'ok  ' if res.result.ok else 'FAIL'} {step.id} ({step.type}, {entry['mode']}, {res.seconds:.2f}s): "
        f"{res.result.error or res.result.summary}")


def _timed_on_copies(step: Step, params: dict[str, Any], execs: dict[str, Any], ctx: StepContext,
                     say: Callable[[str], None], sandbox_url: str) -> list[float]:
    """More timings of a migration, on throwaway copies of the sandbox database (PostgreSQL templates).

    One run of a sub-second migration on a busy host is noise; the plan shows the median.
    """
    u = parse(sandbox_url)
    admin = open_engine(u.set(database="postgres").render_as_string(hide_password=False))
    times: list[float] = []
    with admin.connect() as conn:  # type: ignore[attr-defined]
        size = conn.execute("SELECT pg_database_size(%s)", (u.database,)).fetchone()[0]
        if size > COPY_LIMIT_BYTES:
            return times
        for i in range(EXTRA_REHEARSALS):
            copy = f"{u.database}_rehearsal_{i}"
            if not copy_database(conn, u.database or "", copy):
                break
            try:
                url = u.set(database=copy).render_as_string(hide_password=False)
                res = attempt(execs[step.type], step, params, StepContext(ctx.run_id, url, dry_run=True, yes=True))
                if not res.result.ok:
                    break
                times.append(res.seconds)
            finally:
                conn.execute(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')
    return times


def copy_database(conn: Any, source: str, copy: str) -> bool:
    """CREATE DATABASE copy TEMPLATE source on an admin connection; False if source stays in use."""
    import psycopg

    for _ in range(20):  # autovacuum may be visiting the template for a moment
        try:
            conn.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{source}"')
            return True
        except psycopg.errors.ObjectInUse:
            time.sleep(0.25)
    return False
