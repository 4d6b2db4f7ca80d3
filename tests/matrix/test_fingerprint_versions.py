"""The canonical fingerprint is the same on every supported server version and whatever the server's
settings, for a table of the values whose text forms are tricky; a value really changed is named by its
column. One server per version and module (`-k pg17`); the copies between versions are `-k pg13-to`
and `-k mariadb10_5-to` (docs/TESTING.md, "What differs between server versions")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from crmops.engine_upgrade.compare import compare_across, differing_columns
from crmops.engines import TableFingerprint, open_engine
from tests.matrix.servers import BY_ID, Server, params, run_server

pytestmark = [pytest.mark.docker, pytest.mark.matrix, pytest.mark.slow]

PG_TABLE = """
CREATE DOMAIN price AS numeric(14, 4);
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE tricky (id int PRIMARY KEY, f4 float4, f8 float8, num numeric, num2 numeric(12, 4), p price,
  iv interval, tstz timestamptz, ts timestamp, d date, tm timetz, js json, jb jsonb, m money, by bytea,
  arr float8[], nums numeric[], b bit(12), txt text, x xml, pt point, ip inet, tr tstzrange, e mood);
INSERT INTO tricky VALUES
 (1, 'NaN', 'NaN', 'NaN', 1.5, 2.50, '1 year 2 months 3 days 04:05:06.789', '2024-03-31 01:30:00+01',
  '2024-03-31 02:30:00', '2024-02-29', '12:00:00+05:30', '{"b": 1,  "a": [1, 2.50]}',
  '{"b": 1,  "a": [1, 2.50, 1e2]}', 12.34, '\\x00ff', '{0.1,-0,NaN}', '{1.50,2}', B'101010101010',
  'emoji 😀 ß', '<a b="1">x</a>', '(0.1,1e-300)', '10.0.0.1/8', '[2024-01-01 00:00+00,2024-06-01 00:00+02)', 'ok'),
 (2, '-0', '-0', '0.000000000000000000000000000000000000001', -0.0001, 0, '-1 mon +2 days -03:00',
  '2024-10-27 02:30:00 Europe/Berlin', 'infinity', '-infinity', '00:00:00-12', '[ ]',
  '{"a":{"z":null,"y":true}}', -0.01, '', '{}', '{}', B'000000000000', '', '', '(-0,0)', '::1', 'empty', 'sad'),
 (3, 3.4028235e38, 1e-300,
  12345678901234567890123456789012345678901234567890.123456789012345678901234567890, 99999999.9999, 1.0001,
  '2 years 13 months 400 days 25:59:59', '1970-01-01 00:00:00.000001+14', '0001-01-01 00:00:00 BC',
  '294276-12-31', '23:59:59.999999+14', '{"k":"\\u00e9"}', '{"k":"\\u00e9", "n": 1.0e-5}',
  92233720368547758.07, '\\xdeadbeef', '{1e-300,1.7976931348623157e308,Infinity}', '{NaN,0.10}',
  B'111111111111', E'tab\\tnew\\nline "quote" \\\\ back', NULL, '(Infinity,-Infinity)',
  '2001:db8::ff00:42:8329/128', '(,)', 'happy'),
 (4, 1e-45, 0.1, 1e-20, NULL, NULL, '0', '2021-03-14 02:30:00 America/New_York', '2000-01-01 00:00:00.5',
  NULL, NULL, 'null', 'null', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (5, 0.1, 0.30000000000000004, 1.0E+10, 0, 7, '1.5 days 0.5 months', '2038-01-19 03:14:08+00',
  '2024-01-01 12:00', '2000-01-01', '00:00:00+00', '{"a":1,"a":2}', '{"a":1,"a":2}', 0, '\\x',
  '{{1,2},{3,4}}', '{-1.000}', B'100000000001', 'ä', '<?xml version="1.0"?><r/>', '(1,2)', '0.0.0.0/0',
  '[2020-01-01,)', NULL);
"""

MY_TABLE = [
    """CREATE TABLE tricky (id int PRIMARY KEY, f FLOAT, d DOUBLE, fu FLOAT(10,3), dec1 DECIMAL(65,30),
       dec2 DECIMAL(10,2), js JSON, ts TIMESTAMP(6) NULL, dt DATETIME(6), dt0 DATETIME, tm TIME(3), b BIT(12),
       e ENUM('a','b','ü'), s SET('x','y','z'), ip INET6, y YEAR, t TEXT, bl BLOB,
       v VARCHAR(50) CHARACTER SET latin1, ci VARCHAR(20) COLLATE utf8mb4_general_ci, bo BOOLEAN,
       dbl2 DOUBLE(10,4)) CHARACTER SET utf8mb4""",
    """INSERT INTO tricky VALUES
     (1, 0.1, 0.1, 1.5, 1.5, 1.50, '{"b": 1,  "a": [1, 2.50]}', '2024-03-31 01:30:00.5',
      '2024-03-31 02:30:00.000001', '2024-03-31 02:30:00', '-838:59:59.000', b'101010101010', 'ü', 'x,z', '::1',
      2024, 'emoji 😀 ß', x'00ff', 'café', 'Straße', 1, 1.5),
     (2, -0.0, -0.0, -0.0, -0.0001, 0, '[ ]', '1970-01-01 00:00:01', '1000-01-01 00:00:00', '9999-12-31 23:59:59',
      '00:00:00', b'0', 'a', '', '::ffff:10.0.0.1', 1901, '', '', '', '', 0, -0.0),
     (3, 3.40282e38, 1e-300, 999999.999, 12345678901234567890123456789012345.123456789012345678901234567890,
      99999999.99, '{"k":"\\\\u00e9", "n": 1.0e-5}', '2038-01-19 03:14:07.999999', '2024-10-27 02:30:00',
      '2024-10-27 02:30:00', '838:59:59.999', b'111111111111', 'b', 'x,y,z', 'ffff::1', 2155,
      'tab\\tnew\\nline \\"q\\" \\\\\\\\ back', x'deadbeef', NULL, NULL, NULL, 123456.7891),
     (4, 1e-38, 0.30000000000000004, NULL, 1e-30, -0.01, 'null', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
      NULL, NULL, NULL, NULL, NULL, NULL, NULL),
     (5, 0.5, 1.7976931348623157e308, 0.001, 0, 1, '{"a":1,"a":2}', '2000-01-01 00:00:00',
      '2000-01-01 00:00:00.1', '2000-01-01', '12:00', b'100000000001', 'a', 'y', '2001:db8::ff00:42:8329', 0,
      'ä', x'', 'Ä', 'x', 1, 0.00005),
     (6, 16777217, 123456789012345678, 1.0005, 0.000000000000000000000000000001, 0.005, '1.0',
      '2024-03-10 02:30:00', '2024-03-10 02:30:00', '2024-03-10 02:30:00', '-00:00:01', b'1', NULL, 'x', '::', 99,
      '😀😀', x'ff', 'x', 'x', 0, 1e5)""",
]

#: the canonical checksum every version computes for the table above (a change of the canonical
#: forms changes these, and then needs a new method name: stored fingerprints name theirs)
GOLDEN = {"postgresql": TableFingerprint(5, "ffffffffffffffff76b0f7207928cef6"),
          "mysql": TableFingerprint(6, "0000000000000003d7cef39723fc05d7")}

#: PostgreSQL settings a server may have that change the text forms (a locale's lc_monetary may be missing)
PG_OTHER_SETTINGS = {"TimeZone": "America/New_York", "DateStyle": "SQL, DMY", "IntervalStyle": "sql_standard",
                     "extra_float_digits": "0", "bytea_output": "escape"}


def fill(url: str) -> None:
    engine = open_engine(url)
    if engine.name == "postgresql":
        with engine.connect() as conn:  # type: ignore[attr-defined]
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute("SET DateStyle = 'ISO, MDY'")
            for sql in PG_TABLE.split(";\n"):
                if sql.strip():
                    conn.execute(sql)
        return
    conn = engine.connect()  # type: ignore[attr-defined]
    try:
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            for sql in MY_TABLE:
                cur.execute(sql)
    finally:
        conn.close()


def execute(url: str, sql: str) -> None:
    engine = open_engine(url)
    if engine.name == "postgresql":
        with engine.connect() as conn:  # type: ignore[attr-defined]
            conn.execute(sql)
        return
    conn = engine.connect()  # type: ignore[attr-defined]
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def methods(url: str) -> list[str]:
    engine = open_engine(url)
    if engine.name == "mysql":
        return ["", "canonical"]
    return ["", "canonical"] + (["record-hash"] if engine.server_major() >= 14 else [])


@pytest.fixture(scope="module", params=params())
def server(request: pytest.FixtureRequest, docker_client) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    with run_server(docker_client, request.param) as s:
        yield s


def test_tricky_values_fingerprint_the_same_on_every_version(server: Server) -> None:
    url = server.create_database()
    fill(url)
    engine = open_engine(url)
    fp = engine.fingerprint(method="canonical")
    assert fp.method == "canonical"
    assert fp.tables["tricky"] == GOLDEN[engine.name], (server.version.id, fp.tables["tricky"])
    # the newest way on each version: canonical where the text forms cost no more (13, MariaDB)
    assert engine.fingerprint().method == ("record-hash" if server.version.id in ("pg15", "pg17") else "canonical")


@contextmanager
def other_settings(server: Server, url: str) -> Iterator[None]:
    """New sessions on url write values the other way: a database's settings on PostgreSQL, the server's
    time zone on MariaDB (one setting for all its databases, so the old side is fingerprinted first)."""
    if server.version.engine == "postgresql":
        database = url.rsplit("/", 1)[1]
        for name, value in PG_OTHER_SETTINGS.items():
            execute(url, f"ALTER DATABASE {database} SET \"{name}\" = '{value}'")
        yield
        return
    execute(url, "SET GLOBAL time_zone = '-05:00'")
    try:
        yield
    finally:
        execute(url, "SET GLOBAL time_zone = SYSTEM")


def test_settings_change_no_canonical_value_and_a_changed_one_is_named(server: Server) -> None:
    same, other = server.create_database(), server.create_database()
    fill(same)
    fill(other)
    source, target = open_engine(same), open_engine(other)
    expected = {m: source.fingerprint(method=m) for m in methods(same)}
    with other_settings(server, other):
        assert expected["canonical"].compare(target.fingerprint(method="canonical")) == []
        # the first way hashes the text the settings write: it alone would call the copy different
        assert [d.name for d in expected[""].compare(target.fingerprint(method=""))] == ["tricky"]
        for method, fp in expected.items():
            assert compare_across(fp, source, target) == [], method

        changed = "jb = jb || '{\"new\": 1}'" if server.version.engine == "postgresql" else "js = '{\"a\":1,\"a\":3}'"
        execute(other, f"UPDATE tricky SET {changed} WHERE id = 5")
        column = changed.split(" ", 1)[0]
        for method, fp in expected.items():
            found = compare_across(fp, source, target)
            assert [(d["name"], d.get("columns")) for d in found] == [("tricky", [column])], (method, found)
        assert differing_columns(source, target, "tricky") == [column]


# -- a copy from the oldest to the newest version, as the engine upgrade makes it ---------------------

PAIRS = [pytest.param(("pg13", "pg17"), id="pg13-to-pg17"),
         pytest.param(("mariadb10_5", "mariadb11_8"), id="mariadb10_5-to-mariadb11_8")]


@pytest.fixture(scope="module", params=PAIRS)
def pair(request: pytest.FixtureRequest, docker_client) -> Iterator[tuple[Server, Server]]:  # type: ignore[no-untyped-def]
    old_id, new_id = request.param
    with run_server(docker_client, BY_ID[old_id]) as old, run_server(docker_client, BY_ID[new_id]) as new:
        yield old, new


def _copy(old_url: str, new_url: str) -> Any:
    source, target = open_engine(old_url), open_engine(new_url)
    with source.dump() as dump:
        target.restore(dump.chunks(), format=dump.format)
        return dump.fingerprint


def test_a_copy_to_the_newest_version_names_only_what_really_differs(pair: tuple[Server, Server]) -> None:
    old, new = pair
    old_url, new_url = old.create_database(), new.create_database()
    fill(old_url)
    expected = _copy(old_url, new_url)
    assert expected.method == "canonical"
    source, target = open_engine(old_url), open_engine(new_url)
    found = [(d["name"], d.get("columns")) for d in compare_across(expected, source, target)]
    if old.version.engine == "postgresql":
        # pg_dump drops xml's `<?xml version="1.0"?>`: the same document, so no difference
        assert found == [], found
        execute(new_url, "UPDATE tricky SET tstz = tstz + interval '1 microsecond' WHERE id = 3")
        found = [(d["name"], d.get("columns")) for d in compare_across(expected, source, target)]
        assert found == [("tricky", ["tstz"])], found
    else:
        # mysqldump writes FLOAT with 6 digits: 16777216 arrives as 16777200, a real difference,
        # which the first way (FLOAT as its 6-digit text) cannot see
        assert found == [("tricky", ["f"])], found
        assert compare_across(source.fingerprint(method=""), source, target) == []
