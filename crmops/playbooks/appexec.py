"""The app_command step: a command inside the application's container (`docker exec`).

Real CRMs bring their own upgrade tools (Django's `manage.py migrate` and `collectstatic`,
`trytond-admin --all`): they must run with the new version's code, inside its container,
against the database that container is configured for. The output is streamed: every few
seconds the step journals how many lines it has seen and the last one, so a long data
migration shows progress in the journal; the last lines become the step's `stdout` output
(e.g. the app's own migration state from `showmigrations`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from crmops.playbooks.dockerswap import _client
from crmops.playbooks.model import AppCommandStep, Step
from crmops.playbooks.steps import StepContext, StepFailed, StepResult, expand_env, tail

#: seconds between two progress records of a long command
PROGRESS_EVERY = 5.0


def exec_streamed(client: Any, container: str, argv: list[str], *, env: dict[str, str], user: str | None,
                  workdir: str | None, timeout: float, ctx: StepContext, keep_lines: int = 60) -> tuple[int, str]:
    """Run argv in the container, journalling progress; (exit code, the last keep_lines lines)."""
    from docker.errors import APIError, NotFound

    api = client.api
    try:
        exec_id = api.exec_create(container, argv, environment=env, user=user or "", workdir=workdir,
                                  stdout=True, stderr=True)["Id"]
        stream = api.exec_start(exec_id, stream=True, demux=False)
    except NotFound:
        raise StepFailed(f"container {container!r} does not exist") from None
    except APIError as e:
        raise StepFailed(f"docker exec in {container!r} refused: {e.explanation or e}") from None
    lines: deque[str] = deque(maxlen=keep_lines)
    state = {"count": 0, "partial": ""}
    done = threading.Event()

    def pump() -> None:
        try:
            for chunk in stream:
                text = state["partial"] + chunk.decode(errors="replace")
                *whole, state["partial"] = text.split("\n")
                lines.extend(whole)
                state["count"] += len(whole)
        finally:
            done.set()

    threading.Thread(target=pump, daemon=True, name=f"exec-{container}").start()
    start = last = time.monotonic()
    report: Callable[[], None] = lambda: ctx.progress({"lines": state["count"],  # noqa: E731
                                                       "last": (lines[-1] if lines else "")[:200],
                                                       "seconds": round(time.monotonic() - start, 1)})
    while not done.wait(0.2):
        now = time.monotonic()
        if ctx.cancelled.is_set() or now - start > timeout:
            why = "cancelled" if ctx.cancelled.is_set() else f"timed out after {timeout:g}s"
            raise StepFailed(f"{why} in container {container!r} (the command may still run there); "
                             f"last output: {tail(chr(10).join(lines), 1) or '(none)'}")
        if now - last >= PROGRESS_EVERY:
            last = now
            report()
    if state["partial"]:
        lines.append(state["partial"])
    code = None
    for _ in range(50):  # the stream ends a moment before the exec is marked finished
        info = api.exec_inspect(exec_id)
        if not info.get("Running"):
            code = int(info.get("ExitCode") or 0)
            break
        time.sleep(0.1)
    if code is None:
        raise StepFailed(f"the command in {container!r} closed its output but did not end")
    return code, "\n".join(lines)


def argv_of(command: str | list[str]) -> list[str]:
    return ["sh", "-c", command] if isinstance(command, str) else [str(a) for a in command]


def run_in(client: Any, container: str, step: Step, params: dict[str, Any], ctx: StepContext,
           where: str = "") -> StepResult:
    """The step's command in container; the result compares its exit code with expect_exit."""
    assert isinstance(step, AppCommandStep)
    env = {k: expand_env(str(v)) for k, v in (params.get("env") or {}).items()}
    env["CRMOPS_RUN_ID"] = ctx.run_id
    t0 = time.monotonic()
    code, out = exec_streamed(client, container, argv_of(params["command"]), env=env, user=params.get("user"),
                              workdir=params.get("workdir"), timeout=float(params.get("timeout") or 1800), ctx=ctx)
    seconds = round(time.monotonic() - t0, 2)
    want = int(params.get("expect_exit", 0))
    outputs = {"exit_code": code, "stdout": tail(out, 60, 6000), "seconds": seconds}
    if code != want:
        return StepResult(False, outputs, f"exit {code}{where}",
                          f"exit code {code}{where}, expected {want}; last output: {tail(out, 2) or '(none)'}")
    return StepResult(True, outputs, f"exit {code}{where} in {seconds:.1f}s"
                      + (f": {tail(out, 1, 160)}" if out.strip() else ""))


def run_app_command(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
    """The app_command step on production: docker exec in params.container."""
    return run_in(_client(), str(params["container"]), step, params, ctx)
