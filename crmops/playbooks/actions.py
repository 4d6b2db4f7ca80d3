"""The core step executors: shell, http, sql, pause and maintenance.

Each enforces its own timeout where the work happens (a process group killed, a socket
timeout, a server-side statement timeout), so a hung step cannot outlive the runner's
decision to roll back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import sqlalchemy as sa

from crmops.engines.connect import connect_engine
from crmops.errors import CrmopsError, db_said
from crmops.playbooks.model import HttpStep, MaintenanceStep, PauseStep, ShellStep, SqlStep, Step
from crmops.playbooks.steps import StepContext, StepFailed, StepResult, expand_env, jsonable, tail


def run_shell(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
    """Run a command (a string goes through sh -c) and compare its exit code with expect_exit."""
    assert isinstance(step, ShellStep | MaintenanceStep)
    command = params["command"]
    argv = ["sh", "-c", command] if isinstance(command, str) else [str(a) for a in command]
    env = dict(os.environ)
    env.update({k: expand_env(str(v)) for k, v in (params.get("env") or {}).items()})
    env["CRMOPS_RUN_ID"] = ctx.run_id
    timeout = float(params.get("timeout") or 300)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=params.get("cwd") or None, env=env, start_new_session=True, text=True,
                            errors="replace")

    def kill() -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                continue

    ctx.on_cancel(kill)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill()
        out, _ = proc.communicate()
        raise StepFailed(f"timed out after {timeout:g}s; last output: {tail(out or '', 1) or '(none)'}") from None
    want = int(params.get("expect_exit", 0))
    outputs = {"exit_code": proc.returncode, "stdout": tail(out or "", 20, 2000)}
    if proc.returncode != want:
        return StepResult(False, outputs, f"exit {proc.returncode}",
                          f"exit code {proc.returncode}, expected {want}; "
                          f"last output: {tail(out or '', 2) or '(none)'}")
    return StepResult(True, outputs, f"exit {proc.returncode}" + (f": {tail(out, 1, 160)}" if out.strip() else ""))


def run_http(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
    """One request; the status must be one of expect_status and the body contain expect_body."""
    assert isinstance(step, HttpStep | MaintenanceStep)
    headers = {k: expand_env(str(v)) for k, v in (params.get("headers") or {}).items()}
    data = params["body"].encode() if params.get("body") is not None else None
    request = urllib.request.Request(params["url"], data=data, method=params.get("method", "GET"), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=float(params.get("timeout") or 10)) as resp:
            status, body = resp.status, resp.read(65536).decode(errors="replace")
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read(65536).decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise StepFailed(f"{params.get('method', 'GET')} {params['url']}: no answer ({reason})") from None
    outputs = {"status": status, "body": body[:2000]}
    expected = params.get("expect_status", 200)
    want = [int(expected)] if isinstance(expected, int | str) else [int(x) for x in expected]
    if status not in want:
        return StepResult(False, outputs, f"HTTP {status}",
                          f"HTTP {status} from {params['url']}, expected {' or '.join(map(str, want))}")
    expect_body = params.get("expect_body")
    if expect_body is not None and str(expect_body) not in body:
        return StepResult(False, outputs, f"HTTP {status}", f"the response does not contain {expect_body!r}")
    return StepResult(True, outputs, f"HTTP {status}")


def run_sql(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
    """Run a statement in one transaction; with expect:, the first value must equal it (an assertion)."""
    assert isinstance(step, SqlStep)
    engine = connect_engine(ctx.url)
    timeout = float(params.get("timeout") or 300)
    try:
        with engine.begin() as conn:
            dialect = conn.dialect.name
            if dialect == "postgresql":
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout * 1000)}")
                raw = conn.connection.dbapi_connection
                ctx.on_cancel(lambda: raw.cancel())  # type: ignore[union-attr]
            elif dialect == "mysql":
                conn.exec_driver_sql(f"SET SESSION max_statement_time = {timeout:g}")
            result = conn.execute(sa.text(params["sql"]))
            value = jsonable(result.first()[0]) if result.returns_rows and result.keys() else None
            rowcount = result.rowcount if not result.returns_rows else None
    except sa.exc.DBAPIError as e:
        first = db_said(e.orig)
        raise StepFailed(f"the statement failed: {first}") from None
    finally:
        engine.dispose()
    outputs = {"value": value, "rowcount": rowcount}
    if "expect" in params and params["expect"] is not None:
        want = params["expect"]
        if str(value) != str(want):
            return StepResult(False, outputs, f"value {value!r}", f"assertion failed: got {value!r}, expected {want!r}")
        return StepResult(True, outputs, f"assertion holds ({value!r})")
    return StepResult(True, outputs, f"{rowcount} rows" if rowcount is not None else f"value {value!r}")


def run_pause(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
    """A person confirms before the upgrade goes on; --yes confirms in advance (and says so)."""
    assert isinstance(step, PauseStep)
    if ctx.yes:
        return StepResult(True, {}, "confirmed in advance by --yes")
    if ctx.confirm is None:
        raise StepFailed(f"pause {params.get('message')!r} needs a person at a terminal (or --yes)")
    started = time.monotonic()
    if not ctx.confirm(params.get("message") or "continue?"):
        raise StepFailed("the operator declined to continue")
    return StepResult(True, {}, f"confirmed after {time.monotonic() - started:.0f}s")


def run_maintenance(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
    """Maintenance mode on or off, by the shell command or HTTP request the playbook gives."""
    assert isinstance(step, MaintenanceStep)
    inner = params.get("shell") or params.get("http") or {}
    inner = {"timeout": params.get("timeout"), **inner}
    run = run_shell if step.shell is not None else run_http
    result = run(step, inner, ctx)
    result.outputs = {"mode": params["mode"]}
    result.summary = f"maintenance {params['mode']}: {result.summary}"
    return result


CORE_EXECUTORS = {"shell": run_shell, "http": run_http, "sql": run_sql, "pause": run_pause,
                  "maintenance": run_maintenance}


def describe_error(e: BaseException) -> str:
    """One line for the journal: a crmops error's line, a step failure's message, else the type and text."""
    if isinstance(e, CrmopsError):
        return e.line()
    if isinstance(e, StepFailed):
        return str(e)
    return f"{type(e).__name__}: {e}"
