"""Dump -> restore -> equal fingerprints, on the real servers, even while the CRM writes."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from crmops.dburl import parse
from crmops.democrm.load import create
from crmops.engines import Fingerprint, open_engine

ENGINES = ["sqlite", "pg", "mysql"]


@pytest.fixture
def pair(request: pytest.FixtureRequest, tmp_path) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(source URL, empty target URL) for the engine named by the test's parameter."""
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'src.db'}", f"sqlite:///{tmp_path / 'dst.db'}"
    factory: Callable[[], str] = request.getfixturevalue(f"{'pg' if kind == 'pg' else 'mysql'}_url_factory")
    return factory(), factory()


def roundtrip(src: str, dst: str, slow: float = 0.0) -> tuple[Fingerprint, Fingerprint]:
    engine = open_engine(src)
    with engine.dump() as d:
        pieces = []
        for piece in d.chunks():
            pieces.append(piece)
            time.sleep(slow)
        dumped = d.fingerprint
        fmt = d.format
    target = open_engine(dst)
    assert target.is_empty()
    target.restore(iter(pieces), format=fmt)
    return dumped, target.fingerprint()


@pytest.mark.parametrize("pair", ENGINES, indirect=True)
def test_demo_crm_round_trip(pair: tuple[str, str]) -> None:
    src, dst = pair
    create(src, size="small", version="2.0")
    dumped, restored = roundtrip(src, dst)
    assert dumped.compare(restored) == []
    assert dumped.compare(open_engine(src).fingerprint()) == []
    assert dumped.tables["activities"].rows == 2500
    assert dumped.objects["views"] == 1 and dumped.objects["triggers"] == 1
    assert open_engine(dst).schema_revision() == "d2_0003"
    # the content really came back, byte for byte where it matters
    eng = sa.create_engine(parse(dst).to_sqlalchemy())
    with eng.connect() as conn:
        body = conn.execute(sa.text("SELECT body FROM activities WHERE body LIKE '%🚀%' ORDER BY id LIMIT 1")).scalar()
        thumb = conn.execute(sa.text("SELECT thumbnail FROM attachments WHERE thumbnail IS NOT NULL "
                                     "ORDER BY id LIMIT 1")).scalar()
    eng.dispose()
    assert "🚀" in body and b"\x00\xff\xfe" in bytes(thumb)


def test_fingerprint_sees_a_changed_row(sqlite_url: str) -> None:
    create(sqlite_url, size="small")
    before = open_engine(sqlite_url).fingerprint()
    eng = sa.create_engine(parse(sqlite_url).to_sqlalchemy())
    with eng.begin() as conn:
        conn.execute(sa.text("UPDATE contacts SET phone = NULL WHERE id = 17"))
    eng.dispose()
    diffs = before.compare(open_engine(sqlite_url).fingerprint())
    assert [(d.name, d.reason) for d in diffs] == [("contacts", "content checksum differs")]


def _writer(url: str, stop, count) -> None:  # type: ignore[no-untyped-def]
    """Another CRM session: inserts and updates as fast as it can until told to stop."""
    eng = sa.create_engine(parse(url).to_sqlalchemy())
    i = 0
    while not stop.is_set():
        with eng.begin() as conn:
            conn.execute(sa.text("INSERT INTO activities (kind, user_id, subject, body, occurred_at) "
                                 "VALUES ('note', 1, :s, :b, :t)"),
                         {"s": f"live write {i}", "b": "写入 ✍️ " * 20, "t": "2025-06-01 10:00:00"})
            conn.execute(sa.text("UPDATE contacts SET notes = :n WHERE id = :id"),
                         {"n": f"edited {i}", "id": 1 + i % 500})
        i += 1
        count.value = i
    eng.dispose()


@pytest.mark.parametrize("pair", ENGINES, indirect=True)
def test_consistent_while_the_crm_writes(pair: tuple[str, str]) -> None:
    src, dst = pair
    create(src, size="small")
    ctx = mp.get_context("spawn")
    stop, count = ctx.Event(), ctx.Value("i", 0)
    writer = ctx.Process(target=_writer, args=(src, stop, count))
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while count.value < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        started = count.value
        dumped, restored = roundtrip(src, dst, slow=0.02)
        during = count.value - started
    finally:
        stop.set()
        writer.join(30)
    assert writer.exitcode == 0
    assert during > 5, "the writer must really have written during the dump"
    assert dumped.compare(restored) == []
    # and the source moved on: the dump is a point in the past, not the present
    assert open_engine(src).fingerprint().tables["activities"].rows > dumped.tables["activities"].rows


@pytest.mark.slow
@pytest.mark.parametrize("pair", ENGINES, indirect=True)
def test_medium_demo_crm_round_trip(pair: tuple[str, str]) -> None:
    """The size the issue names: ~125,000 rows with every data kind, dumped and restored whole."""
    src, dst = pair
    from tests.democache import medium_pg, medium_sqlite

    # PostgreSQL and SQLite: a copy of the one built for this demo CRM code (tests/democache.py)
    copied = {"postgresql": medium_pg, "sqlite": medium_sqlite}.get(parse(src).get_backend_name())
    built = copied(src, "2.0") if copied else create(src, size="medium", version="2.0")
    dumped, restored = roundtrip(src, dst)
    assert dumped.compare(restored) == []
    assert restored.tables["activities"].rows == built.rows["activities"] == 90000


def test_postgres_parallel_restore_spools_the_stream(pg_url_factory) -> None:  # type: ignore[no-untyped-def]
    from crmops.engines.postgres import PostgresEngine

    src, dst = pg_url_factory(), pg_url_factory()
    create(src, size="small")
    with open_engine(src).dump() as d:
        pieces = list(d.chunks())
        dumped = d.fingerprint
    PostgresEngine(dst, jobs=2).restore(iter(pieces), format="pg-custom")  # pg_restore -j 2 from a spooled file
    assert dumped.compare(open_engine(dst).fingerprint()) == []
