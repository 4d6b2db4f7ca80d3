"""The point-in-time halves of `crmops backup` (--physical) and `crmops restore` (--at ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crmops.cli.context import AppContext


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def physical_backup_cmd(app: AppContext, tags: tuple[str, ...], wal_timeout: int) -> None:
    from crmops.pitr.basebackup import physical_backup

    with app.progress("base backup") as advance:
        result = physical_backup(app.config, tags=tags, progress=advance, wal_timeout_s=wal_timeout)

    def human(console) -> None:  # type: ignore[no-untyped-def]
        console.print(f"base backup {result['snapshot_id']} of PostgreSQL {result['server_version']} "
                      f"(system {result['system_id']}, timeline {result['timeline']}, "
                      f"WAL {result['start_lsn']} .. {result['stop_lsn']}) in {result['duration_s']} s: "
                      f"read {_mb(result['bytes_read'])}, new {_mb(result['bytes_new'])}", markup=False)

    app.emit(result, human)


def restore_at_cmd(app: AppContext, *, target: dict[str, str], to_url: str | None, tables: list[str] | None,
                   sandbox: bool, keep: bool, to_datadir: Path | None, force: bool, prefix: str | None = None,
                   port: int | None = None) -> None:
    from crmops.pitr.restore import restore_at

    with app.progress("restore") as advance:
        result = restore_at(app.config, target, to_url=to_url, tables=tables, sandbox=sandbox, keep=keep,
                            to_datadir=to_datadir, force=force, progress=advance, say=app.say,
                            prefix=prefix, port=port)

    def human(console) -> None:  # type: ignore[no-untyped-def]
        for line in result.get("lines", []):
            console.print(line, markup=False)

    app.emit(result, human)


def parse_target(at: str | None, at_lsn: str | None, at_name: str | None, before_xid: str | None) -> dict[str, Any]:
    """Exactly one recovery target, validated before anything starts."""
    import click

    given = {k: v for k, v in (("time", at), ("lsn", at_lsn), ("name", at_name), ("xid", before_xid)) if v}
    if len(given) != 1:
        raise click.UsageError("give one of --at, --at-lsn, --at-name, --before-xid")
    return given
