"""`crmops binlog`: MariaDB/MySQL binary logs for point-in-time recovery: settings, push, follow."""

from __future__ import annotations

import click

from crmops.cli.context import DATABASE_URL, AppContext, pass_app


@click.group("binlog")
def binlog_group() -> None:
    """MariaDB/MySQL binary log archiving for point-in-time recovery."""


@binlog_group.command("setup")
@click.option("--url", type=DATABASE_URL, help="The server (default: database.url).")
@pass_app
def setup_cmd(app: AppContext, url: str | None) -> None:
    """Check the server settings binlog archiving needs; exit 3 naming what to change."""
    from crmops.dburl import engine_kind, safe
    from crmops.engines.mysql import MysqlEngine
    from crmops.errors import ConfigError
    from crmops.pitr.binlog import check_settings

    url = url or app.config.database.url
    if engine_kind(url) != "mysql":
        raise ConfigError(f"{safe(url)} is not MariaDB/MySQL; for PostgreSQL run `crmops wal setup`")
    names = ("log_bin", "binlog_format", "server_id", "binlog_expire_logs_seconds", "expire_logs_days")
    rows = {}
    for name in names:
        found = MysqlEngine(url)._query(f"SHOW GLOBAL VARIABLES LIKE '{name}'")
        if found:
            rows[name] = str(found[0][1])
    result = check_settings(rows)
    result["server"] = safe(url)

    def human(console) -> None:  # type: ignore[no-untyped-def]
        for c in result["checks"]:
            mark = "ok  " if c["ok"] else "FIX "
            console.print(f"{mark} {c['setting']} = {c['value']} (wanted {c['wanted']}: {c['why']})", markup=False)
        if not result["ready"]:
            console.print("# in my.cnf [mariadbd], then restart:  log_bin = mariadb-bin  binlog_format = ROW  "
                          "server_id = 1  binlog_expire_logs_seconds = 604800", markup=False)

    app.emit({"ok": result["ready"], **result}, human)
    if not result["ready"]:
        bad = [c["setting"] for c in result["checks"] if not c["ok"]]
        raise ConfigError(f"{safe(url)} does not keep what binlog archiving needs: {', '.join(bad)}",
                          hint="set them in my.cnf and restart the server (see the lines above)")


@binlog_group.command("push")
@click.option("--url", type=DATABASE_URL, help="The server (default: database.url); needs REPLICATION SLAVE.")
@pass_app
def push_cmd(app: AppContext, url: str | None) -> None:
    """Archive the binary logs that are new or have grown since the last push."""
    from crmops.pitr.binlog import push

    result = push(app.config, url)
    app.emit(result, lambda c: c.print(f"server {result['server_id']}: stored {len(result['stored'])} binary logs "
                                       f"({', '.join(result['stored']) or 'nothing new'})", markup=False))


@binlog_group.command("follow")
@click.option("--url", type=DATABASE_URL, help="The server (default: database.url); needs REPLICATION SLAVE.")
@click.option("--interval", type=click.IntRange(1, 3600), default=60, show_default=True,
              help="Seconds between pushes: the bound on data lost (RPO).")
@pass_app
def follow_cmd(app: AppContext, url: str | None, interval: int) -> None:
    """Push the binary logs every --interval seconds until stopped (run it as a service).

    Each round lists the server's binary logs and archives what is new or longer, so a
    server restart or a rotation between rounds loses nothing the server still keeps.
    SIGTERM or Ctrl-C lets the round under way finish, then exits 0.
    """
    import signal
    import threading

    from crmops.errors import CrmopsError
    from crmops.pitr.binlog import push

    stop = threading.Event()
    previous = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    rounds = stored = 0
    try:
        while not stop.is_set():
            try:
                result = push(app.config, url)
                stored += len(result["stored"])
                if result["stored"]:
                    app.say(f"stored {', '.join(result['stored'])}")
            except CrmopsError as e:  # an unreachable server or store: say it, try again next round
                click.echo(f"crmops: warning: {e.line()}", err=True)
            rounds += 1
            stop.wait(interval)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    app.emit({"ok": True, "rounds": rounds, "stored": stored},
             lambda c: c.print(f"stopped after {rounds} rounds; {stored} binary logs stored", markup=False))
