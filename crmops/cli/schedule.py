"""`crmops schedule install / show / remove`: the nightly backup and weekly drill, unattended."""

from __future__ import annotations

from pathlib import Path

import click

from crmops.cli.context import AppContext, pass_app
from crmops.services import schedule as sch

_dirs = [
    click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path), default=sch.DEFAULT_UNIT_DIR,
                 show_default=True, help="Where the systemd units go."),
    click.option("--cron-file", type=click.Path(dir_okay=False, path_type=Path), default=sch.DEFAULT_CRON_FILE,
                 show_default=True, help="The cron file (written with --cron)."),
]
_no_systemctl = click.option("--no-systemctl", is_flag=True,
                             help="Never run systemctl; print what to run instead (automatic without systemd).")


def _with_dirs(f):  # type: ignore[no-untyped-def]
    for opt in reversed(_dirs):
        f = opt(f)
    return f


def _manage(unit_dir: Path, no_systemctl: bool) -> bool:
    """Run systemctl only for the real unit folder on a machine where systemd runs."""
    return not no_systemctl and sch.systemd_running() and unit_dir.resolve() == sch.DEFAULT_UNIT_DIR


def _retire(files: list[Path], unit_dir: Path, manage: bool, cron_file: Path | None = None) -> list[str]:
    """Stop the timers and services among files and delete them all (with the links `enable` made).

    Returns the commands still to run by hand when systemctl was not ours to call, and, for
    streamers cron started, the command that stops them (cron cannot).
    """
    timers = [p.name for p in files if p.suffix == ".timer"]
    services = [p.name for p in files if p.suffix == ".service" and p.stem[len(sch.PREFIX):] in sch.SERVICES]
    streamers = sch.cron_services(cron_file) if cron_file is not None and cron_file in files else []
    if manage and (timers or services):
        sch.systemctl("disable", "--now", *timers, *services)
    for p in files:
        p.unlink()
        for wants in ("timers.target.wants", "multi-user.target.wants"):
            (unit_dir / wants / p.name).unlink(missing_ok=True)  # what `disable` removes
    todo = [f"fuser -k -TERM {sch.cron_lock(name)}" for name in streamers]
    if manage and (timers or services):
        sch.systemctl("daemon-reload")
    elif timers or services:
        todo += [*([f"systemctl stop {' '.join(timers)}"] if timers else []),
                 *([f"systemctl disable --now {' '.join(services)}"] if services else []), "systemctl daemon-reload"]
    return todo


def _config_file(app: AppContext) -> Path:
    from crmops.config import find_config_file
    from crmops.errors import ConfigError

    path = find_config_file(app.config_path)
    if path is None:
        raise ConfigError("a schedule needs a configuration file (it runs without this folder's demo default)",
                          hint="write one with `crmops init`, then pass --config FILE")
    app.config  # noqa: B018 (validate it now, not at 2 a.m.)
    return path.resolve()


def _when(ctx: click.Context, param: click.Parameter, value: str | None) -> sch.When | None:
    from crmops.errors import ConfigError

    if value is None or value.strip().lower() == "off":
        return None
    try:
        return sch.parse_when(value)
    except ConfigError as e:
        raise click.BadParameter(e.message) from None


@click.group("schedule")
def schedule_group() -> None:
    """Run backups, drills, checks and pruning unattended (systemd timers or cron)."""


@schedule_group.command("install")
@click.option("--backup", "backup", default="02:30", show_default=True, callback=_when, metavar="WHEN",
              help='When to back up: "HH:MM" daily, or with weekdays ("mon-fri 22:00").')
@click.option("--verify", callback=_when, metavar="WHEN", help='When to run the drill, e.g. "sun 04:00".')
@click.option("--check", default="03:30", show_default=True, callback=_when, metavar="WHEN",
              help="When to check the repository, reading a rotating share of the data (check.read_data_days); "
                   '"off" to leave it out.')
@click.option("--prune", callback=_when, metavar="WHEN", help='When to forget and prune, e.g. "sun 05:00".')
@click.option("--copy", "copy", callback=_when, metavar="WHEN",
              help='When to copy to the configured copies, e.g. "03:00" (after the backup); on a pull host '
                   'with --backup off --check off.')
@click.option("--drill-from-copy", "drill_from", nargs=2, multiple=True, metavar="NAME WHEN",
              help='Also drill from copy NAME alone (`drill --repository NAME`), e.g. offsite "sun 05:00": '
                   "proves the copy restores; status shows it (repeatable).")
@click.option("--timeout", "timeout", default="4h", show_default=True, metavar="DURATION",
              help="Stop a run after this long (it is recorded and notified as failed).")
@click.option("--lock-wait", default="1h", show_default=True, metavar="DURATION",
              help="How long a job waits for another crmops job to finish before it fails.")
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path), default=sch.DEFAULT_ENV_FILE,
              show_default=True, help="Secrets (CRMOPS_PASSPHRASE=..., mode 0600) read by the runs; you write it.")
@click.option("--user", help="Run as this user (default: root).")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
              help="With --cron: where the JSON log lines go (default: <state_dir>/crmops.log).")
@click.option("--status-page", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Rewrite the status page (report --html FILE) after every run, good or bad.")
@click.option("--wal-stream", is_flag=True,
              help="Also run `wal stream` as a service (PostgreSQL): WAL archived within seconds.")
@click.option("--binlog-follow", is_flag=True,
              help="Also run `binlog follow` as a service (MariaDB/MySQL): binary logs archived as they grow.")
@click.option("--interval", type=click.IntRange(1, 3600), metavar="SECONDS",
              help="With --wal-stream / --binlog-follow: their --interval, the bound on data lost "
                   "(default: theirs, 10 and 60).")
@click.option("--cron", "use_cron", is_flag=True, help="A file in /etc/cron.d instead of systemd units.")
@_with_dirs
@_no_systemctl
@pass_app
def install_cmd(app: AppContext, backup: sch.When | None, verify: sch.When | None, check: sch.When | None,
                prune: sch.When | None, copy: sch.When | None, drill_from: tuple[tuple[str, str], ...],
                timeout: str, lock_wait: str,
                env_file: Path, user: str | None,
                log_file: Path | None, status_page: Path | None, wal_stream: bool, binlog_follow: bool,
                interval: int | None, use_cron: bool, unit_dir: Path, cron_file: Path, no_systemctl: bool) -> None:
    """Write the units (or cron file) that run the jobs; the configuration file is pinned by path.

    The schedule is the whole set: a job or service left out of this install is removed.
    """
    from crmops.dburl import engine_kind
    from crmops.errors import ConfigError

    config = _config_file(app)
    kind = engine_kind(app.config.database.url)
    if wal_stream and kind != "postgresql":
        raise ConfigError("--wal-stream streams PostgreSQL WAL, but database.url is not PostgreSQL",
                          hint="for MariaDB/MySQL use --binlog-follow")
    if binlog_follow and kind != "mysql":
        raise ConfigError("--binlog-follow follows MariaDB/MySQL binary logs, but database.url is not MariaDB/MySQL",
                          hint="for PostgreSQL use --wal-stream")
    services = [n for n, on in (("wal-stream", wal_stream), ("binlog-follow", binlog_follow)) if on]
    if interval is not None and not services:
        raise click.UsageError("--interval is for --wal-stream or --binlog-follow")
    if user:
        import pwd

        try:
            pwd.getpwnam(user)
        except KeyError:
            raise ConfigError(f"--user {user}: no such user on this host") from None
    if copy and not app.config.copies:
        raise ConfigError("--copy schedules `crmops copy`, but no copies are configured",
                          hint="add a `copies:` list to the configuration first")
    schedule = {k: v for k, v in (("backup", backup), ("verify", verify), ("check", check), ("prune", prune),
                                  ("copy", copy)) if v}
    for name, text in drill_from:
        app.config.copy_named(name)  # an unknown copy is refused before anything is written
        try:
            schedule[f"{sch.DRILL_FROM}{name}"] = sch.parse_when(text)
        except ConfigError as e:
            raise click.BadParameter(e.message, param_hint="'--drill-from-copy'") from None
    common = {"config": config, "env_file": env_file.absolute(), "timeout_s": sch.parse_duration(timeout),
              "lock_wait_s": sch.parse_duration(lock_wait), "user": user, "exe": sch.crmops_executable(),
              "status_page": status_page.absolute() if status_page else None, "services": services,
              "interval": interval}
    if use_cron:
        plan = sch.plan_cron(schedule, cron_file=cron_file, log_file=log_file or app.config.state_dir / "crmops.log",
                             **common)
    else:
        plan = sch.plan_systemd(schedule, unit_dir=unit_dir, **common)
    # a job dropped from the schedule, or a switch between systemd and cron, must not keep running
    manage = _manage(unit_dir, no_systemctl)
    installed = sch.generated(unit_dir, cron_file)
    stale = [p for p in installed if str(p) not in plan.files]
    # streamers in a cron file being rewritten without them keep running: say how to stop them
    dropped = [j for j in sch.cron_services(cron_file) if not use_cron or j not in services]
    todo = _retire(stale, unit_dir, manage, cron_file)
    todo += [f"fuser -k -TERM {sch.cron_lock(j)}" for j in dropped if cron_file not in stale]
    sch.write(plan)
    folders = sch.prepare_folders(app.config.state_dir.absolute(), user, services)
    units = [] if use_cron else [job["unit"] for job in plan.jobs.values()]
    streams = [] if use_cron else [job["unit"] for job in plan.jobs.values() if job.get("service")]
    if manage and units:
        sch.systemctl("daemon-reload")
        sch.systemctl("enable", "--now", *units)
        if streams:
            sch.systemctl("restart", *streams)  # a running streamer takes the rewritten unit now
    elif units:
        todo = [*(t for t in todo if t != "systemctl daemon-reload"), "systemctl daemon-reload",
                f"systemctl enable --now {' '.join(units)}",
                *([f"systemctl restart {' '.join(streams)}"] if streams else [])]
    manage = manage and bool(units)
    timers = units
    result = {**plan.to_dict(), "services": services, "removed": [str(p) for p in stale], "enabled": manage,
              "folders_made": folders["made"], "folders_to_fix": folders["to_run"],
              "to_run": todo,
              "env_file": str(common["env_file"]), "env_file_exists": env_file.is_file()}

    def human(console) -> None:  # type: ignore[no-untyped-def]
        for name, job in plan.jobs.items():
            console.print(f"{name:7} {job['when']:28} {' '.join(job['command'])}", markup=False)
        console.print(f"wrote {', '.join(sorted(plan.files))}")
        for p in stale:
            console.print(f"removed {p}")
        if todo:
            why = "systemd is not running here" if not sch.systemd_running() else "not the system unit folder"
            console.print(f"{why}; to activate, run:\n  " + "\n  ".join(todo))
        elif manage:
            console.print(f"enabled {' '.join(timers)}")
        for made in folders["made"]:
            console.print(f"made {made} (owner {user or 'root'})", markup=False)
        for fix in folders["to_run"]:
            console.print(f"note: run {fix}", markup=False)
        if not env_file.is_file():
            console.print(f"note: {env_file} does not exist; put the secrets the configuration reads there "
                          "(e.g. CRMOPS_PASSPHRASE=...), mode 0600")

    app.emit(result, human)


@schedule_group.command("show")
@_with_dirs
@pass_app
def show_cmd(app: AppContext, unit_dir: Path, cron_file: Path) -> None:
    """Show what is scheduled, when it next runs, and the command it runs."""
    jobs = sch.read_installed(unit_dir, cron_file)
    result = {"jobs": jobs, "systemd_running": sch.systemd_running()}

    def human(console) -> None:  # type: ignore[no-untyped-def]
        if not jobs:
            console.print(f"nothing scheduled (no crmops units in {unit_dir}, no {cron_file}); "
                          "see `crmops schedule install --help`")
        for j in jobs:
            nxt = j.get("next") or "unknown (systemd-analyze is not installed)"
            console.print(f"{j['job']:7} {j['kind']:7} {j['when']}\n        next run: {nxt}\n"
                          f"        runs: {j['command']}\n        file: {j['file']}", markup=False)

    app.emit(result, human)


@schedule_group.command("remove")
@_with_dirs
@_no_systemctl
@pass_app
def remove_cmd(app: AppContext, unit_dir: Path, cron_file: Path, no_systemctl: bool) -> None:
    """Stop and delete the units (and cron file) `schedule install` wrote; nothing else is touched."""
    files = sch.generated(unit_dir, cron_file)
    todo = _retire(files, unit_dir, _manage(unit_dir, no_systemctl), cron_file)
    result = {"removed": [str(p) for p in files], "to_run": todo}

    def human(console) -> None:  # type: ignore[no-untyped-def]
        console.print("removed " + ", ".join(str(p) for p in files) if files else "nothing to remove")
        if todo:
            console.print("systemd or cron may still run them; run:\n  " + "\n  ".join(todo), markup=False)

    app.emit(result, human)
