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
