"""The engine_upgrade playbook step: one executor, the method chosen by the step's parameters.

`logical` (dump and restore into the new server) or `pg_upgrade` (PostgreSQL in place);
both return the same report, turned here into the step's result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crmops.config import Config
from crmops.engine_upgrade.logical import rehearse, upgrade_logical
from crmops.playbooks.steps import StepContext, StepResult, expand_env


def executor(config: Config) -> Callable[[Any, dict[str, Any], StepContext], StepResult]:
    """The engine_upgrade step's executor: the real copy, or (dry run) the rehearsal in a target sandbox."""

    def run(step: Any, params: dict[str, Any], ctx: StepContext) -> StepResult:
        if params.get("method") == "pg_upgrade":
            return _pg_upgrade_step(config, step, params, ctx, _result)
        if ctx.dry_run:
            report = rehearse(config, ctx.url, str(params["target_version"]), smoke=params.get("smoke_sql") or [],
                              say=ctx.say)
        else:
            report = upgrade_logical(config, ctx.url, expand_env(str(params["target_url"])),
                                     str(params["target_version"]), smoke=params.get("smoke_sql") or [], say=ctx.say)
        return _result(report)

    return run


def _result(report: dict[str, Any]) -> StepResult:
    outputs = {k: report.get(k) for k in ("method", "mode", "seconds", "dump_seconds", "restore_seconds", "image",
                                          "check_seconds", "upgrade_seconds", "load_seconds",
                                          "source_version", "target_version", "tables", "differences",
                                          "incompatibilities", "smoke", "tool", "risks") if k in report}
    problems = [f"{i['object']}: {i['error']}" for i in report["incompatibilities"]]
    problems += [_difference_line(d) for d in report["differences"]]
    problems += [f"smoke SQL {s['sql']!r}: {s['error']}" for s in report["smoke"] if not s["ok"]]
    summary = (f"{report['source_version']} -> {report['target_version']} ({report['method']}): "
               f"{report['tables']} tables in {report['seconds']:.1f}s")
    if problems:
        return StepResult(False, outputs, summary, f"{len(problems)} problem(s): " + "; ".join(problems[:5]))
    return StepResult(True, outputs, summary + ", every table's rows match, smoke SQL holds")


def _difference_line(d: dict[str, Any]) -> str:
    cols = f" (columns: {', '.join(d['columns'])})" if d.get("columns") else ""
    return f"{d['kind']} {d['name']}: {d['reason']}{cols}"


def _pg_upgrade_step(config: Config, step: Any, params: dict[str, Any], ctx: StepContext,
             result: Any) -> Any:
    """engine_upgrade with method pg_upgrade: upgrade, rehearse (dry run) or undo (action rollback)."""
    from crmops.engine_upgrade.box import rehearse as rehearse_box
    from crmops.engine_upgrade.pg_upgrade import Layout, undo, upgrade

    smoke = params.get("smoke_sql") or []
    timeout = float(params.get("timeout") or 7200)
    if params.get("action") == "rollback":
        if ctx.dry_run:
            return StepResult(True, {"undone": "nothing"}, "the rehearsal's box is discarded: nothing to undo")
        summary = undo(Layout.from_params(params), ctx.url, config, say=ctx.say)
        return StepResult(True, {"undone": summary}, summary)
    if ctx.dry_run:
        report = rehearse_box(config, ctx.url, str(params["target_version"]), params, smoke=smoke, ctx=ctx,
                          timeout=timeout)
    else:
        target_url = expand_env(str(params["target_url"])) if params.get("target_url") else ctx.url
        report = upgrade(config, ctx.url, target_url, str(params["target_version"]), Layout.from_params(params),
                         smoke=smoke, ctx=ctx, timeout=timeout)
    return result(report)
