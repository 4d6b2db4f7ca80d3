"""The dry run: rehearse an upgrade on throwaway copies of the database and the application.

The database is restored from the latest verified snapshot into a sandbox; beside it, on
the sandbox's private network, the rehearsal stack starts a copy of the application
(crmops.upgrade.stack). Every step that can act on those copies runs for real
and is timed (migrations, SQL, HTTP checks against the copy, the container swap, the
maintenance commands inside the copy, backup and restore through a scratch repository);
preflight checks run against production, read-only; what can only act on production
stays "not rehearsed", with the reason. Then a failure is injected after the last stage
and the rollback steps run for real on the copies, which must end with the database equal
to its pre-upgrade fingerprint and the old app answering its checks. Nothing in
production changes. The result is journalled (event "rehearsal") so the real run can hold
its downtime forecast against the window and its row changes against what the rehearsal saw.

Kept whole (about 440 lines): it is one walk through the playbook, stage by stage, and
reads best in that order; timing and the forecast live in measure.py and forecast.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crmops.config import Config
from crmops.engines import Fingerprint, open_engine
from crmops.errors import CrmopsError, UpgradeRefused
from crmops.playbooks.actions import describe_error
from crmops.playbooks.dockerswap import current_image, image_present, swap_image
from crmops.playbooks.model import Playbook, Stage, Step
from crmops.playbooks.runjournal import RunJournal
from crmops.playbooks.runner import attempt, step_params, template_context
from crmops.playbooks.steps import StepContext
from crmops.playbooks.template import Pending, TemplateError, render
from crmops.repository import open_repository
from crmops.sandbox import open_sandbox
from crmops.services.restore import ENGINE_OF_FORMAT
from crmops.services.sources import configured_source
from crmops.upgrade.forecast import estimate, expected_seconds, fidelity, step_history
from crmops.upgrade.measure import execute
from crmops.upgrade.rehearsal_steps import Place, scratch_repository, why_not
from crmops.upgrade.rehearsal_steps import executors as rehearsal_executors
from crmops.upgrade.stack import NoStack, RehearsalStack, StackFailed, stack_source, start_stack
from crmops.upgrade.steps import executors
from crmops.upgrade.workflow import load, run_post_checks, secret_scrubber
from crmops.verify.record import is_verified_ok


def pick_snapshot(repo: Any, source: str | None = None) -> tuple[dict[str, Any], bool]:
    """The source's newest verified backup, or its newest at all (the rehearsal's restore then proves it)."""
    from crmops.repository.source import is_safety

    manifests = [m for m in repo.listing().of_source(source) if not is_safety(m)]
    if not manifests:
        from crmops.errors import SnapshotNotFound

        where = f" of {source}" if source else ""
        raise SnapshotNotFound(f"the repository has no backup{where} to rehearse on", hint="run `crmops backup` first")
    for m in reversed(manifests):
        if is_verified_ok(repo, m["id"]):
            return m, True
    return manifests[-1], False


def dry_run(config: Config, paths: list[Any], *, say: Callable[[str], None] = lambda s: None,
            now: datetime | None = None, report_dir: Path | None = None) -> dict[str, Any]:
    """Rehearse the playbook; returns the report (also on failure, attached to the error as .report).

    The report is also written as JSON and HTML to report_dir (default: <state_dir>/rehearsals).
    """
    playbook = load(paths)
    repo = open_repository(config)
    manifest, verified = pick_snapshot(repo, configured_source(config))
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
    estimate(playbook, report, now or datetime.now(UTC))
    failed = [p for p in report["plan"] if p["mode"] == "rehearsed" and p["ok"] is False]
    rollback = report.get("rollback") or {}
    rollback_failed = rollback.get("ok") is False
    journal.record("rehearsal", estimated_downtime_s=report["estimated_downtime_s"],
                   migrate_seconds=report["migrate_seconds"], row_changes=report["row_changes"],
                   steps=[{k: p.get(k) for k in ("step", "phase", "mode", "seconds")} for p in report["plan"]],
                   fits_window=report["window"]["fits"], blockers=report["blockers"],
                   rehearsed_ok=not failed and not rollback_failed, forward_seconds=report.get("forward_seconds"),
                   rollback_seconds=rollback.get("seconds"), counts=report["counts"])
    # a blocker fails the dry run for people reading its history; its measurements stay usable
    result = "failed" if failed or rollback_failed or report["blockers"] else "success"
    journal.record("end", result=result, error=failed[0]["error"] if failed else
                   (f"the rehearsed rollback failed: {_rollback_problem(rollback)}" if rollback_failed else
                    f"the real run would refuse: {report['blockers'][0]}" if report["blockers"] else None))
    report["result"] = result
    report["error"] = next((r["error"] for r in reversed(list(journal.journal.records())) if r["event"] == "end"),
                           None)
    from crmops.upgrade.report import write_reports

    report["reports"] = write_reports(report, report_dir or Path(config.state_dir) / "rehearsals")
    if failed or rollback_failed:
        what = (f"the rehearsal failed at {failed[0]['step']}: {failed[0]['error']}" if failed else
                "the rehearsal's forward run passed")
        undo = (f"; the rehearsed rollback FAILED: {_rollback_problem(rollback)}" if rollback_failed else
                f"; the rehearsed rollback brought it back in {rollback['seconds']:.1f}s "
                f"(database {rollback['database']['detail']}"
                + (f", app {rollback['app']['detail']}" if rollback.get("app") else "") + ")" if rollback else "")
        err = UpgradeRefused(what + undo, hint="the real upgrade would go the same way; nothing in production changed")
        err.report = report  # type: ignore[attr-defined]
        raise err
    if report["blockers"]:
        err = UpgradeRefused(f"the real run would refuse: {report['blockers'][0]}",
                             hint="see the plan; nothing in production changed")
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report


def _rollback_problem(rollback: dict[str, Any]) -> str:
    if not rollback.get("steps_ok", True):
        return "a rollback step failed (see the plan)"
    if not rollback["database"]["ok"]:
        return "the database is not as before: " + rollback["database"]["detail"]
    return "the old app: " + ((rollback.get("app") or {}).get("detail") or "?")


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
        with contextlib.ExitStack() as cleanup, scratch_repository(config) as scratch:
            stack, no_stack, copied = _open_stack(config, playbook, sandbox, report, say)
            if stack is not None:
                cleanup.enter_context(stack)
            place = Place(config, sandbox.url, stack, no_stack, scratch, copied)
            walk = _plan(config, playbook, place, journal, report, say, restore_s, manifest)
            after_rows = {n: t.rows for n, t in target.fingerprint().tables.items()}
            rows_before = {n: t.rows for n, t in before.tables.items()}
            report["row_changes"] = {t: after_rows.get(t, 0) - rows_before.get(t, 0)
                                     for t in sorted(set(after_rows) | set(rows_before))
                                     if after_rows.get(t, 0) != rows_before.get(t, 0)}
            if walk.broken is None:
                _rehearse_post_checks(config, playbook, sandbox.url, report, journal)
            _rehearse_rollback(playbook, walk, place, target, before, report, journal, say)
    fidelity(config, playbook, manifest, report, engine)


def _analyze(target: Any) -> None:
    """Planner statistics, as production has them: a fresh restore has none, and plans (and times) differ."""
    if target.name == "postgresql":
        with target.connect() as conn:
            conn.execute("ANALYZE")


def _open_stack(config: Config, playbook: Playbook, sandbox: Any, report: dict[str, Any],
                say: Callable[[str], None]) -> tuple[RehearsalStack | None, str | None, str | None]:
    """The copy of the app beside the sandbox, or None and why (steps that need it are then not rehearsed)."""
    if not hasattr(sandbox, "client"):
        reason = "the sandbox is not a Docker container (SQLite): there is no private network to start a copy on"
        report["stack"] = {"started": False, "reason": reason}
        return None, reason, None
    try:
        kind, what = stack_source(playbook)
        stack = start_stack(sandbox.client, sandbox.name, sandbox.url, config.database.url, playbook,
                            {k: v for k, v in sandbox._labels().items() if k != "crmops.database"})
    except NoStack as e:
        report["stack"] = {"started": False, "reason": str(e)}
        say(f"no copy of the app: {e}")
        return None, str(e), None
    except StackFailed as e:
        report["stack"] = {"started": False, "reason": str(e)}
        report["blockers"].append(str(e))
        return None, str(e), None
    report["stack"] = {"started": True, **stack.describe()}
    say(f"copy of the app {stack.name} ({stack.source}) answers at {stack.base_url()} for "
        f"{', '.join(stack.prod_prefixes)}; private network {sandbox.name}")
    return stack, None, what if kind == "container" else None


@dataclass
class Walk:
    """What the forward rehearsal left: the template context, the stages that started, the step that failed."""

    context: dict[str, Any]
    started: list[Stage] = field(default_factory=list)
    broken: str | None = None
    rollback_entries: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    passed: set[str] = field(default_factory=set)
    seconds: float = 0.0


def _plan(config: Config, playbook: Playbook, place: Place, journal: RunJournal, report: dict[str, Any],
          say: Callable[[str], None], restore_s: float, manifest: dict[str, Any]) -> Walk:
    """Walk every step in order: rehearse it in place, check it read-only against production, or describe it."""
    execs = rehearsal_executors(place, executors(config))
    ctx = StepContext(run_id=journal.run_id, url=place.sandbox_url, dry_run=True, yes=True, say=say)
    state = journal.state()
    walk = Walk(template_context(playbook, journal.run_id, state.started_at, True, {}))
    context = walk.context
    size = manifest["streams"]["database"]["size"]
    history = step_history(config.state_dir)  # what each unrehearsed step took in earlier real runs
    spec = playbook.rehearsal
    t0 = time.monotonic()
    for stage in playbook.stages:
        if walk.broken is None:
            walk.started.append(stage)
        for phase, steps in (("run", stage.steps), ("rollback", stage.rollback)):
            for step in steps:
                params = step_params(step, context, pending_ok=True)
                entry: dict[str, Any] = {"stage": stage.name, "phase": phase, "step": step.id, "type": step.type,
                                         "params": _shown(params), "ok": None, "error": None}
                if phase == "rollback":
                    entry.update(mode="rollback: not reached", **expected_seconds(step, size, restore_s, history),
                                 measured=False, rehearsed=False, reason="its stage did not start")
                    walk.rollback_entries[(stage.name, step.id or "")] = entry
                    report["plan"].append(entry)
                    continue
                why = why_not(step, params, place)
                if walk.broken is None and why is None:
                    execute(step, params, execs, ctx, entry, say, place.sandbox_url)
                    if step.type == "engine_upgrade" and entry.get("outputs"):  # its findings: the dry run's report
                        entry["report"] = entry["outputs"]
                        # the copy itself, not the target sandbox's start-up, is what production will wait for
                        entry["seconds"] = entry["outputs"].get("seconds") or entry["seconds"]
                        report["warnings"] += [f"{step.id}: {r}" for r in entry["outputs"].get("risks") or []]
                    if entry["ok"]:
                        context["steps"][step.id] = entry.pop("outputs")
                        walk.passed.add(step.id or "")
                    elif step.type == "preflight":
                        report["blockers"].append(entry["error"])
                        context["steps"][step.id] = {o: Pending(f"steps.{step.id}.{o}") for o in step.OUTPUTS}
                    else:
                        entry.pop("outputs", None)
                        walk.broken = step.id
                else:
                    entry["mode"] = "not reached" if walk.broken else "not rehearsed"
                    entry["reason"] = f"after {walk.broken} failed" if walk.broken else why
                    entry.update(expected_seconds(step, size, restore_s, history))
                    entry["measured"] = entry["rehearsed"] = False
                    context["steps"][step.id] = _planned_outputs(step, params, report)
                report["plan"].append(entry)
                journal.record("plan_step", **{k: entry.get(k) for k in ("stage", "phase", "step", "type", "mode",
                                                                         "seconds", "ok", "error", "reason")})
        if spec and spec.swap_after == stage.name and spec.to_image and place.stack and walk.broken is None:
            _swap_copy(place.stack, str(render(spec.to_image, context)), report, say)
    for step in playbook.smoke_tests:
        params = step_params(step, context, pending_ok=True)
        entry = {"stage": None, "phase": "smoke", "step": step.id, "type": step.type, "params": _shown(params),
                 "ok": None, "error": None}
        why = why_not(step, params, place)
        if walk.broken is None and why is None:
            execute(step, params, execs, ctx, entry, say, place.sandbox_url)
            entry.pop("outputs", None)
            if not entry["ok"]:
                walk.broken = step.id
        else:
            entry.update(mode="not reached" if walk.broken else "not rehearsed", measured=False, rehearsed=False,
                         reason=f"after {walk.broken} failed" if walk.broken else why,
                         **expected_seconds(step, size, restore_s, history))
        report["plan"].append(entry)
    walk.seconds = round(time.monotonic() - t0, 2)
    return walk


def _swap_copy(stack: RehearsalStack, image: str, report: dict[str, Any], say: Callable[[str], None]) -> None:
    """The copy to another image where the playbook installs the new version by means the rehearsal cannot run."""
    t0 = time.monotonic()
    # a throwaway copy has nothing to finish gracefully; this stands in for a package install, not a step
    previous, _ = swap_image(stack.name, image, stop_timeout=1, client=stack.client)
    seconds = round(time.monotonic() - t0, 2)
    report["stack"].setdefault("swaps", []).append({"from": previous, "to": image, "seconds": seconds})
    say(f"  the copy now runs {image} (was {previous}, {seconds:.1f}s)")


def _rehearse_rollback(playbook: Playbook, walk: Walk, place: Place, target: Any, before: Fingerprint,
                       report: dict[str, Any], journal: RunJournal, say: Callable[[str], None]) -> None:
    """Undo what the forward rehearsal did, for real, as the real run would after a failure in its last stage.

    Then the database must equal its pre-upgrade fingerprint and the old app must pass the checks it
    passed before the swap (and the health checks that follow the swap).
    """
    why = f"{walk.broken} failed" if walk.broken else "a failure injected after the last stage"
    say(f"rehearsing the rollback ({why})")
    execs = rehearsal_executors(place, executors(place.config))
    ctx = StepContext(run_id=journal.run_id, url=place.sandbox_url, dry_run=True, yes=True, say=say)
    context = walk.context
    spec = playbook.rehearsal
    steps_ok = True
    t0 = time.monotonic()
    for stage in reversed(walk.started):
        if spec and spec.swap_after == stage.name and place.stack and report["stack"].get("swaps"):
            _swap_copy(place.stack, place.stack.image, report, say)
        for step in stage.rollback:
            entry = walk.rollback_entries[(stage.name, step.id or "")]
            try:
                params = step_params(step, context)
            except TemplateError as e:
                entry.update(mode="rollback: skipped", reason=f"nothing to undo ({e})", seconds=0.0)
                continue
            entry["params"] = _shown(params)
            reason = why_not(step, params, place)
            if reason is not None:
                entry.update(mode="rollback: not rehearsed", reason=reason)
                continue
            execute(step, params, execs, ctx, entry, say, place.sandbox_url)
            entry["mode"] = "rollback: rehearsed"
            entry.pop("reason", None)
            outputs = entry.pop("outputs", None)
            if entry["ok"]:
                context["steps"][step.id] = outputs
            else:
                steps_ok = False
    seconds = round(time.monotonic() - t0, 2)
    after = target.fingerprint(method=before.method)
    diffs = before.compare(after)
    database = {"ok": not diffs, "detail": "equal to its pre-upgrade fingerprint" if not diffs else
                f"{len(diffs)} difference(s) from before the upgrade, first: {diffs[0].kind} {diffs[0].name}: "
                f"{diffs[0].reason}"}
    app = _old_app_checks(playbook, walk, place, execs, ctx, say)
    ok = steps_ok and database["ok"] and (app is None or app["ok"])
    report["rollback"] = {"rehearsed": True, "why": why, "seconds": seconds, "ok": ok, "steps_ok": steps_ok,
                          "database": database, "app": app}
    report["forward_seconds"] = walk.seconds
    say(f"rollback rehearsed in {seconds:.1f}s: database {database['detail']}"
        + (f"; app {app['detail']}" if app else ""))
    for entry in walk.rollback_entries.values():
        journal.record("plan_step", **{k: entry.get(k) for k in ("stage", "phase", "step", "type", "mode", "seconds",
                                                                 "ok", "error", "reason")})
    journal.record("rollback_rehearsed", seconds=seconds, ok=ok, database=database, app=app, why=why)


def _old_app_checks(playbook: Playbook, walk: Walk, place: Place, execs: dict[str, Any], ctx: StepContext,
                    say: Callable[[str], None]) -> dict[str, Any] | None:
    """After the rollback: the copy runs its old image again and answers the checks the old app answered."""
    stack = place.stack
    if stack is None:
        return None
    checks: list[dict[str, Any]] = []
    seen_swap = False
    for stage in playbook.stages:
        after_swap = False
        for step in stage.steps:
            if step.type == "docker":
                seen_swap = after_swap = True
                continue
            # the http checks that passed against the old app, and the health checks that follow a swap
            if step.type != "http" or (seen_swap and not after_swap):
                continue
            if not seen_swap and step.id not in walk.passed:
                continue
            params = step_params(step, walk.context, pending_ok=True)
            if why_not(step, params, place) is not None:
                continue
            res = attempt(execs["http"], step, params, ctx.fresh(), say)
            checks.append({"step": step.id, "ok": res.result.ok, "seconds": res.seconds,
                           "detail": res.result.error or res.result.summary})
    image = stack.image_now()
    ok = image == stack.image and all(c["ok"] for c in checks)
    bad = next((c for c in checks if not c["ok"]), None)
    detail = (f"runs {image} again" + (f" and passes {', '.join(c['step'] for c in checks)}" if checks else "")
              if ok else f"runs {image} (expected {stack.image})" if image != stack.image
              else f"{bad['step']} fails: {bad['detail']}" if bad else "")
    return {"ok": ok, "image": image, "expected_image": stack.image, "checks": checks, "detail": detail}


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
