"""Why a database an application made is not always what a logical restore of it gives back, and why one
that was restored once always is.

PostgreSQL stores an expression as a parse tree and pg_dump prints it back as SQL. For a predicate an
application writes as `state IN ('a', 'b')` on a varchar column (Tryton's trytond-admin writes its
partial indexes so), the tree holds an array of varchar cast to text[] whole, which pg_dump prints as
`(ARRAY['a'::character varying, ...])::text[]`; a restore re-parses that text and pushes the cast into
each element, so the restored index (the same index, the same rows it covers) is printed as
`ARRAY[('a'::character varying)::text, ...]`. The first restore of such a database changes its
`pg_dump --schema-only` text in those lines and nowhere else; a second backup and restore changes
nothing. A rollback test therefore takes its "before" digest of a database loaded from a dump (as
tests/realcrm/tryton.py's install does), never of one the application's own installer made.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.matrix.digest import native_digest
from tests.services.test_backup_restore import run, write_config

SCHEMA = [
    "CREATE TABLE sale (id int PRIMARY KEY, state varchar, invoice_state varchar)",
    "INSERT INTO sale SELECT n, (ARRAY['draft', 'none', 'waiting'])[1 + n % 3], 'open' FROM generate_series(1, 60) n",
    # as trytond-admin makes sale_sale's index: varchar IN (literals)
    "CREATE INDEX sale_invoice_state_open ON sale USING hash (invoice_state) WHERE state IN ('none', 'waiting')",
]


def _diff(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def _index_used(url: str) -> bool:
    """The planner proves the application's query implies the partial index's predicate (the index serves it)."""
    with psycopg.connect(url) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute("EXPLAIN SELECT id FROM sale WHERE invoice_state = 'open' "
                            "AND state IN ('none', 'waiting')").fetchall()
    return any("sale_invoice_state_open" in line for (line,) in plan)


def test_first_restore_reprints_a_varchar_in_predicate_then_restores_exactly(
        pg_url_factory: Callable[[], str], tmp_path: Path) -> None:
    url = pg_url_factory()
    with psycopg.connect(url, autocommit=True) as conn:
        for sql in SCHEMA:
            conn.execute(sql)
    config = write_config(tmp_path, url)
    run(config, "repo", "init")
    made = native_digest(url)
    assert _index_used(url)

    first = json.loads(run(config, "backup").stdout)["snapshot_id"]
    run(config, "restore", first, "--to", url, "--force")
    once = native_digest(url)
    assert {k: v for k, v in once.items() if k != "schema"} == {k: v for k, v in made.items() if k != "schema"}
    changed = _diff(made["schema"], once["schema"])
    assert [line[0] for line in changed] == ["-", "+"], changed  # one line: the index's predicate
    assert "(ARRAY['none'::character varying, 'waiting'::character varying])::text[]" in changed[0], changed
    assert "ARRAY[('none'::character varying)::text, ('waiting'::character varying)::text]" in changed[1], changed
    assert _index_used(url)  # the same index, serving the same query

    second = json.loads(run(config, "backup").stdout)["snapshot_id"]
    run(config, "restore", second, "--to", url, "--force")
    assert native_digest(url) == once  # once restored, every restore gives the database back exactly
