"""Fingerprints name how they were computed, so a snapshot written by an earlier crmops
still verifies, and two fingerprints computed differently are never compared."""

from __future__ import annotations

import psycopg
import pytest

from crmops.democrm.load import create
from crmops.engines import open_engine
from crmops.errors import DatabaseError
from tests.engines.test_roundtrip import roundtrip


def test_postgres_fingerprint_both_ways(pg_url_factory) -> None:  # type: ignore[no-untyped-def]
    src, dst = pg_url_factory(), pg_url_factory()
    create(src, size="small")
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute("CREATE TABLE visits (id int PRIMARY KEY, meta json); "
                     "INSERT INTO visits VALUES (1, '{\"a\": 1}'), (2, NULL)")
    engine = open_engine(src)
    new, old = engine.fingerprint(), engine.fingerprint(method="")
    assert (new.method, old.method) == ("record-hash", "")
    assert {n: t.rows for n, t in new.tables.items()} == {n: t.rows for n, t in old.tables.items()}
    assert new.tables["contacts"].checksum != old.tables["contacts"].checksum
    assert [d.kind for d in new.compare(old)] == ["method"]  # never compared checksum by checksum

    # a restored copy matches either way, so snapshots fingerprinted the earlier way still verify
    dumped, _ = roundtrip(src, dst)
    assert dumped.method == "record-hash"
    assert old.compare(open_engine(dst).fingerprint(method="")) == []

    # and either way sees one changed value
    with psycopg.connect(dst, autocommit=True) as conn:
        conn.execute("UPDATE contacts SET phone = NULL WHERE id = 17")
        conn.execute("""UPDATE visits SET meta = '{"a": 2}' WHERE id = 1""")  # json: hashed as its text
    for method, before in (("record-hash", new), ("", old)):
        diffs = before.compare(open_engine(dst).fingerprint(method=method))
        assert [(d.name, d.reason) for d in diffs] == [("contacts", "content checksum differs"),
                                                       ("visits", "content checksum differs")], method


@pytest.mark.parametrize("url", ["sqlite", "pg"])
def test_a_fingerprint_from_a_newer_crmops_is_refused(url: str, request: pytest.FixtureRequest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = f"sqlite:///{tmp_path / 'crm.db'}" if url == "sqlite" else request.getfixturevalue("pg_url")
    create(target, size="small")
    with pytest.raises(DatabaseError, match="cannot compute a .* fingerprint the way 'row-hash-v9'"):
        open_engine(target).fingerprint(method="row-hash-v9")


def test_postgres_bit_columns_fingerprint_and_a_changed_bit_is_seen(pg_url_factory) -> None:  # type: ignore[no-untyped-def]
    a, b = pg_url_factory(), pg_url_factory()
    for url in (a, b):
        with psycopg.connect(url, autocommit=True) as conn:  # bit has no extended hash: hashed as its text
            conn.execute("CREATE TABLE flags (id int PRIMARY KEY, f bit(4), v varbit, fs bit(2)[])")
            conn.execute("INSERT INTO flags VALUES (1, B'1010', B'1', ARRAY[B'01']), (2, NULL, B'', NULL)")
    with psycopg.connect(b, autocommit=True) as conn:
        conn.execute("UPDATE flags SET v = B'0' WHERE id = 2")
    for method in ("record-hash", "canonical", ""):
        diffs = open_engine(a).fingerprint(method=method).compare(open_engine(b).fingerprint(method=method))
        assert [(d.name, d.reason) for d in diffs] == [("flags", "content checksum differs")], method


@pytest.mark.mysql
def test_mariadb_canonical_fingerprint_sees_a_float_the_first_way_reads_as_equal(mysql_url_factory) -> None:  # type: ignore[no-untyped-def]
    a, b = mysql_url_factory(), mysql_url_factory()
    for url in (a, b):
        conn = open_engine(url).connect()  # type: ignore[attr-defined]
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE m (id int PRIMARY KEY, f FLOAT, d DOUBLE)")
            cur.execute("INSERT INTO m VALUES (1, 16777216, 0.1)")
        conn.close()
    conn = open_engine(b).connect()  # type: ignore[attr-defined]
    with conn.cursor() as cur:
        cur.execute("UPDATE m SET f = 16777218")  # FLOAT's text keeps 6 digits: both read 16777200
    conn.close()
    new, old = open_engine(a).fingerprint(), open_engine(a).fingerprint(method="")
    assert (new.method, old.method) == ("canonical", "")
    assert old.compare(open_engine(b).fingerprint(method="")) == []
    assert [d.name for d in new.compare(open_engine(b).fingerprint(method="canonical"))] == ["m"]


def test_postgres_xml_with_a_declaration_verifies_every_way(pg_url_factory) -> None:  # type: ignore[no-untyped-def]
    """pg_dump writes xml through its output function, which drops `<?xml version="1.0"?>`."""
    src, dst = pg_url_factory(), pg_url_factory()
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute("""CREATE TABLE docs (id int PRIMARY KEY, x xml);
                        INSERT INTO docs VALUES (1, '<?xml version="1.0"?><r a="1"/>'), (2, NULL)""")
    before = {m: open_engine(src).fingerprint(method=m) for m in ("record-hash", "canonical", "")}
    roundtrip(src, dst)
    with psycopg.connect(dst) as conn:
        assert conn.execute("SELECT x::text FROM docs WHERE id = 1").fetchone()[0] == '<r a="1"/>'
    for method, fp in before.items():
        assert fp.compare(open_engine(dst).fingerprint(method=method)) == [], method
