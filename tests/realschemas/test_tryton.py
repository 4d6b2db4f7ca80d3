"""Tryton 8.2 (trytond, trytond-party, trytond-company, trytond-sale-opportunity from PyPI) on PostgreSQL.

The schema is what `trytond-admin --all` makes for those modules (222 tables, 492 foreign
keys, most of them ON DELETE CASCADE or SET NULL); the rows come through Tryton's ORM: a
company, 200 parties with an address and two contact mechanisms each, 100 opportunities.
A mass update overwrites every party's name, and the party table is restored on its own
while its 20-odd child tables keep their rows; a customer deleted the way Tryton deletes it
(its opportunities first, the database cascading over addresses and contact mechanisms)
comes back with undo through the foreign keys alone.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.realschemas.harness import Schema, exercise
from tests.realschemas.packages import PG_BIN, tryton_fill, tryton_schema

GONE = "(SELECT id FROM party_party WHERE name IN ('Customer 4', 'Customer 9'))"


def test_tryton_whole_set(pg_url_factory: Callable[[], str], tmp_path: Path) -> None:
    dump = tryton_schema(pg_url_factory())
    src = pg_url_factory()
    subprocess.run([str(PG_BIN / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-d", src, "-f", str(dump)], check=True,
                   capture_output=True, timeout=600)
    tryton_fill(src, 200)
    schema = Schema(
        name="Tryton 8.2", core_table="party_party",
        damage=["UPDATE party_party SET name = 'overwritten by a bad import'"],
        top_table="party_party", top_where="name IN ('Customer 4', 'Customer 9')",
        delete=[f"DELETE FROM sale_opportunity WHERE party IN {GONE}", f"DELETE FROM party_party WHERE id IN {GONE}"],
        untouched=("company_company", "currency_currency", "ir_model"),
    )
    exercise(schema, "postgresql", src, pg_url_factory, tmp_path)
