"""The crmops command line: a thin skin over crmops.services.

Command groups are imported lazily, so a command's start-up cost (boto3, docker,
alembic) is only paid by the commands that use it, and `crmops --help` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import sys
from typing import Any

import click

from crmops import __version__
from crmops.cli.context import AppContext
from crmops.errors import CrmopsError, Interrupted

#: command name -> "module:attribute"; each module lives in crmops/cli/
COMMANDS: dict[str, str] = {
    "init": "crmops.cli.config_cmd:init_cmd",
    "config": "crmops.cli.config_cmd:config_group",
    "demo": "crmops.cli.demo:demo_group",
    "db": "crmops.cli.db:db_group",
    "repo": "crmops.cli.repo:repo_group",
    "key": "crmops.cli.keys:key_group",
    "backup": "crmops.cli.backup:backup_cmd",
    "snapshots": "crmops.cli.snapshots:snapshots_cmd",
    "restore": "crmops.cli.restore:restore_cmd",
    "forget": "crmops.cli.prune:forget_cmd",
    "prune": "crmops.cli.prune:prune_cmd",
    "check": "crmops.cli.check:check_cmd",
    "verify": "crmops.cli.verify:verify_cmd",
    "drill": "crmops.cli.verify:drill_cmd",
    "sandbox": "crmops.cli.sandbox:sandbox_group",
    "migrate": "crmops.cli.migrate:migrate_group",
    "upgrade": "crmops.cli.upgrade:upgrade_cmd",
    "schedule": "crmops.cli.schedule:schedule_group",
    "report": "crmops.cli.report:report_cmd",
    "status": "crmops.cli.report:status_cmd",
    "wal": "crmops.cli.wal:wal_group",
    "binlog": "crmops.cli.binlog:binlog_group",
    "undo": "crmops.cli.undo:undo_cmd",
    "repair": "crmops.cli.repair:repair_cmd",
    "unlock": "crmops.cli.unlock:unlock_cmd",
    "copy": "crmops.cli.copy:copy_cmd",
}

#: commands that open the repository with its key: their scrypt starts as the configuration is read
KEY_COMMANDS = {"backup", "snapshots", "restore", "forget", "prune", "check", "verify", "drill", "status",
                "undo", "repair", "copy"}

HELP_GROUPS = {
    "Protect": ["backup", "snapshots", "restore", "forget", "prune", "check", "undo", "repair", "unlock", "wal",
                "binlog", "copy"],
    "Prove": ["verify", "drill", "sandbox"],
    "Change": ["migrate", "upgrade"],
    "Operate": ["schedule", "status", "report", "repo", "key", "db"],
    "Set up": ["init", "config", "demo"],
}


class LazyGroup(click.Group):
    """Resolves subcommands from COMMANDS on demand; missing modules are simply not listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        module = COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None or not self._available(name):
            return None
        module, attr = target.split(":")
        return _whole_summaries(getattr(importlib.import_module(module), attr))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        available = set(self.list_commands(ctx))
        for title, names in HELP_GROUPS.items():
            rows = []
            for name in names:
                if name in available:
                    cmd = self.get_command(ctx, name)
                    if cmd is not None and not cmd.hidden:
                        rows.append((name, cmd.get_short_help_str(limit=10_000)))
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _whole_summaries(cmd: click.Command) -> click.Command:
    """Help lists show each command's whole first sentence, wrapped, never cut off with "..."."""
    if cmd.short_help is None and cmd.help:
        cmd.short_help = cmd.get_short_help_str(limit=10_000)
    for sub in getattr(cmd, "commands", {}).values():
        _whole_summaries(sub)
    return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", metavar="FILE", envvar="CRMOPS_CONFIG",
              help="Configuration file (default: $CRMOPS_CONFIG, then ./crmops.yaml, then the demo).")
@click.option("--json", "json_out", is_flag=True, help="Print the result as JSON, for scripts.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors (for cron).")
@click.option("--debug", is_flag=True, envvar="CRMOPS_DEBUG", help="Show tracebacks and debug logs.")
@click.option("--log-format", type=click.Choice(["human", "json"]), default="human", show_default=True,
              help="Log lines as text or as JSON lines.")
@click.version_option(__version__, "--version", prog_name="crmops")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, json_out: bool, quiet: bool, debug: bool,
        log_format: str) -> None:
    """Keep a self-hosted CRM's data safe: encrypted, deduplicated backups, restores proven
    in throwaway containers, Alembic migrations and staged upgrades with rollback."""
    global _APP
    ctx.obj = _APP = AppContext(config_path=config_path, json=json_out, quiet=quiet, debug=debug,
                                log_format=log_format, key_ahead=ctx.invoked_subcommand in KEY_COMMANDS)
    from crmops.log import setup_logging

    setup_logging(debug=debug, fmt=log_format, quiet=quiet or json_out)


_APP: AppContext | None = None


_STOPPED_BY: str | None = None


_STOPPED_SIGNAL: int = signal.SIGINT


def _raise_interrupt(signum: int, frame: Any) -> None:
    global _STOPPED_BY, _STOPPED_SIGNAL
    _STOPPED_BY = signal.Signals(signum).name  # the record and notification say why the job ended
    _STOPPED_SIGNAL = signum
    raise KeyboardInterrupt


def _redeliver_swallowed_stop(args: Any) -> None:
    """A stop that lands in a garbage-collector callback is swallowed there ("Exception ignored"):
    deliver the signal again a moment later, so a SIGTERM or Ctrl-C is never lost."""
    if isinstance(args.exc_value, KeyboardInterrupt):
        import threading

        threading.Timer(0.05, os.kill, (os.getpid(), _STOPPED_SIGNAL)).start()
        return
    sys.__unraisablehook__(args)


def main(argv: list[str] | None = None) -> None:
    """Entry point (see _main); as a process of its own it ends without tearing the interpreter down."""
    try:
        _main(argv)
    except SystemExit as e:
        if argv is None:
            from crmops.cli.leave import leave

            leave(e.code)
        raise


def _main(argv: list[str] | None) -> None:
    """Turn every user-caused failure into one line and its exit code.

    With --json, stdout gets exactly one JSON document whatever the outcome, printed here once
    the exit code is known: the command's result on success; on failure the error envelope
    {"ok": false, "error", "message", "exit_code", "result"} with the result (or null) inside.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    sys.unraisablehook = _redeliver_swallowed_stop
    args = argv if argv is not None else sys.argv[1:]
    debug = "--debug" in args or bool(os.environ.get("CRMOPS_DEBUG"))
    global _JSON_ASKED
    _JSON_ASKED = "--json" in args  # a usage error may come before the option is parsed
    try:
        code = cli.main(args=argv, prog_name="crmops", standalone_mode=False)
    except CrmopsError as e:
        if debug:
            import logging

            logging.getLogger("crmops").exception("failed")
        _fail(e.line(), e.exit_code, e.kind)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # what a stop leaves behind differs by command; services that know say it with Interrupted
        why = f"stopped by {_STOPPED_BY} (a timeout or shutdown)" if _STOPPED_BY else "stopped"
        _fail(why, Interrupted.exit_code, "interrupted")
    except click.ClickException as e:
        _finish_job(e.exit_code, e.format_message())
        if _json_wanted(usage=isinstance(e, click.UsageError)):
            kind = "usage" if isinstance(e, click.UsageError) else "error"
            message = e.format_message()
            ctx = getattr(e, "ctx", None)
            if message.startswith("Usage:") and ctx is not None:  # a group run without its command: not the help
                message = f"missing command (see `{ctx.command_path} --help`)"
            _print_json(_envelope(kind, message, e.exit_code))
        ctx = getattr(e, "ctx", None)
        if isinstance(e, click.UsageError) and not e.format_message().startswith("Usage:"):
            # one line like every other error, not Click's three-line block
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            click.echo(f"crmops: error: {e.format_message().rstrip('.')}{where}", err=True)
        else:
            e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        _finish_job(e.exit_code, None if e.exit_code == 0 else f"exit code {e.exit_code}")
        _print_outcome(e.exit_code, f"exit code {e.exit_code}", "error")
        sys.exit(e.exit_code)
    except Exception as e:  # a bug: one line unless --debug
        if debug:
            _finish_job(1, f"internal error: {type(e).__name__}: {e}")
            _print_outcome(1, f"internal error: {type(e).__name__}: {e}", "internal")
            raise
        _fail(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", 1, "internal")
    code = code if isinstance(code, int) else 0
    _finish_job(code, None)
    _print_outcome(code, f"exit code {code}", "error")
    sys.exit(code)


_JSON_ASKED = False


def _json_wanted(usage: bool = False) -> bool:
    """--json as parsed; for a usage error, --json anywhere on the line (it may be what was wrong)."""
    if _APP is None or usage:
        return _JSON_ASKED or (_APP is not None and _APP.json)
    return _APP.json


def _envelope(kind: str, line: str, code: int) -> dict[str, Any]:
    from crmops.cli.context import NO_RESULT

    pending = _APP.pending_json if _APP is not None else NO_RESULT
    return {"ok": False, "error": kind, "message": line, "exit_code": code,
            "result": None if pending is NO_RESULT else pending}


def _print_json(document: Any) -> None:
    import json

    click.echo(json.dumps(document, indent=2, sort_keys=False, default=str, ensure_ascii=False))


def _print_outcome(code: int, line: str, kind: str) -> None:
    """--json: the command's result on success, the envelope around it otherwise (nothing for --help)."""
    from crmops.cli.context import NO_RESULT

    if not _json_wanted() or _APP is None:
        return
    if code != 0:
        _print_json(_envelope(kind, line, code))
    elif _APP.pending_json is not NO_RESULT:
        _print_json(_APP.pending_json)


def _finish_job(code: int, line: str | None) -> None:
    """A job command (backup, verify, ...) ended: record it, write metrics, notify; never changes the exit."""
    if _APP is None or _APP.job is None:
        return
    job, _APP.job = _APP.job, None
    try:
        from crmops.status.jobs import finish

        finish(_APP.config, job, exit_code=code, error=line, result=_APP.result, log_failure=_APP.log_format == "json")
    except Exception as e:  # reporting must not turn a good run into a failed one
        import logging

        logging.getLogger("crmops.jobs").warning("could not record the run: %s: %s", type(e).__name__,
                                                 _APP.config.redact(str(e)))


def _fail(line: str, code: int, kind: str) -> None:
    _finish_job(code, line)
    if _json_wanted():
        _print_json(_envelope(kind, line, code))
    click.echo(f"crmops: error: {line}", err=True)
    sys.exit(code)
