"""The dry run: rehearse an upgrade on a sandbox restored from the latest verified snapshot.

migrate and sql steps (and SQL smoke tests) run for real in the sandbox and are timed,
with PostgreSQL lock sampling and per-table row changes; preflight checks run against
production, read-only; every other step is shown as it would run, templates filled in.
Nothing in production changes. The result is journalled (event "rehearsal") so the real
run can hold its downtime estimate against the window and its row changes against
what the rehearsal saw.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from crmops.config import Config
from crmops.dburl import engine_kind, parse
from crmops.engines import Fingerprint, open_engine
from crmops.errors import CrmopsError, UpgradeFailed, UpgradeRefused
from crmops.playbooks.actions import describe_error
from crmops.playbooks.dockerswap import current_image, image_present
from crmops.playbooks.model import Playbook, Step
from crmops.playbooks.runjournal import RunJournal
from crmops.playbooks.runner import attempt, step_params, template_context
from crmops.playbooks.steps import StepContext
from crmops.playbooks.template import Pending, render
from crmops.playbooks.window import fits
from crmops.repository import open_repository
from crmops.sandbox import open_sandbox
from crmops.services.restore import ENGINE_OF_FORMAT
from crmops.services.upgrade import load, run_post_checks, secret_scrubber
from crmops.services.upgrade_steps import executors
from crmops.services.verify_record import is_verified_ok

NOT_REHEARSED = {
    "shell": "runs a command on this host that may change anything: not run",
    "http": "a request may have side effects, and production endpoints do not point at the sandbox: not sent",
    "docker": "swaps a production container: not done (the current image was read)",
    "backup": "writes a snapshot of production: not taken (expected time from the latest snapshot's size)",
    "verify": "not run (the rehearsal's own restore, compared with the snapshot's fingerprint, proves it)",
    "restore": "overwrites production: not done (expected time from the rehearsal's restore)",
    "pause": "waits for a person: not asked",
    "maintenance": "switches production's maintenance mode: not done",
}
#: extra timed runs of each migration on copies of the sandbox database, and up to which size
EXTRA_REHEARSALS = 2
COPY_LIMIT_BYTES = 2_000_000_000
#: PostgreSQL lock modes, weakest first
LOCK_MODES = ["AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
              "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"]


def pick_snapshot(repo: Any) -> tuple[dict[str, Any], bool]:
    """The newest verified snapshot, or the newest at all (the rehearsal's restore then proves it)."""
    manifests = repo.manifests()
    if not manifests:
        from crmops.errors import SnapshotNotFound

        raise SnapshotNotFound("the repository has no snapshots to rehearse on", hint="run `crmops backup` first")
    for m in reversed(manifests):
        if is_verified_ok(repo, m["id"]):
            return m, True
    return manifests[-1], False


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


def dry_run(config: Config, paths: list[Any], *, say: Callable[[str], None] = lambda s: None,
            now: datetime | None = None) -> dict[str, Any]:
    """Rehearse the playbook; returns the report (also on failure, attached to the error as .report)."""
    playbook = load(paths)
    repo = open_repository(config)
    manifest, verified = pick_snapshot(repo)
    journal = RunJournal.create(config.state_dir, playbook=playbook.source, from_version=playbook.from_version,
                                to_version=playbook.to_version, dry_run=True, scrub=secret_scrubber(config, playbook),
                                playbooks=[str(p) for p in paths], digest=playbook.digest,
                                snapshot_id=manifest["id"])
    say(f"dry run {journal.run_id}: {playbook.name}; rehearsing on snapshot {manifest['id'][:10]} "
        f"({'verified' if verified else 'not yet verified: this restore proves it'})")
    report: dict[str, Any] = {"run_id": journal.run_id, "dry_run": True, "playbook": playbook.name,
                              "source": playbook.source, "from_version": playbook.from_version,
                              "to_version": playbook.to_version, "snapshot": {
                                  "id": manifest["id"], "time": manifest["time"], "verified": verified},
                              "plan": [], "warnings": [], "blockers": [], "fidelity": [], "journal": str(journal.path)}
    try:
        _rehearse(config, playbook, repo, manifest, journal, report, say)
    except BaseException as e:
        journal.record("end", result="failed", error=describe_error(e))
        raise
    _estimate(playbook, report, now or datetime.now(UTC))
    failed = [p for p in report["plan"] if p["mode"] == "rehearsed" and p["ok"] is False]
    journal.record("rehearsal", estimated_downtime_s=report["estimated_downtime_s"],
                   migrate_seconds=report["migrate_seconds"], row_changes=report["row_changes"],
                   steps=[{k: p.get(k) for k in ("step", "mode", "seconds")} for p in report["plan"]],
                   fits_window=report["window"]["fits"], blockers=report["blockers"], rehearsed_ok=not failed)
    # a blocker fails the dry run for people reading its history; its measurements stay usable
    result = "failed" if failed or report["blockers"] else "success"
    journal.record("end", result=result, error=failed[0]["error"] if failed else
                   (f"the real run would refuse: {report['blockers'][0]}" if report["blockers"] else None))
    report["result"] = result
    if failed:
        err = UpgradeFailed(f"the rehearsal failed at {failed[0]['step']}: {failed[0]['error']}",
                            hint="the real upgrade would fail the same way; nothing in production changed")
        err.report = report  # type: ignore[attr-defined]
        raise err
    if report["blockers"]:
        err = UpgradeRefused(f"the real run would refuse: {report['blockers'][0]}",
                             hint="see the plan; nothing in production changed")
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report


def _rehearse(config: Config, playbook: Playbook, repo: Any, manifest: dict[str, Any], journal: RunJournal,
              report: dict[str, Any], say: Callable[[str], None]) -> None:
    stream = manifest["streams"]["database"]
    engine = ENGINE_OF_FORMAT.get(stream["format"], "unknown")
    sandbox = open_sandbox(config.verify, engine, manifest.get("server_version") or "",
                           database=manifest.get("database"))
    with sandbox:
        say(f"sandbox {sandbox.name} ready ({sandbox.image or engine})")
        target = open_engine(sandbox.url, config.database.model_copy(update={"restore_owners": False}))
        t0 = time.monotonic()
        target.restore(repo.read_stream(manifest), format=stream["format"])
        restore_s = round(time.monotonic() - t0, 2)
        _analyze(target)
        expected = Fingerprint.from_dict(manifest["fingerprint"])
        before = target.fingerprint(method=expected.method)
        diffs = expected.compare(before)
        report["restore"] = {"seconds": restore_s, "proven": not diffs,
                             "detail": "restored copy matches the snapshot's fingerprint" if not diffs else
                             f"{len(diffs)} difference(s), first: {diffs[0].kind} {diffs[0].name}: {diffs[0].reason}"}
        journal.record("restore_rehearsed", snapshot_id=manifest["id"], seconds=restore_s, proven=not diffs)
        say(f"restored in {restore_s:.1f}s; {report['restore']['detail']}")
        if diffs:
            report["blockers"].append(f"snapshot {manifest['id'][:10]} does not restore faithfully")
        run_steps = _plan(config, playbook, sandbox.url, journal, report, say, restore_s, manifest)
        after_rows = {n: t.rows for n, t in target.fingerprint().tables.items()}
        rows_before = {n: t.rows for n, t in before.tables.items()}
        report["row_changes"] = {t: after_rows.get(t, 0) - rows_before.get(t, 0)
                                 for t in sorted(set(after_rows) | set(rows_before))
                                 if after_rows.get(t, 0) != rows_before.get(t, 0)}
        if run_steps:
            _rehearse_post_checks(config, playbook, sandbox.url, report, journal)
    _fidelity(config, playbook, manifest, report, engine)


def _analyze(target: Any) -> None:
    """Planner statistics, as production has them: a fresh restore has none, and plans (and times) differ."""
    if target.name == "postgresql":
        with target.connect() as conn:
            conn.execute("ANALYZE")


def _plan(config: Config, playbook: Playbook, sandbox_url: str, journal: RunJournal, report: dict[str, Any],
          say: Callable[[str], None], restore_s: float, manifest: dict[str, Any]) -> bool:
    """Walk every step in order: rehearse, check read-only, or describe. False once a rehearsed step failed."""
    execs = executors(config)
    ctx = StepContext(run_id=journal.run_id, url=sandbox_url, dry_run=True, yes=True, say=say)
    state = journal.state()
    context = template_context(playbook, journal.run_id, state.started_at, True, {})
    broken: str | None = None
    size = manifest["streams"]["database"]["size"]
    for stage in playbook.stages:
        for phase, steps in (("run", stage.steps), ("rollback", stage.rollback)):
            for step in steps:
                params = step_params(step, context, pending_ok=True)
                entry: dict[str, Any] = {"stage": stage.name, "phase": phase, "step": step.id, "type": step.type,
                                         "params": _shown(params), "ok": None, "error": None}
                if phase == "run" and broken is None and step.type in ("migrate", "sql", "preflight", "engine_upgrade"):
                    _execute(step, params, execs, ctx, entry, say, sandbox_url)
                    if step.type == "engine_upgrade" and entry.get("outputs"):  # its findings: the dry run's report
                        entry["report"] = entry["outputs"]
                        # the copy itself, not the target sandbox's start-up, is what production will wait for
                        entry["seconds"] = entry["outputs"].get("seconds") or entry["seconds"]
                    if entry["ok"]:
                        context["steps"][step.id] = entry.pop("outputs")
                    elif step.type == "preflight":
                        report["blockers"].append(entry["error"])
                        context["steps"][step.id] = {o: Pending(f"steps.{step.id}.{o}") for o in step.OUTPUTS}
                    else:
                        broken = step.id
                else:
                    entry["mode"] = "not reached" if (broken and phase == "run") else \
                        "rollback (not rehearsed)" if phase == "rollback" else "planned"
                    entry["seconds"] = _expected(step, size, restore_s)
                    entry["measured"] = False
                    if phase == "run":
                        context["steps"][step.id] = _planned_outputs(step, params, report)
                report["plan"].append(entry)
                journal.record("plan_step", **{k: entry.get(k) for k in ("stage", "phase", "step", "type", "mode",
                                                                         "seconds", "ok", "error")})
    for step in playbook.smoke_tests:
        params = step_params(step, context, pending_ok=True)
        entry = {"stage": None, "phase": "smoke", "step": step.id, "type": step.type, "params": _shown(params),
                 "ok": None, "error": None}
        if step.type == "sql" and broken is None:
            _execute(step, params, execs, ctx, entry, say, sandbox_url)
            entry.pop("outputs", None)
        else:
            entry.update(mode="planned", seconds=_expected(step, size, restore_s), measured=False)
        report["plan"].append(entry)
    return broken is None


def _execute(step: Step, params: dict[str, Any], execs: dict[str, Any], ctx: StepContext, entry: dict[str, Any],
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


def _planned_outputs(step: Step, params: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    outputs: dict[str, Any] = {o: Pending(f"steps.{step.id}.{o}") for o in step.OUTPUTS}
    if step.type == "docker":
        try:
            now = current_image(str(params["container"]))
            if now is None:
                report["blockers"].append(f"{step.id}: no container named {params['container']!r}")
            else:
                outputs["previous_image"] = now
            if not image_present(str(params["image"])):
                report["blockers"].append(f"{step.id}: image {params['image']} is not present locally")
        except CrmopsError as e:
            report["warnings"].append(f"{step.id}: could not inspect Docker ({e.line()})")
        outputs["image"] = params["image"]
    return outputs


def _expected(step: Step, size: int, restore_s: float) -> float:
    if step.expected_seconds is not None:
        return step.expected_seconds
    if step.type == "backup":
        return round(2 + size / 100e6, 1)  # the dump runs at ~100 MB/s here (DESIGN.md)
    if step.type in ("restore", "verify"):
        return restore_s + 2
    return step.TYPICAL_SECONDS


def _shown(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Pending) else v) for k, v in params.items()
            if k not in ("id", "type", "retry_delay") and v not in (None, [], {})}


def _rehearse_post_checks(config: Config, playbook: Playbook, url: str, report: dict[str, Any],
                          journal: RunJournal) -> None:
    """The schema post-check, on the sandbox: a migration that leaves drift is caught tonight."""
    t0 = time.monotonic()
    try:
        checks = [c for c in run_post_checks(config, playbook.model_copy(update={
            "post_checks": playbook.post_checks.model_copy(update={"row_counts": False})}),
            journal.state(), {"vars": playbook.vars, "steps": {}}, url=url)]
    except CrmopsError as e:
        checks = [{"name": "schema", "ok": False, "detail": e.line()}]
    report["post_checks"] = checks
    report["post_checks_seconds"] = round(time.monotonic() - t0, 2)
    for c in checks:
        if not c["ok"]:
            report["warnings"].append(f"post-check {c['name']} would fail: {c['detail']}")
    target = playbook.migrate_target()
    if target is not None:
        try:
            from crmops.services.migrate import lint

            findings = lint(config, url=url, to=str(render(target, {"vars": playbook.vars})))
            items = findings.get("findings", findings) if isinstance(findings, dict) else findings
            for f in items or []:
                report["warnings"].append(f"migrate lint: {f.get('message', f) if isinstance(f, dict) else f}")
        except CrmopsError as e:
            report["warnings"].append(f"migrate lint: {e.line()}")


def _estimate(playbook: Playbook, report: dict[str, Any], now: datetime) -> None:
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
    report["window"] = {"fits": ok, "length_s": length, "now": fits(w, now, downtime)[1],
                        "detail": f"estimated downtime {downtime:.0f}s {'fits' if ok else 'does NOT fit'} the "
                                  f"{length / 3600:.1f} h window"}
    if not ok:
        report["blockers"].append(report["window"]["detail"])


def _fidelity(config: Config, playbook: Playbook, manifest: dict[str, Any], report: dict[str, Any],
              engine: str) -> None:
    """Exactly what the rehearsal did not do for real, and why."""
    out = report["fidelity"]
    for p in report["plan"]:
        if p["phase"] == "run" and p.get("mode") == "planned":
            out.append({"step": p["step"], "type": p["type"], "reason": NOT_REHEARSED.get(p["type"], "not run")})
        elif p["phase"] == "rollback":
            out.append({"step": p["step"], "type": p["type"], "reason": "rollback steps are listed, not rehearsed"})
        elif p["phase"] == "smoke" and p.get("mode") == "planned":
            out.append({"step": p["step"], "type": p["type"], "reason": NOT_REHEARSED.get(p["type"], "not run")})
    taken = datetime.fromisoformat(manifest["time"])
    taken = taken if taken.tzinfo else taken.replace(tzinfo=UTC)
    age = (datetime.now(UTC) - taken).total_seconds() / 3600
    out.append({"step": None, "type": "data", "reason": f"production changes after snapshot {manifest['id'][:10]} "
                f"({age:.1f} h old) are not in the rehearsal; row counts may differ by those"})
    out.append({"step": None, "type": "load", "reason": "the sandbox has no CRM users: lock waits behind their "
                "traffic are not measured, and it runs with fsync off, so I/O-heavy steps may be faster here"})
    if engine != "postgresql":
        out.append({"step": None, "type": "locks", "reason": f"locks are only sampled on PostgreSQL, not {engine}"})
