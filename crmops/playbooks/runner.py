"""Run a playbook's stages in order; on any failure, Ctrl-C or SIGTERM undo what ran, in reverse.

Every step's start and end is journalled (fsynced) before the runner moves on, so after
a crash the journal says exactly which stages started: `--resume` continues after the
last step that ended well, `--rollback` runs the rollback steps of every stage that
started. A stage that failed half-way is rolled back too: its rollback steps must cope
with a partial stage (a rollback step that needs an output the stage never produced is
skipped, and the journal says so).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from crmops.errors import Interrupted, UpgradeFailed
from crmops.playbooks.actions import describe_error
from crmops.playbooks.model import Playbook, Stage, Step
from crmops.playbooks.runjournal import RunJournal, RunState
from crmops.playbooks.steps import Executor, StepContext, StepResult
from crmops.playbooks.template import TemplateError, render

#: how long a cancelled step gets to stop before the runner goes on without it
CANCEL_GRACE_S = 30.0


@dataclass
class Attempt:
    result: StepResult
    seconds: float
    attempts: int


class _Failure(Exception):
    def __init__(self, stage: str | None, step: str | None, error: str) -> None:
        super().__init__(error)
        self.stage, self.step, self.error = stage, step, error


def template_context(playbook: Playbook, run_id: str, started_at: str, dry_run: bool,
                     outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"vars": dict(playbook.vars), "steps": outputs,
            "run": {"id": run_id, "started_at": started_at, "dry_run": dry_run},
            "playbook": {"name": playbook.name, "from_version": playbook.from_version,
                         "to_version": playbook.to_version}}


def step_params(step: Step, context: dict[str, Any], *, pending_ok: bool = False) -> dict[str, Any]:
    """The step's fields with templates filled in (a dry run leaves unknown results as <pending>)."""
    raw = step.model_dump(mode="json", exclude={"name", "expected_seconds"})
    return render(raw, context, pending_ok=pending_ok)


def attempt(executor: Executor, step: Step, params: dict[str, Any], ctx: StepContext,
            say: Callable[[str], None] = lambda s: None) -> Attempt:
    """Run one step with its timeout and retries; a Ctrl-C cancels it and propagates."""
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        result = _once(executor, step, params, ctx.fresh() if tries > 1 else ctx)
        if result.ok or tries > step.retries:
            return Attempt(result, round(time.monotonic() - started, 3), tries)
        say(f"  {step.id}: {result.error}; retry {tries}/{step.retries} in {step.retry_delay:g}s")
        time.sleep(step.retry_delay)


def _once(executor: Executor, step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = executor(step, params, ctx)
        except BaseException as e:  # handed to the waiting thread
            box["error"] = e

    thread = threading.Thread(target=work, name=f"step-{step.id}", daemon=True)
    thread.start()
    deadline = time.monotonic() + step.timeout
    try:
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(0.1)
    except KeyboardInterrupt:
        ctx.cancel()
        thread.join(CANCEL_GRACE_S)
        raise
    if thread.is_alive():
        ctx.cancel()
        thread.join(CANCEL_GRACE_S)
        return StepResult(False, {}, "timed out", f"timed out after {step.timeout:g}s"
                          + ("" if not thread.is_alive() else " (it did not stop when cancelled)"))
    if "error" in box:
        e = box["error"]
        return StepResult(False, {}, "failed", describe_error(e))
    return box["result"]


@contextmanager
def held_signals(say: Callable[[str], None]) -> Iterator[None]:
    """A rollback is not interrupted by a second Ctrl-C or SIGTERM: stopping half-way would be worse."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, frame: Any) -> None:
        say("a stop request arrived during the rollback: it goes on to the end (SIGKILL, then "
            "`crmops upgrade --rollback`, finishes it later)")

    old = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class Runner:
    """One real run (or its continuation) of a playbook, journalled step by step."""

    def __init__(self, playbook: Playbook, journal: RunJournal, executors: dict[str, Executor], ctx: StepContext,
                 *, checkpoint: Callable[[Stage], str] | None = None,
                 post_checks: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
                 say: Callable[[str], None] = lambda s: None) -> None:
        self.playbook = playbook
        self.journal = journal
        self.executors = executors
        self.ctx = ctx
        self.checkpoint = checkpoint
        self.post_checks = post_checks
        self.say = say

    # -- running ---------------------------------------------------------------------

    def run(self) -> RunState:
        """Run (or continue) the upgrade; UpgradeFailed or Interrupted after a rollback."""
        state = self.journal.state()
        context = template_context(self.playbook, state.run_id, state.started_at, False, dict(state.outputs))
        try:
            for stage in self.playbook.stages:
                if stage.name in state.stages_done:
                    continue
                self._stage(stage, state, context)
            self._after(context)
        except _Failure as f:
            self.journal.record("failure", stage=f.stage, step=f.step, error=f.error)
            self.say(f"FAILED {f.stage or 'post-checks'}/{f.step or ''}: {f.error}")
            ok = self.rollback(f"{f.step or f.stage or 'post-check'} failed: {f.error}")
            raise UpgradeFailed(f"upgrade {state.run_id}: {f.step or f.stage} failed ({f.error}); "
                                + ("rolled back" if ok else "ROLLBACK INCOMPLETE, see the journal"),
                                hint=f"journal: {self.journal.path}") from None
        except KeyboardInterrupt:
            self.journal.record("interrupted", error="stopped by Ctrl-C or SIGTERM")
            self.say("stopped: rolling back what ran")
            ok = self.rollback("stopped by Ctrl-C or SIGTERM")
            raise Interrupted("upgrade stopped by Ctrl-C or SIGTERM; " + ("rolled back" if ok else
                              "ROLLBACK INCOMPLETE, see the journal"),
                              hint=f"journal: {self.journal.path}") from None
        self.journal.record("end", result="success")
        return self.journal.state()

    def _stage(self, stage: Stage, state: RunState, context: dict[str, Any]) -> None:
        self.journal.record("stage_start", stage=stage.name)
        self.say(f"stage {stage.name}")
        for step in stage.steps:
            if step.id in context["steps"]:
                continue  # ended well before a crash: --resume does not repeat it
            outputs = self.run_step(stage.name, "run", step, context)
            context["steps"][step.id] = outputs
        self.journal.record("stage_end", stage=stage.name, ok=True)
        if stage.checkpoint and self.checkpoint is not None:
            try:
                snapshot = self.checkpoint(stage)
            except Exception as e:
                raise _Failure(stage.name, None, f"checkpoint snapshot failed: {describe_error(e)}") from None
            self.journal.record("checkpoint", stage=stage.name, version=stage.checkpoint, snapshot_id=snapshot)
            self.say(f"  checkpoint at {stage.checkpoint}: snapshot {snapshot[:10]}")

    def run_step(self, stage: str | None, phase: str, step: Step, context: dict[str, Any]) -> dict[str, Any]:
        try:
            params = step_params(step, context)
        except TemplateError as e:
            raise _Failure(stage, step.id, str(e)) from None
        self.journal.record("step_start", stage=stage, step=step.id, type=step.type, phase=phase,
                            params=_visible(params))
        ctx = self.ctx.fresh()
        ctx.progress = lambda outputs: self.journal.record("step_progress", stage=stage, step=step.id,
                                                           phase=phase, outputs=outputs)
        result = attempt(self.executors[step.type], step, params, ctx, self.say)
        self.journal.record("step_end", stage=stage, step=step.id, type=step.type, phase=phase,
                            ok=result.result.ok, seconds=result.seconds, attempts=result.attempts,
                            summary=result.result.summary, outputs=result.result.outputs, error=result.result.error)
        self.say(f"  {'ok  ' if result.result.ok else 'FAIL'} {step.id} ({step.type}, {result.seconds:.1f}s): "
                 f"{result.result.error or result.result.summary}")
        if not result.result.ok:
            raise _Failure(stage, step.id, result.result.error or result.result.summary)
        return result.result.outputs

    def _after(self, context: dict[str, Any]) -> None:
        """Post-checks (schema, row counts) then the playbook's smoke tests; any failure rolls back."""
        if self.post_checks is not None:
            for check in self.post_checks(context):
                self.journal.record("postcheck", **check)
                self.say(f"  {'ok  ' if check['ok'] else 'FAIL'} post-check {check['name']}: {check['detail']}")
                if not check["ok"]:
                    raise _Failure(None, f"post-check {check['name']}", check["detail"])
        for step in self.playbook.smoke_tests:
            context["steps"][step.id] = self.run_step(None, "smoke", step, context)

    # -- rolling back ------------------------------------------------------------------

    def stages_to_undo(self, state: RunState) -> list[Stage]:
        """Stages that started and are not yet undone, newest first; back to a checkpoint if the playbook says."""
        started = [s for s in self.playbook.stages if s.name in state.stages_started]
        if self.playbook.on_failure == "rollback_to_checkpoint" and state.checkpoints:
            last = state.checkpoints[-1]["stage"]
            names = [s.name for s in self.playbook.stages]
            started = [s for s in started if names.index(s.name) > names.index(last)]
        return [s for s in reversed(started) if s.name not in state.stages_rolled_back]

    def rollback(self, reason: str) -> bool:
        """Run the rollback steps of every started stage in reverse; record the end; True if all went well."""
        state = self.journal.state()
        stages = self.stages_to_undo(state)
        # what a step noted before a crash (or failure) counts here: there may be something to undo
        known = {sid: {**state.partial_outputs.get(sid, {}), **outs} for sid, outs in state.outputs.items()}
        known.update({sid: outs for sid, outs in state.partial_outputs.items() if sid not in known})
        context = template_context(self.playbook, state.run_id, state.started_at, False, known)
        self.journal.record("rollback_start", reason=reason, stages=[s.name for s in stages])
        all_ok = True
        with held_signals(self.say):
            for stage in stages:
                self.say(f"rolling back stage {stage.name}")
                stage_ok = True
                for step in stage.rollback:
                    try:
                        params = step_params(step, context)
                    except TemplateError as e:
                        self.journal.record("step_skipped", stage=stage.name, step=step.id, phase="rollback",
                                            reason=f"needs a result the stage never produced: {e}")
                        self.say(f"  skip {step.id}: nothing to undo ({e})")
                        continue
                    self.journal.record("step_start", stage=stage.name, step=step.id, type=step.type,
                                        phase="rollback", params=_visible(params))
                    res = attempt(self.executors[step.type], step, params, self.ctx.fresh(), self.say)
                    self.journal.record("step_end", stage=stage.name, step=step.id, type=step.type, phase="rollback",
                                        ok=res.result.ok, seconds=res.seconds, attempts=res.attempts,
                                        summary=res.result.summary, outputs=res.result.outputs,
                                        error=res.result.error)
                    self.say(f"  {'ok  ' if res.result.ok else 'FAIL'} {step.id} ({step.type}, {res.seconds:.1f}s): "
                             f"{res.result.error or res.result.summary}")
                    if res.result.ok:
                        context["steps"][step.id] = res.result.outputs
                    else:
                        stage_ok = all_ok = False
                if stage_ok:
                    self.journal.record("stage_rolled_back", stage=stage.name)
            to = state.checkpoints[-1]["version"] if (self.playbook.on_failure == "rollback_to_checkpoint"
                                                      and state.checkpoints) else self.playbook.from_version
            self.journal.record("rollback_end", ok=all_ok, version=to)
            self.journal.record("end", result="rolled-back" if all_ok else "failed", error=reason, version=to)
        return all_ok


def _visible(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters worth journalling (the step's identity fields are recorded separately)."""
    return {k: v for k, v in params.items() if k not in ("id", "type", "retry_delay") and v not in (None, [], {})}
