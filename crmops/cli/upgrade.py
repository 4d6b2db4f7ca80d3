"""`crmops upgrade`: run, rehearse, check, resume or roll back a playbook; `upgrade history` lists runs."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click

from crmops.cli.context import AppContext, pass_app
from crmops.errors import CrmopsError


def _print_wrapped(console: Any, text: str, indent: str = "", hang: str = "  ") -> None:
    """A long line wrapped to the terminal under a hanging indent, so 80 columns read cleanly."""
    import textwrap

    width = max(40, console.width)
    for line in text.splitlines() or [""]:
        console.print(textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent + hang,
                                    break_on_hyphens=False) or indent, markup=False)


def _wrapping_say(app: AppContext) -> Any:
    """The run's narration wrapped to the terminal, each step's detail hanging under its name."""
    import shutil
    import textwrap

    def say(message: str) -> None:
        width = max(40, shutil.get_terminal_size().columns)
        lines = []
        for line in message.splitlines() or [""]:
            indent = " " * (len(line) - len(line.lstrip(" ")))
            lines.append(textwrap.fill(line.strip(" "), width, initial_indent=indent,
                                       subsequent_indent=indent + "     ", break_on_hyphens=False) or line)
        app.say("\n".join(lines))
    return say


def _plan_lines(console: Any, report: dict[str, Any]) -> None:
    """Each stage, then one line per step: step, type, seconds, how it was handled; then its outcome or values."""
    console.print("plan:")
    expected = False
    rows = []
    for p in report["plan"]:  # two lines a step, so 80 columns hold it: what and how long, then the detail
        secs = " unknown " if p.get("basis") == "unknown" else \
            f"{p['seconds']:7.2f}s" + (" " if p.get("measured") else "*")
        expected = expected or not p.get("measured")
        status = "" if p["ok"] is None else ("ok" if p["ok"] else f"FAILED: {p['error']}")
        step = p["step"] + (" (rollback)" if p["phase"] == "rollback" and "rollback" not in p["mode"] else "")
        detail = status if status.startswith("FAILED") else (
            p.get("summary") or (f"{p['reason']}" if p.get("reason") else _params_line(p["params"])))
        rows.append((p["stage"] or "smoke", step, p["type"], secs, p["mode"], detail))
    # a reason many steps share (e.g. "after X failed", "touches production") is written once, below
    reasons = [p["reason"] for p in report["plan"] if p.get("reason") and not p.get("summary")]
    shared = {r: f"reason {chr(ord('a') + i)}" for i, r in enumerate(dict.fromkeys(
        r for r in reasons if reasons.count(r) > 1)) if i < 26}
    rows = [(*r[:5], f"({shared[r[5]]})" if r[5] in shared else r[5]) for r in rows]
    # the stage heads its steps, and columns are as wide as their longest value, so that
    # "maintenance-rollback-1  engine_upgrade" keeps its row in line and inside 80 columns
    w = [max((len(r[i]) for r in rows), default=0) for i in range(1, 3)]
    shown = None
    for stage, step, kind, secs, mode, detail in rows:
        if stage != shown:
            console.print(f"  {stage}", markup=False)
            shown = stage
        _print_wrapped(console, f"{step:<{w[0]}} {kind:<{w[1]}} {secs} {mode}", "    ", "    ")
        if detail:
            _print_wrapped(console, detail, "        ")
    for text, key in shared.items():
        _print_wrapped(console, f"{key}: {text}", "  ", "    ")
    if expected:
        console.print("  * expected time: not rehearsed; from the playbook, earlier real runs or the database's "
                      "size (unknown: none of these, counted as 0 s)", markup=False)


def _params_line(params: dict[str, Any]) -> str:
    keys = ("check", "to", "sql", "command", "url", "container", "image", "snapshot", "tags", "mode", "message")
    return ", ".join(f"{k}={params[k]}" for k in keys if k in params)[:90]


def _dry_human(report: dict[str, Any]) -> Any:
    from rich.markup import escape

    def human(console: Any) -> None:
        _plan_lines(console, report)
        r = report.get("restore") or {}
        _print_wrapped(console, f"snapshot {report['snapshot']['id'][:10]} restored in {r.get('seconds', 0):.1f}s: "
                                f"{r.get('detail', '')}")
        for p in report["plan"]:
            for lock in p.get("locks") or []:
                console.print(f"  {p['step']} locks {lock['table']} {lock['strongest']} ~{lock['held_s']}s"
                              + (f", waited {lock['waited_s']}s" if lock["waited_s"] else ""))
        if report.get("row_changes"):
            console.print("row changes: " + ", ".join(f"{t} {d:+d}" for t, d in report["row_changes"].items()))
        _print_wrapped(console, f"migrations: {report.get('migrate_seconds', 0):.2f}s measured (median of the timed "
                                f"runs); {report.get('window', {}).get('detail', '')}")
        for w in report["warnings"]:
            console.print(f"[yellow]warning[/yellow] {escape(w)}", soft_wrap=False)
        for b in report["blockers"]:
            console.print(f"[red]blocker[/red] {escape(b)}", soft_wrap=False)
        stack = report.get("stack") or {}
        if stack.get("started"):
            _print_wrapped(console, f"copy of the app: {stack['app']} from {stack['source']} on private network "
                                    f"{stack['network']}, answering for {', '.join(stack['answers_for'])}"
                                    + (f"; database settings pointed at the sandbox: "
                                       f"{', '.join(stack['env_rewritten'])}" if stack.get("env_rewritten") else ""))
        elif stack:
            _print_wrapped(console, f"no copy of the app: {stack.get('reason')}")
        rb = report.get("rollback") or {}
        if rb:
            _print_wrapped(console, f"forward run {report.get('forward_seconds') or 0:.1f}s; rollback ({rb['why']}) "
                                    f"{rb['seconds']:.1f}s: {'ok' if rb['ok'] else 'FAILED'}; database "
                                    f"{rb['database']['detail']}"
                                    + (f"; app {rb['app']['detail']}" if rb.get("app") else ""))
        counts = report.get("counts") or {}
        if counts:
            _print_wrapped(console, f"rehearsed {counts['rehearsed']} of {counts['steps']} steps, "
                                    f"{counts['production_read_only']} checked against production read-only, "
                                    f"{counts['not_rehearsed']} not rehearsed; downtime forecast "
                                    f"{report.get('estimated_downtime_s', 0):.1f}s")
        console.print("not rehearsed for real:")
        for f in report["fidelity"]:
            _print_wrapped(console, f"- {f['step'] or f['type']}: {f['reason']}", "  ")
        if report.get("reports"):
            _print_wrapped(console, f"report: {report['reports']['html']} (and .json)")
    return human


def _check_human(out: dict[str, Any]) -> Any:
    """A valid playbook in one line; an invalid one as every mistake, each with its file and line."""
    def human(console: Any) -> None:
        if "mistakes" in out:
            for m in out["mistakes"]:
                _print_wrapped(console, m)
            return
        console.print(f"{out['source']}: valid ({out['from_version']} -> {out['to_version']}, "
                      f"{len(out['stages'])} stages)", markup=False)
    return human


def _run_human(report: dict[str, Any]) -> Any:
    def human(console: Any) -> None:
        for c in report.get("post_checks") or []:
            console.print(f"post-check {c['name']}: {'ok' if c['ok'] else 'FAILED'}: {c['detail']}")
        tail = f"; rollback took {report['rollback_seconds']:.1f}s" if report.get("rollback_seconds") else ""
        console.print(f"upgrade {report['run_id']}: {report['result']} in {report.get('seconds') or 0:.1f}s{tail} "
                      f"(journal {report['journal']})")
    return human


def _history_human(runs: list[dict[str, Any]]) -> Any:
    def human(console: Any) -> None:
        if not runs:
            console.print("no upgrade runs yet")
        for r in runs:
            failed = f"  at {r['failed_step']}: {r['error']}" if r["failed_step"] else ""
            console.print(f"{r['run_id']}  {'dry run' if r['dry_run'] else 'upgrade':<7}  "
                          f"{(r['started_at'] or '')[:19].replace('T', ' ')}  {r['result']:<11}  "
                          f"{Path(r['playbook'] or '?').name} ({r['from_version']} -> {r['to_version']}){failed}",
                          markup=False)
    return human


def _confirm(message: str) -> bool:
    return click.confirm(f"pause: {message}", default=False)


def _asker() -> Any:
    """How pause steps ask: at a terminal only (cron and scripts need --yes)."""
    return _confirm if sys.stdin.isatty() else None


@click.command("upgrade", context_settings={"ignore_unknown_options": False})
@click.argument("playbooks", nargs=-1, metavar="PLAYBOOK... | history")
@click.option("--dry-run", is_flag=True, help="Rehearse on a sandbox restored from the latest verified snapshot and a "
              "copy of the app beside it, rollback included; production is only read.")
@click.option("--check", "check_only", is_flag=True, help="Only validate the playbook(s); contact nothing.")
@click.option("--resume", is_flag=True, help="Continue the unfinished (crashed) run where its journal stops.")
@click.option("--rollback", is_flag=True, help="Undo what the unfinished run's journal says ran.")
@click.option("--run", "run_id", metavar="RUN_ID", help="With --resume/--rollback: which run (default: the "
              "unfinished one).")
@click.option("--yes", "-y", is_flag=True, help="Confirm every pause step in advance.")
@click.option("--ignore-window", is_flag=True, help="Run outside the window or past the estimate (you decide).")
@click.option("--limit", default=20, show_default=True, help="With history: how many runs.")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="With --dry-run: where its JSON and HTML reports go (default: <state_dir>/rehearsals).")
@pass_app
def upgrade_cmd(app: AppContext, playbooks: tuple[str, ...], dry_run: bool, check_only: bool, resume: bool,
                rollback: bool, run_id: str | None, yes: bool, ignore_window: bool, limit: int,
                report_dir: Path | None) -> None:
    """Run a staged upgrade PLAYBOOK with rollback, or rehearse, check, resume or roll one back.

    `upgrade PLAYBOOK [--dry-run|--check]`, `upgrade --resume|--rollback`, `upgrade history`.
    Several PLAYBOOKs chain through intermediate versions (a checkpoint at each hop)."""
    from crmops.upgrade import workflow as svc

    modes = [m for m, on in (("--dry-run", dry_run), ("--check", check_only), ("--resume", resume),
                             ("--rollback", rollback)) if on]
    if len(modes) > 1:
        raise click.UsageError(f"{' and '.join(modes)} cannot be combined")
    if playbooks == ("history",) and not Path("history").exists():
        runs = svc.history(app.config, limit=limit)
        app.emit(runs, _history_human(runs))
        return
    say = _wrapping_say(app)
    if resume or rollback:
        if playbooks:
            raise click.UsageError("--resume and --rollback take the playbook from the run's journal; "
                                   "name no PLAYBOOK (use --run RUN_ID to choose a run)")
        if resume:
            _reporting(app, lambda: svc.resume(app.config, run_id=run_id, yes=yes, confirm=_asker(), say=say),
                       _run_human)
        else:
            _reporting(app, lambda: svc.rollback(app.config, run_id=run_id, say=say), _run_human)
        return
    if not playbooks:
        raise click.UsageError("name a PLAYBOOK, or use --resume, --rollback or `upgrade history`")
    if report_dir is not None and not dry_run:
        raise click.UsageError("--report-dir goes with --dry-run (a real run's record is its journal)")
    paths: list[str | Path] = list(playbooks)
    if check_only:
        _reporting(app, lambda: svc.check(paths), _check_human)
        return
    if dry_run:
        from crmops.upgrade.rehearsal import dry_run as rehearse

        _reporting(app, lambda: rehearse(app.config, paths, say=say, report_dir=report_dir), _dry_human)
        return
    _reporting(app, lambda: svc.upgrade(app.config, paths, yes=yes, ignore_window=ignore_window, confirm=_asker(),
                                        say=say), _run_human)


def _reporting(app: AppContext, work: Any, human: Any) -> None:
    """Print the report whether the run succeeded or not; failures then end with their one line and code.

    With --json, stdout carries the JSON document only: whatever a library prints on the way
    (Alembic prints revisions) goes to stderr.
    """
    try:
        with contextlib.redirect_stdout(sys.stderr) if app.json else contextlib.nullcontext():
            report = work()
    except CrmopsError as e:
        report = getattr(e, "report", None)
        if report is not None:  # an invalid playbook's report is its list of mistakes, whatever the mode
            app.emit(report, (_check_human if "mistakes" in report else human)(report))
        raise
    app.emit(report, human(report))
