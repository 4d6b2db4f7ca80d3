"""Staged upgrades: run a playbook for real, resume or roll back a crashed run, list past runs.

The playbook runner (crmops.playbooks) does the stepping and the journal; this module
supplies what only the service layer knows: the executors, the checkpoint snapshots,
the post-checks against the target revision and the rehearsal, and the refusals that
keep an upgrade from starting when it should not (another run unfinished, outside the
window, an estimate that does not fit).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crmops.config import Config
from crmops.dburl import parse
from crmops.engines import open_engine
from crmops.errors import CrmopsError, UpgradeRefused
from crmops.playbooks.load import chain, load_playbook
from crmops.playbooks.lock import upgrade_lock
from crmops.playbooks.model import Playbook, Stage
from crmops.playbooks.runjournal import RunJournal, RunState, read_runs, unfinished_runs, upgrades_dir
from crmops.playbooks.runner import Runner
from crmops.playbooks.steps import StepContext
from crmops.playbooks.template import render
from crmops.playbooks.window import fits
from crmops.upgrade.forecast import real_run_forecast
from crmops.upgrade.steps import executors


def load(paths: list[str | Path]) -> Playbook:
    """One playbook, or several chained through their intermediate versions."""
    if not paths:
        raise UpgradeRefused("name a playbook file (e.g. playbooks/democrm-1-to-2.yaml)")
    return chain([load_playbook(p) for p in paths])


def check(paths: list[str | Path]) -> dict[str, Any]:
    """Validation only: structure, step types, templates. Nothing is contacted."""
    pb = load(paths)
    return {"ok": True, "playbook": pb.name, "source": pb.source, "digest": pb.digest,
            "from_version": pb.from_version, "to_version": pb.to_version,
            "stages": [{"name": s.name, "steps": [f"{x.id} ({x.type})" for x in s.steps],
                        "rollback": [f"{x.id} ({x.type})" for x in s.rollback], "checkpoint": s.checkpoint}
                       for s in pb.stages],
            "smoke_tests": [f"{x.id} ({x.type})" for x in pb.smoke_tests]}


def secret_scrubber(config: Config, playbook: Playbook | None = None) -> Callable[[str], str]:
    """Replaces every secret crmops knows in journal text: database password, passphrase, S3 keys, and
    the values of the ${VAR}s the playbook reads from the environment (tokens in headers or env)."""
    secrets = [parse(config.database.url).password, config.encryption.resolved_passphrase()]
    if playbook is not None:
        texts = [step.model_dump_json() for _, _, step in playbook.all_steps()]
        texts += [playbook.rehearsal.model_dump_json()] if playbook.rehearsal else []  # the copy's env: tokens
        names = {m for text in texts for m in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)}
        secrets += [os.environ.get(n) for n in sorted(names)]
    s3 = config.repository.s3
    secrets += [v.get_secret_value() for v in (s3.access_key_id, s3.secret_access_key) if v is not None]
    known = [s for s in secrets if s and len(s) >= 4]

    def scrub(text: str) -> str:
        for s in known:
            text = text.replace(s, "********")
        return text
    return scrub


def latest_rehearsal(config: Config, digest: str) -> dict[str, Any] | None:
    """The newest dry run of exactly this playbook text whose rehearsed steps all passed, or None."""
    for st in reversed(read_runs(config.state_dir)):
        if st.dry_run and st.digest == digest and st.rehearsal and st.rehearsal.get("rehearsed_ok"):
            return {**st.rehearsal, "run_id": st.run_id}
    return None


def row_counts(url: str) -> dict[str, int]:
    return {name: t.rows for name, t in open_engine(url).fingerprint().tables.items()}


def upgrade(config: Config, paths: list[str | Path], *, yes: bool = False, ignore_window: bool = False,
            confirm: Callable[[str], bool] | None = None, say: Callable[[str], None] = lambda s: None,
            now: datetime | None = None) -> dict[str, Any]:
    """Run the upgrade for real; UpgradeFailed (after a rollback) carries the report as .report."""
    playbook = load(paths)
    with upgrade_lock(upgrades_dir(config.state_dir)):
        left = unfinished_runs(config.state_dir)
        if left:
            raise UpgradeRefused(f"upgrade {left[-1].run_id} did not finish",
                                 hint="`crmops upgrade --resume` finishes it, `crmops upgrade --rollback` undoes it")
        rehearsal = latest_rehearsal(config, playbook.digest)
        # without a rehearsal: the dry run's sources (expected_seconds, earlier real runs, a probe), never a guess
        forecast = None if rehearsal else real_run_forecast(config, playbook)
        estimate = rehearsal["estimated_downtime_s"] if rehearsal else forecast["estimated_downtime_s"]
        if forecast and forecast["unknown_steps"]:
            say(f"downtime forecast {estimate:.1f}s plus {len(forecast['unknown_steps'])} step(s) of unknown "
                f"duration ({', '.join(str(s) for s in forecast['unknown_steps'])}): run --dry-run to measure them")
        ok, reason = fits(playbook.window, now or datetime.now(UTC), estimate)
        if not ok and not ignore_window:
            raise UpgradeRefused(f"{playbook.source}: {reason}", hint="wait for the window, or --ignore-window")
        baseline = row_counts(config.database.url)  # before the journal: an unreachable database starts nothing
        journal = RunJournal.create(
            config.state_dir, playbook=playbook.source, from_version=playbook.from_version,
            to_version=playbook.to_version, dry_run=False, scrub=secret_scrubber(config, playbook),
            playbooks=[str(p) for p in paths], digest=playbook.digest,
            rehearsal=rehearsal["run_id"] if rehearsal else None, estimated_downtime_s=estimate,
            forecast=forecast["steps"] if forecast else None,
            window=reason if ok else f"ignored: {reason}")
        say(f"upgrade {journal.run_id}: {playbook.name} ({playbook.from_version} -> {playbook.to_version}); "
            f"journal {journal.path}")
        journal.record("baseline", rows=baseline)
        return _drive(config, playbook, journal, yes=yes, confirm=confirm, say=say, resume=False)


def _drive(config: Config, playbook: Playbook, journal: RunJournal, *, yes: bool,
           confirm: Callable[[str], bool] | None, say: Callable[[str], None], resume: bool) -> dict[str, Any]:
    runner = _runner(config, playbook, journal, yes=yes, confirm=confirm, say=say)
    try:
        runner.run()
    except CrmopsError as e:
        e.report = run_report(journal.state(), journal)  # type: ignore[attr-defined]
        raise
    return run_report(journal.state(), journal)


def _runner(config: Config, playbook: Playbook, journal: RunJournal, *, yes: bool,
            confirm: Callable[[str], bool] | None, say: Callable[[str], None]) -> Runner:
    state = journal.state()
    scrub = secret_scrubber(config, playbook)

    def say_scrubbed(line: str) -> None:  # step output may echo a token: the terminal gets none either
        say(scrub(line))

    ctx = StepContext(run_id=state.run_id, url=config.database.url, yes=yes, confirm=confirm, say=say_scrubbed)

    def checkpoint(stage: Stage) -> str:
        from crmops.services.backup import backup

        return backup(config, tags=["checkpoint", f"version:{stage.checkpoint}", f"upgrade:{state.run_id}"]
                      ).snapshot_id

    def post_checks(context: dict[str, Any]) -> list[dict[str, Any]]:
        return run_post_checks(config, playbook, journal.state(), context)

    return Runner(playbook, journal, executors(config), ctx, checkpoint=checkpoint, post_checks=post_checks,
                  say=say_scrubbed)


def run_post_checks(config: Config, playbook: Playbook, state: RunState, context: dict[str, Any],
                    *, url: str | None = None) -> list[dict[str, Any]]:
    """Schema at the target revision with no drift; row changes like the rehearsal's."""
    url = url or config.database.url
    out: list[dict[str, Any]] = []
    target = playbook.migrate_target()
    if target is not None and playbook.post_checks.drift:
        out.append(schema_check(config, str(render(target, context)), url))
    if playbook.post_checks.row_counts:
        out.append(rows_check(config, playbook, state, row_counts(url)))
    return out


def schema_check(config: Config, target: str, url: str) -> dict[str, Any]:
    from crmops.services.migrate import drift, status

    st = status(config, url=url)
    current = st["current"]
    heads = st.get("heads") or []
    if target == "head" and len(heads) == 1:
        target = heads[0]
    if current != target:
        return {"name": "schema", "ok": False, "detail": f"the database is at {current}, expected {target}"}
    differences = drift(config, url=url)
    diffs = differences.get("differences", differences) if isinstance(differences, dict) else differences
    if diffs:
        first = diffs[0]
        return {"name": "schema", "ok": False, "detail": f"at {current} but the schema drifted: {len(diffs)} "
                f"difference(s), first: {first}"}
    return {"name": "schema", "ok": True, "detail": f"at {current}, no drift"}


def rows_check(config: Config, playbook: Playbook, state: RunState, after: dict[str, int]) -> dict[str, Any]:
    """Each table's row change must be the rehearsal's, within the playbook's tolerance."""
    rehearsal = next((st.rehearsal for st in read_runs(config.state_dir) if st.run_id == state.rehearsal_run), None)
    before = state.rows_before or {}
    actual = {t: after.get(t, 0) - before.get(t, 0) for t in sorted(set(before) | set(after))}
    if rehearsal is None:
        return {"name": "row_counts", "ok": True, "changes": actual,
                "detail": "no rehearsal of this playbook to compare with (run --dry-run first); changes recorded"}
    expected = rehearsal.get("row_changes") or {}
    pc = playbook.post_checks
    bad = []
    for table in sorted(set(actual) | set(expected)):
        a, e = actual.get(table, 0), expected.get(table, 0)
        allowed = max(pc.row_tolerance_rows, abs(e) * pc.row_tolerance_percent / 100)
        if abs(a - e) > allowed:
            bad.append(f"{table}: {a:+d} rows, the rehearsal saw {e:+d}")
    if bad:
        return {"name": "row_counts", "ok": False, "changes": actual,
                "detail": "; ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")}
    return {"name": "row_counts", "ok": True, "changes": actual,
            "detail": f"row changes match the rehearsal {state.rehearsal_run} in {len(actual)} tables"}


def _unfinished(config: Config, run_id: str | None) -> tuple[RunJournal, RunState, Playbook]:
    """The crashed run to resume or roll back: its journal, what it says, and its unchanged playbook."""
    runs = unfinished_runs(config.state_dir)
    if run_id:
        runs = [r for r in read_runs(config.state_dir) if r.run_id.startswith(run_id) and not r.dry_run]
        if not runs:
            raise UpgradeRefused(f"no upgrade run {run_id!r}", hint="`crmops upgrade history` lists them")
        if runs[-1].finished:
            raise UpgradeRefused(f"upgrade {runs[-1].run_id} already ended ({runs[-1].result})")
    if not runs:
        raise UpgradeRefused("no unfinished upgrade to resume or roll back",
                             hint="`crmops upgrade history` lists past runs")
    state = RunJournal(runs[-1].path).state()
    playbook = _same_playbook(state)
    return RunJournal(runs[-1].path, secret_scrubber(config, playbook)), state, playbook


def resume(config: Config, *, run_id: str | None = None, yes: bool = False,
           confirm: Callable[[str], bool] | None = None, say: Callable[[str], None] = lambda s: None
           ) -> dict[str, Any]:
    """Continue a crashed run after the last step that ended well (the interrupted step runs again)."""
    with upgrade_lock(upgrades_dir(config.state_dir)):
        journal, state, playbook = _unfinished(config, run_id)
        if state.rolling_back:
            raise UpgradeRefused(f"upgrade {state.run_id} stopped while rolling back; it cannot go forward",
                                 hint="`crmops upgrade --rollback` finishes the rollback")
        journal.record("resume", interrupted=state.interrupted_steps, stages_done=state.stages_done)
        say(f"resuming upgrade {state.run_id} after {', '.join(state.stages_done) or 'no finished stage'}")
        return _drive(config, playbook, journal, yes=yes, confirm=confirm, say=say, resume=True)


def rollback(config: Config, *, run_id: str | None = None, say: Callable[[str], None] = lambda s: None
             ) -> dict[str, Any]:
    """Undo what a crashed run's journal says ran: rollback steps of every started stage, newest first."""
    with upgrade_lock(upgrades_dir(config.state_dir)):
        journal, state, playbook = _unfinished(config, run_id)
        say(f"rolling back upgrade {state.run_id}: stages {', '.join(state.stages_started) or 'none'} started")
        runner = _runner(config, playbook, journal, yes=True, confirm=None, say=say)
        started = time.monotonic()
        ok = runner.rollback("`crmops upgrade --rollback` after the run stopped "
                             f"(interrupted: {', '.join(state.interrupted_steps) or 'nothing'})")
        report = run_report(journal.state(), journal)
        report["rollback_seconds"] = round(time.monotonic() - started, 2)
        if not ok:
            from crmops.errors import UpgradeFailed

            err = UpgradeFailed(f"the rollback of {state.run_id} did not complete", hint=f"journal: {journal.path}")
            err.report = report  # type: ignore[attr-defined]
            raise err
        return report


def _same_playbook(state: RunState) -> Playbook:
    """The playbook the run started with; refused if its file changed since (steps would not line up)."""
    playbook = load(state.playbooks)
    if playbook.digest != state.digest:
        raise UpgradeRefused(f"{state.playbook} changed since upgrade {state.run_id} started",
                             hint="put the playbook back as it was (the journal records its digest)")
    return playbook


def run_report(state: RunState, journal: RunJournal | None = None) -> dict[str, Any]:
    """A run as people and scripts read it: outcome, every step with its time, rollback and checks."""
    records = list((journal or RunJournal(state.path)).journal.records())
    steps, checks = [], []
    for r in records:
        if r["event"] == "step_end":
            steps.append({k: r.get(k) for k in ("stage", "step", "type", "phase", "ok", "seconds", "summary",
                                                "error")})
        elif r["event"] == "step_skipped":
            steps.append({"stage": r.get("stage"), "step": r.get("step"), "phase": r.get("phase"), "ok": True,
                          "seconds": 0, "summary": "skipped: " + r.get("reason", "")})
        elif r["event"] == "postcheck":
            checks.append({k: r.get(k) for k in ("name", "ok", "detail")})
    rollback_s = _span(records, "rollback_start", "rollback_end")
    return {**state.summary(), "steps": steps, "post_checks": checks, "checkpoints": state.checkpoints,
            "rollback_seconds": rollback_s, "seconds": _span(records, "start", "end")}


def _span(records: list[dict[str, Any]], first: str, last: str) -> float | None:
    a = next((r["ts"] for r in records if r["event"] == first), None)
    b = next((r["ts"] for r in reversed(records) if r["event"] == last), None)
    if not a or not b:
        return None
    return round((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds(), 3)


def history(config: Config, *, limit: int = 20) -> list[dict[str, Any]]:
    """Past runs, newest first, from the journals."""
    return [s.summary() for s in reversed(read_runs(config.state_dir))][:limit]


__all__ = ["check", "history", "load", "resume", "rollback", "run_report", "upgrade"]
