"""Migration state kept by a tool other than Alembic, recognised by its bookkeeping table.

Real CRMs migrate themselves (Django's `manage.py migrate` writes django_migrations,
Tryton's `trytond-admin` keeps module versions in ir_module, Rails and Laravel keep their own
tables). crmops cannot plan, lint or check drift against such a state; it can only say whose
it is and how much it holds, so `crmops migrate status` names it instead of reporting an
unmanaged database as merely "not at any revision".
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

#: bookkeeping table -> (tool, the tool's own command that shows its state)
KNOWN = {
    "django_migrations": ("Django", "python manage.py showmigrations"),
    "ir_module": ("Tryton", "trytond-admin -d DB --all (module versions: SELECT name, state FROM ir_module)"),
    "schema_migrations": ("Rails or golang-migrate", "the application's own migration status command"),
    "migrations": ("Laravel", "php artisan migrate:status"),
    "flyway_schema_history": ("Flyway", "flyway info"),
    "doctrine_migration_versions": ("Doctrine", "bin/console doctrine:migrations:status"),
}


def foreign_state(connection: Any) -> dict[str, Any] | None:
    """The first known non-Alembic bookkeeping table in the database: tool, table, rows, how to see more."""
    tables = set(sa.inspect(connection).get_table_names())
    for table, (tool, command) in KNOWN.items():
        if table in tables:
            rows = connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
            return {"tool": tool, "table": table, "rows": int(rows or 0), "command": command,
                    "note": f"this database's migrations are kept by {tool} ({table}, {int(rows or 0)} rows), "
                            f"not by Alembic: crmops cannot see which are pending, plan, lint or check drift; "
                            f"run `{command}`"}
    return None
