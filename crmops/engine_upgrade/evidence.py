"""What a failed pg_upgrade leaves to read, kept before the rollback removes it, and what the rehearsal misses.

pg_upgrade writes its logs into the new cluster (PostgreSQL 15 and later:
<new data>/pg_upgrade_output.d/<time>/log) or its working directory (older), and its error
says "Consult the last few lines of <log>". Undoing the upgrade removes the new cluster, so
the logs are copied first into the run's folder in state_dir (upgrades/<run id>/pg_upgrade),
and the error names that copy and the log's own last error line.

pg_upgrade upgrades every database of the cluster, while the dry run rehearses only the
configured one: the others that hold objects are named as a risk.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from crmops.config import Config
from crmops.playbooks.runjournal import upgrades_dir
from crmops.playbooks.steps import StepFailed

#: the log pg_upgrade's error points at
_CONSULT = re.compile(r'Consult the last few lines of "(?P<path>[^"]+)"')
#: a line of that log that says what failed (pg_restore's or the server's words)
_CAUSE = re.compile(r"(pg_restore: error: .*|ERROR: .*|FATAL: .*|error: .*)")


def keep_logs(layout: Any, config: Config, run_id: str) -> Path | None:
    """Copy pg_upgrade's log files from where it ran into state_dir/upgrades/<run id>/pg_upgrade; None if none."""
    listing = layout.here(
        ["sh", "-c", '[ -d "$0/pg_upgrade_output.d" ] && find "$0/pg_upgrade_output.d" -type f; '
                     'ls -1 "$1"/pg_upgrade_*.log 2>/dev/null; true', layout.new_datadir, layout.socket_dir],
        check=False)
    files = [p.strip() for p in listing.stdout.splitlines() if p.strip()]
    if not files:
        return None
    dest = upgrades_dir(config.state_dir) / run_id / "pg_upgrade"
    for path in files:
        base = layout.new_datadir if path.startswith(layout.new_datadir + "/") else layout.socket_dir
        local = dest / path[len(base) + 1:]
        try:
            text = layout.read(path)
        except StepFailed:
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(text, encoding="utf-8")
        local.chmod(0o600)  # schema text of the customer's database: for administrators only
    return dest


def cause(output: str, kept: Path | None, layout: Any) -> str:
    """The last error line of the log pg_upgrade's output points at, read from the kept copy."""
    m = _CONSULT.search(output)
    if not m or kept is None:
        return ""
    path = m.group("path")
    for base in (layout.new_datadir, layout.socket_dir):
        if path.startswith(base + "/"):
            local = kept / path[len(base) + 1:]
            break
    else:
        local = kept / Path(path).name
    try:
        lines = local.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    found = [c.group(1).strip() for c in (_CAUSE.search(x) for x in lines) if c]
    return found[-1] if found else ""


def failure_text(output: str, last_words: str, code: int, kept: Path | None, layout: Any) -> str:
    """pg_upgrade's failure with its cause and where its logs are now (the cluster holding them is undone)."""
    why = cause(output, kept, layout)
    text = f"pg_upgrade failed (exit {code})"
    if why:
        text += f": {why}"
    else:
        text += f": {last_words}"
    if kept is not None:
        text += f"; its logs are kept in {kept}"
    return text


def other_databases(source: Any, url: str, config: Config) -> list[str]:
    """Databases of the cluster other than url's that hold tables, views or functions: pg_upgrade upgrades them
    too, but the rehearsal restored only url's database. Those that cannot be looked into are named as such."""
    from crmops.dburl import parse
    from crmops.engines import open_engine

    with source.connect() as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datallowconn "
                                            "AND NOT datistemplate ORDER BY 1").fetchall()]
    mine = source.database_name()
    out: list[str] = []
    for name in names:
        if name == mine:
            continue
        other = parse(url).set(database=name).render_as_string(hide_password=False)
        try:
            with open_engine(other, config.database).connect() as conn:  # type: ignore[attr-defined]
                n = conn.execute(
                    "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace "
                    "        WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND s.nspname NOT IN "
                    "        ('pg_catalog', 'information_schema') AND s.nspname NOT LIKE 'pg_toast%') "
                    "     + (SELECT count(*) FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace "
                    "        WHERE s.nspname NOT IN ('pg_catalog', 'information_schema'))").fetchone()[0]
        except Exception as e:  # noqa: BLE001 - whatever stops the look, the database is still a risk
            out.append(f"{name} (could not be looked into: {type(e).__name__})")
            continue
        if n:
            out.append(f"{name} ({n} table{'s' * (n != 1)}, view{'s' * (n != 1)} or function{'s' * (n != 1)})")
    return out


def risk_line(databases: list[str], rehearsed: str) -> str:
    """The dry run's warning: pg_upgrade upgrades every database; these were not rehearsed."""
    return (f"pg_upgrade upgrades every database of the cluster, but the rehearsal restored only {rehearsed}: "
            f"not rehearsed: {', '.join(databases)}; a view or function there that the new version rejects "
            f"fails the real upgrade (it is then rolled back)")
