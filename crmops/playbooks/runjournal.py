"""One upgrade run's journal: records written as it goes, and the state read back from them.

The journal lives in state_dir/upgrades/<run id>.jsonl, outside the database, so the
restore that undoes an upgrade cannot erase the record of it; `--resume`,
`--rollback`, `upgrade history` and `crmops report` all read it. The first record is
"start" (run_id, playbook, from_version, to_version, dry_run), the last "end" (result:
success | rolled-back | failed).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crmops.errors import CrmopsError, without_values
from crmops.journal import Journal, actor

RESULTS = ("success", "rolled-back", "failed")


def upgrades_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "upgrades"


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


class RunJournal:
    """Appends a run's records, each fsynced, with secrets scrubbed from every text field."""

    def __init__(self, path: Path, scrub: Callable[[str], str] | None = None) -> None:
        self.journal = Journal(path)
        self.run_id = path.stem
        self._scrub = scrub or (lambda s: s)

    @classmethod
    def create(cls, state_dir: Path, *, playbook: str, from_version: str, to_version: str, dry_run: bool,
               scrub: Callable[[str], str] | None = None, **extra: Any) -> RunJournal:
        run_id = new_run_id()
        rj = cls(upgrades_dir(state_dir) / f"{run_id}.jsonl", scrub)
        rj.record("start", run_id=run_id, playbook=playbook, from_version=from_version, to_version=to_version,
                  dry_run=dry_run, actor=actor(), pid=os.getpid(), **extra)
        return rj

    @property
    def path(self) -> Path:
        return self.journal.path

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        return self.journal.append(event, **self._clean(fields))

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):  # secrets, and the row values a failed statement may echo
            return without_values(self._scrub(value))
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        return value

    def state(self) -> RunState:
        return RunState.replay(list(self.journal.records()), self.path)


@dataclass
class RunState:
    """What a journal says happened: enough to resume, roll back or list a run."""

    path: Path
    run_id: str = ""
    playbook: str = ""
    playbooks: list[str] = field(default_factory=list)
    digest: str = ""
    from_version: str = ""
    to_version: str = ""
    dry_run: bool = False
    started_at: str = ""
    ended_at: str | None = None
    result: str | None = None
    error: str | None = None
    #: stage names that started, in order
    stages_started: list[str] = field(default_factory=list)
    stages_done: list[str] = field(default_factory=list)
    stages_rolled_back: list[str] = field(default_factory=list)
    #: step id -> outputs, for steps that ended well (run phase)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: what steps noted before acting (step_progress), for rolling back a step that never ended
    partial_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: step ids that started and never ended: what a crash interrupted
    interrupted_steps: list[str] = field(default_factory=list)
    failed_step: str | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    rehearsal: dict[str, Any] | None = None
    #: for a real run: the dry run whose measurements it was checked against
    rehearsal_run: str | None = None
    #: fingerprint row counts per table when the run started (for the post-check)
    rows_before: dict[str, int] | None = None
    #: a rollback started: the run may only be rolled back further, never resumed
    rolling_back: bool = False
    records: int = 0
    last_event: str = ""

    @property
    def finished(self) -> bool:
        return self.result is not None

    @classmethod
    def replay(cls, records: list[dict[str, Any]], path: Path) -> RunState:
        st = cls(path=path, records=len(records))
        open_steps: dict[str, dict[str, Any]] = {}
        for r in records:
            ev = r.get("event")
            st.last_event = ev or ""
            if ev == "start":
                st.run_id = r.get("run_id", "")
                st.playbook = r.get("playbook", "")
                st.playbooks = r.get("playbooks") or [st.playbook]
                st.digest = r.get("digest", "")
                st.from_version, st.to_version = r.get("from_version", ""), r.get("to_version", "")
                st.dry_run = bool(r.get("dry_run"))
                st.started_at = r.get("ts", "")
                st.rehearsal_run = r.get("rehearsal")
            elif ev == "stage_start" and r["stage"] not in st.stages_started:
                st.stages_started.append(r["stage"])
            elif ev == "stage_end" and r.get("ok"):
                st.stages_done.append(r["stage"])
            elif ev == "step_start" and r.get("phase") == "run":
                open_steps[r["step"]] = r
            elif ev == "step_end" and r.get("phase") == "run":
                open_steps.pop(r["step"], None)
                if r.get("ok"):
                    st.outputs[r["step"]] = r.get("outputs") or {}
                else:
                    st.failed_step = r["step"]
            elif ev == "step_progress" and r.get("phase") == "run":
                st.partial_outputs.setdefault(r["step"], {}).update(r.get("outputs") or {})
            elif ev == "rollback_start":
                st.rolling_back = True
            elif ev == "stage_rolled_back":
                st.stages_rolled_back.append(r["stage"])
            elif ev == "checkpoint":
                st.checkpoints.append({k: r.get(k) for k in ("stage", "version", "snapshot_id")})
            elif ev == "rehearsal":
                st.rehearsal = r
            elif ev == "baseline":
                st.rows_before = r.get("rows")
            elif ev == "failure":
                st.error = st.error or r.get("error")
                st.failed_step = r.get("step") or r.get("stage") or st.failed_step
            elif ev == "end":
                st.result = r.get("result")
                st.ended_at = r.get("ts")
                st.error = r.get("error") or st.error
        st.interrupted_steps = list(open_steps)
        return st

    def summary(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "playbook": self.playbook, "from_version": self.from_version,
                "to_version": self.to_version, "dry_run": self.dry_run, "started_at": self.started_at,
                "ended_at": self.ended_at, "result": self.result or "unfinished", "failed_step": self.failed_step,
                "error": self.error, "stages_done": self.stages_done, "stages_rolled_back": self.stages_rolled_back,
                "journal": str(self.path)}


def read_runs(state_dir: Path) -> list[RunState]:
    """Every run's state, oldest first; a damaged journal is listed with its error, not skipped."""
    out = []
    for path in sorted(upgrades_dir(state_dir).glob("*.jsonl")):
        try:
            out.append(RunJournal(path).state())
        except CrmopsError as e:
            st = RunState(path=path, run_id=path.stem, error=e.line(), result="failed")
            out.append(st)
    return sorted(out, key=lambda s: s.started_at or s.run_id)


def unfinished_runs(state_dir: Path) -> list[RunState]:
    """Real runs that started and never ended: a crash left them for --resume or --rollback."""
    return [s for s in read_runs(state_dir) if not s.dry_run and not s.finished]
