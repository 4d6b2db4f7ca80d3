"""What a step executor receives and returns, and the shared plumbing of running one.

Executors are plain callables chosen by step type. The core ones (shell, http, sql,
docker, pause, maintenance) live in this package; the ones that need crmops services
(backup, verify, migrate, restore, preflight) are built by crmops.upgrade.workflow and
passed in, so this package never imports the service layer.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from crmops.playbooks.model import Step

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class StepResult:
    ok: bool
    outputs: dict[str, Any] = field(default_factory=dict)
    #: one short line for people and the journal (never a secret)
    summary: str = ""
    error: str | None = None


@dataclass
class StepContext:
    """Where and how a step runs: the database URL (production, or the dry run's sandbox) and hooks."""

    run_id: str
    url: str
    dry_run: bool = False
    yes: bool = False
    #: asks a person; returns True to go on (pause steps)
    confirm: Callable[[str], bool] | None = None
    say: Callable[[str], None] = lambda line: None
    #: journals what a step knows before it acts (a container's previous image), so a rollback after a
    #: crash in the middle of the step still knows what to go back to
    progress: Callable[[dict[str, Any]], None] = lambda outputs: None
    #: set when the runner gives up on the step (timeout, Ctrl-C): long work should stop
    cancelled: threading.Event = field(default_factory=threading.Event)
    _cancel_hooks: list[Callable[[], None]] = field(default_factory=list)

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """Register how to interrupt the work in flight (kill a process, cancel a query)."""
        self._cancel_hooks.append(hook)

    def cancel(self) -> None:
        self.cancelled.set()
        for hook in list(self._cancel_hooks):
            try:
                hook()
            except Exception:  # best effort: the runner stops waiting anyway
                pass

    def fresh(self) -> StepContext:
        """A copy for the next step (or attempt), with no cancellation pending."""
        return StepContext(self.run_id, self.url, self.dry_run, self.yes, self.confirm, self.say, self.progress)


class Executor(Protocol):
    def __call__(self, step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult: ...


class StepFailed(Exception):
    """A step's own failure (bad exit code, wrong status, assertion): the message says what was expected."""


def expand_env(value: str) -> str:
    """${VAR} from crmops's environment, filled at the last moment so the value never reaches the journal."""
    def repl(m: re.Match[str]) -> str:
        if m.group(1) not in os.environ:
            raise StepFailed(f"environment variable ${{{m.group(1)}}} is not set")
        return os.environ[m.group(1)]
    return _ENV_REF.sub(repl, value)


def tail(text: str, lines: int = 3, chars: int = 400) -> str:
    """The last few lines of output: enough to see why, short enough for a journal line."""
    kept = "\n".join(text.strip().splitlines()[-lines:])
    return kept[-chars:]


def jsonable(value: Any) -> Any:
    """A database value as plain JSON data (decimals, dates and bytes as text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
