"""What every command shares: the global options, the lazily loaded config, output.

rich, pydantic (through crmops.config) and yaml are imported where they are used, not
here: every command, `--help` and `--version` included, imports this module first.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

    from crmops.config import Config

#: the JSON document a command's result stands for until main() prints it
NO_RESULT = object()


@dataclass
class AppContext:
    config_path: str | None = None
    json: bool = False
    quiet: bool = False
    debug: bool = False
    log_format: str = "human"
    #: `--repository NAME`: the configured copy read in place of the repository
    repository_name: str | None = None
    _config: Config | None = field(default=None, repr=False)
    #: the command opens the repository with its key: derive it while starting up (crmops.kdf)
    key_ahead: bool = False
    #: the unattended job this command runs (crmops.status.jobs), recorded when it ends
    job: Any = field(default=None, repr=False)
    #: the last result emitted, whose key figures go into the run history and notifications
    result: Any = field(default=None, repr=False)
    #: with --json: the document main() prints once the exit code is known (NO_RESULT: none yet)
    pending_json: Any = field(default=NO_RESULT, repr=False)

    @property
    def config(self) -> Config:
        """Loaded on first use, so `crmops --help` works with a broken config file."""
        if self._config is None:
            from crmops.allocator import keep_large_buffers
            from crmops.config import apply_env_file, load_config

            keep_large_buffers()  # real work starts here; ctypes is not for --help and --version
            apply_env_file()  # scheduled runs: secrets from $CRMOPS_ENV_FILE
            config = load_config(self.config_path,
                                 early=_start_key_derivation if self.key_ahead and not self.repository_name else None)
            self._config = config.for_copy(self.repository_name) if self.repository_name else config
        return self._config

    @property
    def console(self) -> Console:
        from rich.console import Console

        return Console(file=_TrimmedLines(sys.stdout), highlight=False, soft_wrap=True)

    @property
    def interactive(self) -> bool:
        """Progress bars only for a person at a terminal: cron and --json stay quiet."""
        return not (self.quiet or self.json) and sys.stderr.isatty()

    def begin_job(self, command: str) -> None:
        """Mark this command as a job run: takes the job lock; main() records the run when it ends."""
        from crmops.status.jobs import JobRun

        config = self.config
        if self.repository_name:  # a run against a copy is that copy's record, not the repository's
            command = f"{command}@{self.repository_name}"
        self.job = JobRun(command)
        self.job.acquire(config)

    def emit(self, result: Any, human: Callable[[Console], None] | None = None) -> None:
        """--json keeps the result for main() to print as the one JSON document once the exit code
        is known (a failed verdict's result goes inside the error envelope); otherwise the human
        renderer runs now."""
        self.result = result
        if self.json:
            self.pending_json = result
        elif human is not None and not self.quiet:
            human(self.console)

    def say(self, message: str) -> None:
        """A line of human progress narration (silent with --quiet or --json)."""
        if not (self.quiet or self.json):
            click.echo(message)

    @contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        """Yields advance(n_bytes, *, total=None, description=None); draws a rich bar only when someone
        is watching (a total or a new description may come later, e.g. a phase of the work)."""
        if not self.interactive:
            yield lambda n, **kw: None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn()]  # "-:--:--" until a total is known
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(description, total=total)

            def advance(n: int, *, total: int | None = None, description: str | None = None) -> None:
                if total is not None or description is not None:
                    bar.update(task, total=total, description=description)
                bar.advance(task, n)

            yield advance


class _TrimmedLines:
    """stdout without the spaces rich pads lines with (tables, wrapped text): copied text stays clean."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        import re

        return self._stream.write(re.sub(r" +((?:\x1b\[[0-9;]*m)*)(?=\n|$)", r"\1", text))

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, flush, encoding: the real stream's
        return getattr(self._stream, name)


pass_app = click.make_pass_decorator(AppContext)


def _read_copy(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        app = ctx.find_object(AppContext)
        if app is not None:
            app.repository_name = value


def repository_option(f: Any) -> Any:
    """`--repository NAME` (or `--from-copy NAME`): read the configured copy NAME instead of the repository.

    Switched where the configuration is loaded, so everything the command opens is the copy,
    and the copy's retention is the policy: the primary may be gone.
    """
    return click.option("--repository", "--from-copy", "repository_name", metavar="NAME", expose_value=False,
                        callback=_read_copy, help="Read the copy NAME (configured under copies:) instead of "
                                                  "the repository.")(f)


def table(*headers: str, whole: tuple[str, ...] = (), **options: Any) -> Any:
    """A rich Table whose cells wrap (folding long words) instead of ending in "…" at 80 columns.

    Columns named in whole never wrap: identifiers people copy (container names, ids) stay on one line.
    """
    from rich import box
    from rich.table import Table

    t = Table(**{"box": box.SIMPLE_HEAD, "show_edge": False, "padding": (0, 1, 0, 0), **options})
    for header in headers:
        if header in whole:
            t.add_column(header, no_wrap=True)
        else:
            t.add_column(header, overflow="fold")
    return t


class DatabaseUrl(click.ParamType):
    """A database URL option: `${VAR}` is read from the environment, so a password never has
    to be typed where `ps` and shell history show it; a literal one gets a warning."""

    name = "URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from crmops.config import expand_env

        where = _option_name(param)
        if "${" not in str(value) and _has_password(str(value)):
            import logging

            logging.getLogger("crmops").warning(
                "%s holds a password on the command line, where other users' `ps` can read it; "
                "write it as ${VARIABLE} and export the variable instead", where)
        return expand_env(str(value), where)


def _option_name(param: click.Parameter | None) -> str:
    """The option as the user typed it (`--to`), not its Python name (`to_url`)."""
    if param is None:
        return "URL"
    opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return opts[0] if opts else f"--{param.name}"


def _has_password(url: str) -> bool:
    from crmops.dburl import has_password

    return has_password(url)


DATABASE_URL = DatabaseUrl()


def _start_key_derivation(data: dict[str, Any], folder: Path, environ: dict[str, str]) -> None:
    """Begin the passphrase's scrypt on another core before the configuration is validated; a
    failure here only means the key is derived later, where the repository is opened."""
    from crmops import kdf

    try:
        kdf.start_for_config(data, folder, environ)
    except Exception:  # noqa: BLE001 - never a reason for the command to fail
        pass
