"""The dry run's forecast: downtime from the measured steps, the window, and what was not rehearsed.

Also the lock sampler, whose figures (which tables a migration locks, how hard, how
long) go into the same report.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crmops.config import Config
from crmops.engines import open_engine
from crmops.errors import CrmopsError
from crmops.playbooks.model import Playbook, Step
from crmops.playbooks.window import fits

#: PostgreSQL lock modes, weakest first
LOCK_MODES = ["AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
              "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"]



class LockSampler(threading.Thread):
    """Samples pg_locks in the sandbox while a step runs: which tables it locks, how hard, how long."""

    INTERVAL = 0.1

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True, name="lock-sampler")
        self.url = url
        self.stop = threading.Event()
        self.seen: dict[str, dict[str, Any]] = {}
        self.waits = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            conn = open_engine(self.url).connect()  # type: ignore[attr-defined]
        except CrmopsError as e:
            self.error = e.line()
            return
        query = ("SELECT c.relname, l.mode, l.granted FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                 "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE l.pid <> pg_backend_pid() "
                 "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND c.relkind IN ('r', 'p')")
        try:
            while not self.stop.is_set():
                rows = conn.execute(query).fetchall()
                waiting: set[str] = set()
                for table, mode, granted in rows:
                    entry = self.seen.setdefault(table, {"table": table, "strongest": mode, "samples": 0,
                                                         "wait_samples": 0})
                    if LOCK_MODES.index(mode) > LOCK_MODES.index(entry["strongest"]):
                        entry["strongest"] = mode
                    if not granted:
                        waiting.add(table)
                for table in {r[0] for r in rows}:  # one table may hold several locks: count it once
                    self.seen[table]["samples"] += 1
                    if table in waiting:
                        self.seen[table]["wait_samples"] += 1
                        self.waits += 1
                self.stop.wait(self.INTERVAL)
        finally:
            conn.close()

    def report(self) -> list[dict[str, Any]]:
        out = []
        for e in sorted(self.seen.values(), key=lambda e: -LOCK_MODES.index(e["strongest"])):
            out.append({"table": e["table"], "strongest": e["strongest"],
                        "held_s": round(e["samples"] * self.INTERVAL, 2),
                        "waited_s": round(e["wait_samples"] * self.INTERVAL, 2)})
        return out


#: step types whose unrehearsed duration is modelled from the database (the rest: history, else unknown)
_MODELLED = ("backup", "restore", "verify")


def step_history(state_dir: Path) -> dict[tuple[str, str], list[float]]:
    """Seconds each step took in earlier real (not dry) runs, by (step id, type), from the run journals."""
    from crmops.journal import Journal
    from crmops.playbooks.runjournal import upgrades_dir

    out: dict[tuple[str, str], list[float]] = {}
    for path in sorted(upgrades_dir(state_dir).glob("*.jsonl")):
        try:
            records = list(Journal(path).records())
        except (CrmopsError, OSError, ValueError):
            continue  # a damaged journal is listed by `upgrade --list`; it just gives no figures
        if not records or records[0].get("event") != "start" or records[0].get("dry_run"):
            continue
        for r in records:
            if r.get("event") == "step_end" and r.get("ok") and r.get("phase") == "run" and \
                    isinstance(r.get("seconds"), int | float):
                out.setdefault((str(r.get("step")), str(r.get("type"))), []).append(float(r["seconds"]))
    return out


def expected_seconds(step: Step, size: int, restore_s: float,
                     history: dict[tuple[str, str], list[float]] | None = None) -> dict[str, Any]:
    """What a step that is not rehearsed will take, and on what that rests ("basis"): the playbook's figure,
    the median of earlier real runs of the same step, a model of the database's size, or "unknown" (0 s
    counted, said so) rather than a fixed guess."""
    known = _stated_or_measured(step, history or {})
    if known is not None:
        return known
    if step.type == "backup":  # the dump runs at ~100 MB/s here (DESIGN.md)
        return {"seconds": round(2 + size / 100e6, 1), "basis": "the database's size at ~100 MB/s"}
    if step.type in _MODELLED:
        return {"seconds": restore_s + 2, "basis": "the rehearsal's restore time"}
    return _nothing_known(step)


def _nothing_known(step: Step) -> dict[str, Any]:
    """0 s, said so: a pause waits for a person; anything else is "unknown", never a guess."""
    if step.type == "pause":
        return {"seconds": 0.0, "basis": "waits for a person: not counted"}
    return {"seconds": 0.0, "basis": "unknown"}


#: steps timed once against production before a real run without a rehearsal: they only read
#: (an http step only with GET or HEAD; maintenance switches never)
_PROBED = ("preflight", "http")


def _probe(config: Config, step: Step, context: dict[str, Any]) -> dict[str, Any] | None:
    """One timed run of a step that only reads, or None where a probe is not cheap and harmless."""
    from crmops.playbooks.runner import attempt, step_params
    from crmops.playbooks.steps import StepContext
    from crmops.upgrade.steps import executors

    if step.type not in _PROBED or (step.type == "http" and getattr(step, "method", "GET") not in ("GET", "HEAD")):
        return None
    try:
        params = step_params(step, context)  # a step reading an earlier step's result cannot run before it
    except CrmopsError:
        return None
    quick = min(step.timeout, 10.0)  # a probe that does not answer soon says nothing about the real run
    probe = step.model_copy(update={"retries": 0, "timeout": quick})
    done = attempt(executors(config)[step.type], probe, {**params, "timeout": quick},
                   StepContext(run_id="forecast", url=config.database.url))
    if not done.result.ok:
        return None
    return {"seconds": round(done.seconds, 3), "basis": "a timed probe (it only reads)"}


def real_run_forecast(config: Config, playbook: Playbook) -> dict[str, Any]:
    """The downtime of a real run that has no rehearsal of this playbook text, from the same sources as the dry
    run's plan: the playbook's expected_seconds, the median of earlier real runs of the same step, a timed probe
    of a step that only reads, the database's size for a backup, else "unknown" (0 s counted, named)."""
    from crmops.playbooks.runner import template_context

    history = step_history(config.state_dir)
    context = template_context(playbook, "forecast", "", False, {})
    steps = [s for stage in playbook.stages for s in stage.steps]
    inside = not any(s.type == "maintenance" for s in steps)
    out: list[dict[str, Any]] = []
    for step in steps:
        if step.type == "maintenance" and getattr(step, "mode", "") == "on":
            inside = True
        if inside:
            entry = (_stated_or_measured(step, history) or _probe(config, step, context) or _modelled(config, step)
                     or _nothing_known(step))
            out.append({"step": step.id, "type": step.type, **entry})
        if step.type == "maintenance" and getattr(step, "mode", "") == "off":
            inside = False
    return {"estimated_downtime_s": round(sum(e["seconds"] for e in out), 2), "steps": out,
            "unknown_steps": [e["step"] for e in out if e["basis"] == "unknown"]}


def _modelled(config: Config, step: Step) -> dict[str, Any] | None:
    """A backup from the database's size as the server reports it (one catalogue query), as the dry run does."""
    if step.type != "backup":
        return None
    import sqlalchemy as sa

    from crmops.engines.connect import connect_engine

    queries = {"postgresql": "SELECT pg_database_size(current_database())",
               "mysql": "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables "
                        "WHERE table_schema = DATABASE()",
               "sqlite": "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"}
    try:
        engine = connect_engine(config.database.url)
    except CrmopsError:
        return None
    try:
        with engine.connect() as conn:
            size = int(conn.execute(sa.text(queries[engine.dialect.name])).scalar() or 0)
    except (sa.exc.DBAPIError, KeyError):
        return None
    finally:
        engine.dispose()
    return expected_seconds(step, size, 0.0)


def _stated_or_measured(step: Step, history: dict[tuple[str, str], list[float]]) -> dict[str, Any] | None:
    """The playbook's expected_seconds, else the median of the step's earlier real runs, else None."""
    if step.expected_seconds is not None:
        return {"seconds": step.expected_seconds, "basis": "the playbook's expected_seconds"}
    past = history.get((step.id or "", step.type))
    if not past:
        return None
    ordered = sorted(past)
    half = len(ordered) // 2
    median = ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2
    return {"seconds": round(median, 3), "basis": f"median of {len(past)} earlier real run{'s' * (len(past) > 1)}"}


def estimate(playbook: Playbook, report: dict[str, Any], now: datetime) -> None:
    """Downtime = what runs between maintenance on and off (all of it when the playbook has none)."""
    run = [p for p in report["plan"] if p["phase"] == "run"]
    has_maint = any(p["type"] == "maintenance" for p in run)
    inside = not has_maint
    downtime = 0.0
    for p in run:
        mode = p["params"].get("mode")
        if p["type"] == "maintenance" and mode == "on":
            inside = True
        if inside:
            downtime += p.get("seconds") or 0.0
            p["in_downtime"] = True
        if p["type"] == "maintenance" and mode == "off":
            inside = False
    report["estimated_downtime_s"] = round(downtime, 2)
    # steps nobody measured: counted as 0 s and named, not padded with a guess
    report["unknown_steps"] = [p["step"] for p in run if p.get("basis") == "unknown"]
    report["migrate_seconds"] = round(sum(p["seconds"] for p in run if p["type"] == "migrate"
                                          and p.get("measured")), 3)
    report["total_seconds_estimate"] = round(sum(p.get("seconds") or 0 for p in run), 2)
    w = playbook.window
    if w is None:
        report["window"] = {"fits": True, "detail": "the playbook sets no window"}
        return
    start, end = w.clock("start"), w.clock("end")
    s = (start.hour * 60 + start.minute) * 60 if start else 0
    e = (end.hour * 60 + end.minute) * 60 if end else 86400
    length = e - s if e > s else e + 86400 - s
    ok = downtime <= length
    n = len(report["unknown_steps"])
    unknown = f" plus {n} step{'s' * (n != 1)} of unknown duration" if n else ""
    report["window"] = {"fits": ok, "length_s": length, "now": fits(w, now, downtime)[1],
                        "detail": f"estimated downtime {downtime:.0f}s{unknown} {'fits' if ok else 'does NOT fit'} "
                                  f"the {length / 3600:.1f} h window"}
    if not ok:
        report["blockers"].append(report["window"]["detail"])


def fidelity(config: Config, playbook: Playbook, manifest: dict[str, Any], report: dict[str, Any],
              engine: str) -> None:
    """Exactly what the rehearsal did not do for real, and why; and how many steps it did."""
    out = report["fidelity"]
    for p in report["plan"]:
        if not p.get("rehearsed"):
            out.append({"step": p["step"], "type": p["type"], "phase": p["phase"],
                        "reason": p.get("reason") or "not run"})
    steps = [p for p in report["plan"]]
    report["counts"] = {"steps": len(steps), "rehearsed": sum(1 for p in steps if p.get("mode") in (
        "rehearsed", "rollback: rehearsed")), "production_read_only": sum(
        1 for p in steps if p.get("mode") == "production, read-only"),
        "not_rehearsed": sum(1 for p in steps if not p.get("rehearsed"))}
    taken = datetime.fromisoformat(manifest["time"])
    taken = taken if taken.tzinfo else taken.replace(tzinfo=UTC)
    age = (datetime.now(UTC) - taken).total_seconds() / 3600
    out.append({"step": None, "type": "data", "reason": f"production changes after snapshot {manifest['id'][:10]} "
                f"({age:.1f} h old) are not in the rehearsal; row counts may differ by those"})
    out.append({"step": None, "type": "load", "reason": "the sandbox has no CRM users: lock waits behind their "
                "traffic are not measured, and it runs with fsync off, so I/O-heavy steps may be faster here"})
    if (report.get("stack") or {}).get("started"):
        out.append({"step": None, "type": "app", "reason": "the copy of the app runs on a private network: calls it "
                    "makes to other services (mail, payment, single sign-on) fail there; its volumes are copies; "
                    "backups and restores go to a scratch repository on this disk, not to the configured one"})
    if engine != "postgresql":
        out.append({"step": None, "type": "locks", "reason": f"locks are only sampled on PostgreSQL, not {engine}"})
