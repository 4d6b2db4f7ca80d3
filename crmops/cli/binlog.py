"""`crmops binlog`: MariaDB/MySQL binary logs for point-in-time recovery (settings check only, so far)."""

from __future__ import annotations

import click

from crmops.cli.context import DATABASE_URL, AppContext, pass_app


@click.group("binlog")
def binlog_group() -> None:
    """MariaDB/MySQL binary logs: what point-in-time recovery will need from the server."""


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
