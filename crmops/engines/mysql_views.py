"""MariaDB/MySQL views the dump tool cannot dump: over a dropped table, or of a definer that is gone.

mariadb-dump stops at such a view ("View '…' references invalid table(s)", exit 2), and a
view whose definer is gone comes out half-qualified with the source database's name, so
it cannot be loaded under another name. The moment a table was dropped by mistake is
exactly when a backup (the pre-restore snapshot) is needed, so these views are left out
of the tool's dump and written after it from the catalog, as they are: a missing table
they read is stood in for by an empty placeholder while the view is created, then
dropped again, so the restored view is just as invalid as the dumped one (and works
again once the table is restored).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: a table the definition reads: `db`.`table` with an optional alias
_TABLE = re.compile(r"`((?:[^`]|``)+)`\.`((?:[^`]|``)+)`(?: `((?:[^`]|``)+)`)?")
#: a qualified column: `alias`.`column` (not followed by another .`…`)
_COLUMN = re.compile(r"`((?:[^`]|``)+)`\.`((?:[^`]|``)+)`(?!\.`)")


@dataclass
class DamagedView:
    name: str
    #: why the dump tool cannot take it, as the server says
    reason: str
    definition: str
    definer: str
    security: str
    charset: str
    collation: str
    check_option: str
    #: missing table -> the columns the view reads from it
    missing: dict[str, list[str]] = field(default_factory=dict)


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _unq(name: str) -> str:
    return name.replace("``", "`")


def damaged_views(cur: Any, database: str) -> list[DamagedView]:
    """The views of the current database that the server cannot open, or whose definer does not exist."""
    cur.execute("SELECT table_name, view_definition, definer, security_type, character_set_client, "
                "collation_connection, check_option FROM information_schema.views "
                "WHERE table_schema = DATABASE() ORDER BY table_name")
    views = cur.fetchall()
    if not views:
        return []
    users = _users(cur)
    cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()")
    present = {str(r[0]) for r in cur.fetchall()}
    out = []
    for name, definition, definer, security, charset, collation, check in views:
        reason = None
        try:
            cur.execute(f"SHOW FIELDS FROM {_q(name)}")
            cur.fetchall()
        except Exception as e:  # pymysql errors: (code, message)
            reason = str(e.args[-1]) if e.args else type(e).__name__
        if reason is None and users is not None and security == "DEFINER" and definer not in users:
            reason = f"its definer {definer} does not exist"
        if reason is None:
            continue
        view = DamagedView(str(name), reason, _unqualified(str(definition), database), str(definer), str(security),
                           str(charset), str(collation), str(check))
        view.missing = _missing_tables(str(definition), database, present)
        out.append(view)
    return out


def _users(cur: Any) -> set[str] | None:
    """user@host of every account, as views name their definer; None when the catalog is not readable."""
    try:
        cur.execute("SELECT CONCAT(user, '@', host) FROM mysql.user")
        return {str(r[0]) for r in cur.fetchall()}
    except Exception:
        return None


def _unqualified(definition: str, database: str) -> str:
    """The definition without the source database's name, so it loads into a database of any name."""
    return definition.replace(_q(database) + ".", "")


def _missing_tables(definition: str, database: str, present: set[str]) -> dict[str, list[str]]:
    """Each table of this database the view reads that is not there, with the columns read from it."""
    aliases: dict[str, str] = {}
    for m in _TABLE.finditer(definition):
        if _unq(m[1]) != database:
            continue
        table = _unq(m[2])
        if table in present:
            continue
        aliases[table] = table
        if m[3] and not m[3].startswith(("AS", "as")):
            aliases[_unq(m[3])] = table
    out: dict[str, list[str]] = {t: [] for t in set(aliases.values())}
    for m in _COLUMN.finditer(_unqualified(definition, database)):
        table = aliases.get(_unq(m[1]))
        if table and _unq(m[2]) not in out[table]:
            out[table].append(_unq(m[2]))
    return out


def views_sql(views: list[DamagedView]) -> bytes:
    """The views as the dump would have them, written after it; a placeholder stands in for a missing table."""
    parts = []
    for v in views:
        check = "" if v.check_option in ("NONE", "") else f" WITH {v.check_option} CHECK OPTION"
        user, _, host = v.definer.rpartition("@")
        lines = [
            "", "--", f"-- Final view structure for view {_q(v.name)}",
            f"-- (written by crmops from the catalog: {v.reason.splitlines()[0][:200]})", "--", "",
            f"DROP VIEW IF EXISTS {_q(v.name)};",
            # a stand-in may carry the name a dangling foreign key points at: not checked
            "SET @saved_cs_client = @@character_set_client, @saved_col_connection = @@collation_connection, "
            "@saved_fk_checks = @@foreign_key_checks, foreign_key_checks = 0;",
            f"SET character_set_client = {v.charset}, collation_connection = {v.collation};",
        ]
        for table, columns in sorted(v.missing.items()):
            cols = ", ".join(f"{_q(c)} int" for c in columns) or "`crmops_placeholder` int"
            lines.append(f"CREATE TABLE {_q(table)} ({cols}) COMMENT='crmops: stands in while view "
                         f"{v.name.replace(chr(39), '')} is created';")
        lines.append(f"CREATE ALGORITHM=UNDEFINED DEFINER={_q(user)}@{_q(host)} SQL SECURITY {v.security} "
                     f"VIEW {_q(v.name)} AS {v.definition}{check};")
        lines += [f"DROP TABLE {_q(table)};" for table in sorted(v.missing)]
        lines.append("SET character_set_client = @saved_cs_client, collation_connection = @saved_col_connection, "
                     "foreign_key_checks = @saved_fk_checks;")
        parts.append("\n".join(lines) + "\n")
    return "".join(parts).encode("utf-8")
