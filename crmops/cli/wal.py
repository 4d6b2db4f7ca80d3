"""`crmops wal`: PostgreSQL's archive_command and restore_command, and the settings for them.

push and fetch run once per WAL file, so they import only what they use: no rich, no
docker, no SQLAlchemy.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from crmops.cli.context import DATABASE_URL, AppContext, pass_app, repository_option


def _system_id(given: str | None, path: Path | None = None) -> str:
    from crmops.errors import ConfigError
    from crmops.pitr.archive import read_system_id

    if given:
        return given
    candidates = [Path.cwd()]  # PostgreSQL runs both commands in the data directory
    if path is not None:
        candidates.append(path.resolve().parent.parent)  # .../pg_wal/<segment>
    for d in candidates:
        found = read_system_id(d)
        if found:
            return found
    raise ConfigError("cannot tell which cluster this WAL belongs to (no global/pg_control here)",
                      hint="run from the data directory, as archive_command does, or pass --system-id")


def _archive(app: AppContext, system_id: str):  # type: ignore[no-untyped-def]
    """The archive; what is pushed must lie on production's timeline line (crmops.pitr.timeline)."""
    from crmops.pitr.timeline import GuardedArchive
    from crmops.repository import open_repository

    return GuardedArchive(open_repository(app.config), system_id)


@click.group("wal")
def wal_group() -> None:
    """PostgreSQL WAL archiving for point-in-time recovery."""


@wal_group.command("push")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--system-id", help="The cluster's system identifier (default: read from ./global/pg_control).")
@pass_app
def push_cmd(app: AppContext, path: Path, system_id: str | None) -> None:
    """Archive one WAL file (archive_command = '... wal push %p'); exit 0 only once it is stored."""
    from crmops.pitr.archive import validate_name

    validate_name(path.name)
    archive = _archive(app, _system_id(system_id, path))
    outcome = archive.push(path)
    app.emit({"ok": True, "file": path.name, "outcome": outcome, "system_id": archive.system_id},
             lambda c: c.print(f"{path.name}: {outcome}"))


@wal_group.command("fetch")
@repository_option
@click.argument("name")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--system-id", help="The cluster's system identifier (default: read from ./global/pg_control).")
@pass_app
def fetch_cmd(app: AppContext, name: str, dest: Path, system_id: str | None) -> None:
    """Restore one WAL file (restore_command = '... wal fetch %f %p'); exit 81 when it is not archived."""
    from crmops.pitr.archive import validate_name

    validate_name(name)
    archive = _archive(app, _system_id(system_id))
    size = archive.fetch(name, dest)
    app.emit({"ok": True, "file": name, "bytes": size}, lambda c: c.print(f"{name}: {size} bytes"))


@wal_group.command("setup")
@click.option("--url", type=DATABASE_URL, help="The server (default: database.url); a superuser for --apply.")
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path), default="/etc/crmops/crmops.env",
              show_default=True, help="Where the archive command reads CRMOPS_PASSPHRASE and the other secrets.")
@click.option("--archive-timeout", type=click.IntRange(1, 3600), default=60, show_default=True,
              help="Seconds before a quiet segment is archived anyway: the bound on data lost (RPO).")
@click.option("--crmops", "exe", metavar="PATH",
              help="The crmops the server's user runs in archive_command (default: this one).")
@click.option("--apply", "do_apply", is_flag=True,
              help="Check the server's user can run it, write the settings with ALTER SYSTEM, reload, prove it.")
@click.option("--check", "do_check", is_flag=True,
              help="Change nothing: prove the server archives into this repository (after the restart).")
@click.option("--proof-timeout", type=click.IntRange(1, 3600), default=60, show_default=True,
              help="Seconds to wait for the switched WAL segment to reach the archive.")
@pass_app
def setup_cmd(app: AppContext, url: str | None, env_file: Path, archive_timeout: int, exe: str | None,
              do_apply: bool, do_check: bool, proof_timeout: int) -> None:
    """Print (or --apply and prove) the settings that send every WAL file to this repository.

    --apply first checks, as the user owning the data directory, that it can run crmops and
    read its configuration and env file (nothing is written otherwise), then forces a
    segment switch and waits until that segment is in the archive. Exit 85 names the cause.
    """
    from crmops.errors import ConfigError
    from crmops.pitr import setup

    if do_apply and do_check:
        raise click.UsageError("--apply already proves it; --check is for proving without changing anything")
    config = app.config
    config_file = Path(app.config_path or os.environ.get("CRMOPS_CONFIG") or config.source)
    if exe is not None and not (Path(exe).is_absolute() and Path(exe).is_file()):
        raise ConfigError(f"--crmops {exe}: not an absolute path to a file", hint="e.g. /usr/local/bin/crmops")
    wanted = setup.settings(config, config_file=config_file if config_file.is_file() else None, env_file=env_file,
                            archive_timeout=archive_timeout, exe=exe)
    _push, fetch = setup.archive_commands(config_file if config_file.is_file() else None, env_file, exe)
    result: dict[str, object] = {"ok": True, "settings": wanted, "restore_command": fetch, "env_file": str(env_file),
                                 "env_file_exists": env_file.is_file(), "applied": False}
    if do_apply or do_check:
        from crmops.errors import ArchiveNotWorking
        from crmops.services.schedule import crmops_executable

        try:
            result.update(setup.run(config, url or config.database.url, wanted, exe=exe or crmops_executable(),
                                    config_file=config_file if config_file.is_file() else None, env_file=env_file,
                                    apply_now=do_apply, timeout_s=proof_timeout), applied=do_apply)
        except ArchiveNotWorking as e:
            app.emit({**result, **getattr(e, "result", {"ok": False})})  # --json: the checks, inside the envelope
            raise

    def human(console) -> None:  # type: ignore[no-untyped-def]
        if not (do_apply or do_check):
            console.print("# in postgresql.conf, or run again with --apply (ALTER SYSTEM):")
        if not do_check:
            for k, v in wanted.items():
                console.print(f"{k} = '{v}'", markup=False)
        if not env_file.is_file():
            console.print(f"# {env_file} does not exist yet: put CRMOPS_PASSPHRASE=... there (mode 600, "
                          "readable by the postgres user)", markup=False)
        if result.get("checked_as"):
            console.print(f"checked: {result['checked_as']} can run crmops and read its files", markup=False)
        if result.get("next"):
            console.print(f"applied; {result['next']}", markup=False)
        elif result.get("proven"):
            console.print(f"{'applied; ' if do_apply else ''}archiving works: {result['segment']} reached the "
                          f"archive {result['seconds']} s after the switch"
                          + (" — now take a base backup: crmops backup --physical" if do_apply else ""),
                          markup=False)

    app.emit(result, human)


@wal_group.command("promote")
@click.option("--url", type=DATABASE_URL, required=True,
              help="The promoted server that is production from now on (a superuser).")
@pass_app
def promote_cmd(app: AppContext, url: str) -> None:
    """Record a promoted server's timeline as production's, so `wal push` accepts its WAL.

    For a copy restored with `restore --at ... --to-datadir` (or a standby promoted by hand)
    that becomes the new production. Its history must descend from the archive's line; the
    history file is archived now. Then turn archiving on there: `crmops wal setup --apply`.
    """
    from crmops.dburl import safe
    from crmops.engines.postgres import PostgresEngine
    from crmops.errors import ConfigError
    from crmops.pitr.timeline import GuardedArchive, promote
    from crmops.repository import open_repository

    with PostgresEngine(url).connect() as conn:
        recovering, walfile, seg_size, system_id = conn.execute(
            "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL "
            "ELSE pg_walfile_name(pg_current_wal_lsn()) END, current_setting('wal_segment_size')::text, "
            "(SELECT system_identifier::text FROM pg_control_system())").fetchone()
        if recovering:
            raise ConfigError(f"{safe(url)} is still in recovery: promote it first (it promotes by itself at "
                              "the recovery target; `crmops wal wait-promoted DIR` waits for that)")
        timeline = int(walfile[:8], 16)
        if timeline == 1:
            raise ConfigError(f"{safe(url)} is on timeline 1: it was never promoted, nothing to record")
        history = conn.execute("SELECT pg_read_binary_file(%s)", (f"pg_wal/{timeline:08X}.history",)).fetchone()[0]
        size = int(seg_size.rstrip("MB")) * 1024 * 1024 if seg_size.endswith("MB") else int(seg_size)
    archive = GuardedArchive(open_repository(app.config), system_id)
    result = {"ok": True, "system_id": system_id, "server": safe(url),
              **promote(archive, timeline, bytes(history), segment_size=size, server=safe(url))}

    def human(console) -> None:  # type: ignore[no-untyped-def]
        if result["already"]:
            console.print(f"timeline {timeline} is production's already", markup=False)
            return
        console.print(f"timeline {timeline} is production's now (was {result['tip_before']}); the archive refuses "
                      f"WAL of any other line from here on", markup=False)
        console.print(f"next: crmops wal setup --apply --url '{safe(url)}' (then restart it), and a base backup: "
                      "crmops backup --physical", markup=False)

    app.emit(result, human)


@wal_group.command("wait-promoted")
@click.argument("datadir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--timeout", type=click.IntRange(1, 7 * 86400), default=86400, show_default=True,
              help="Seconds to wait for the replay.")
@click.option("--log", type=click.Path(dir_okay=False, path_type=Path),
              help="The server's log, for the FATAL line when it stops (default: DATADIR/crmops-recovery.log).")
@pass_app
def wait_promoted_cmd(app: AppContext, datadir: Path, timeout: int, log: Path | None) -> None:
    """Wait until the server started on DATADIR (a `restore --to-datadir` copy) has replayed and promoted.

    pg_ctl -w returns once the server accepts connections, which a recovering server does
    before it reaches its target; this returns only after the promotion, or exits 83 with
    the log's last FATAL line when the server stopped. It reads files only (no password).
    """
    from crmops.pitr.datadir import wait_promoted

    result = wait_promoted(datadir, timeout_s=timeout, log=log, say=app.say)
    app.emit(result, lambda c: c.print(f"{datadir}: promoted, in production ({result['seconds']} s)",
                                       markup=False))


@wal_group.command("status")
@repository_option
@click.option("--system-id", help="Which cluster (default: the newest physical backup's).")
@pass_app
def status_cmd(app: AppContext, system_id: str | None) -> None:
    """The recoverable window, the archive lag (asked of database.url when it is this cluster) and any gap."""
    from crmops.pitr.window import describe
    from crmops.repository import open_repository

    info = describe(open_repository(app.config), system_id, app.config.database.url)
    if "lag_note" in info:
        info["lag_note"] = app.config.redact(info["lag_note"])
        info["lines"] = [app.config.redact(line) for line in info["lines"]]

    def human(console) -> None:  # type: ignore[no-untyped-def]
        for line in info["lines"]:
            console.print(line, markup=False)

    app.emit(info, human)


@wal_group.command("stream")
@click.option("--url", type=DATABASE_URL,
              help="A role with REPLICATION (default: $CRMOPS_STREAM_URL, else database.url).")
@click.option("--spool", type=click.Path(file_okay=False, path_type=Path),
              help="Where pg_receivewal writes (default: <state_dir>/wal-spool); one streamer per spool.")
@click.option("--slot", default="crmops", show_default=True,
              help="The replication slot (created if missing): the server keeps WAL until it is received.")
@click.option("--interval", type=click.IntRange(1, 3600), default=10, show_default=True,
              help="Seconds between pushes of the segment being filled: the bound on data lost (RPO).")
@pass_app
def stream_cmd(app: AppContext, url: str | None, spool: Path | None, slot: str, interval: int) -> None:
    """Stream WAL with pg_receivewal and push it to the archive until stopped (run it as a service).

    Finished segments are pushed like `wal push` (archive_command may run beside it); the
    segment being filled is pushed as <name>.partial every --interval seconds. SIGTERM or
    Ctrl-C stops pg_receivewal, pushes what it wrote, and exits 0.
    """
    import signal

    from crmops.dburl import engine_kind, parse, safe
    from crmops.engines.tools import require_tool
    from crmops.errors import ConfigError
    from crmops.pitr import stream

    config = app.config  # reads $CRMOPS_ENV_FILE, which may hold CRMOPS_STREAM_URL
    url = url or os.environ.get("CRMOPS_STREAM_URL") or config.database.url
    if engine_kind(url) != "postgresql":
        raise ConfigError(f"{safe(url)} is not PostgreSQL; for MariaDB/MySQL run `crmops binlog follow`")
    stream.validate_slot(slot)
    spool = (spool or config.state_dir / "wal-spool").absolute()
    u = parse(url)
    system_id, timeline, major = stream.identify(u)
    tool = require_tool(["pg_receivewal"], (major,), what=f"stream WAL from PostgreSQL {major}",
                        fix=stream.TOOL_FIX.format(major=major), extra_dirs=[f"/usr/lib/postgresql/{major}/bin"])
    archive = _archive(app, system_id)

    def warn(line: str) -> None:
        click.echo(f"crmops: warning: {line}", err=True)

    streamer = stream.Streamer(archive, tool=tool, env=stream.libpq_env(u), spool=spool, slot=slot,
                               interval=interval, warn=warn, say=app.say)
    streamer.lock_spool()
    streamer.create_slot()

    def stop(signum: int, frame: object) -> None:
        streamer.stop.set()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    app.say(f"streaming cluster {system_id} (timeline {timeline}) from {safe(url)} into {spool}, slot {slot}; "
            f"the current segment is pushed every {interval} s")
    try:
        counts = streamer.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    result = {"ok": True, "system_id": system_id, "slot": slot, "spool": str(spool), "interval": interval,
              "tool": tool, **counts}
    app.emit(result, lambda c: c.print(f"stopped: {counts['stored']} segments stored, {counts['already']} "
                                       f"already archived, {counts['partial_pushes']} partial pushes, "
                                       f"{counts['restarts']} restarts of pg_receivewal", markup=False))
