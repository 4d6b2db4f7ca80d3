"""The staged archive gets the data offsets pg_dump writes into a file, and restores the same.

pg_dump writes its archive to a pipe when crmops backs up, so the table of contents says
"position not set" for every data item; written to a file, pg_dump fills the positions in.
The same database dumped both ways must, once the pipe's archive is patched, be the same
bytes but the header's timestamp; an archive of another layout is left untouched; and a
parallel restore of the patched archive gives the source's native digest.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from crmops.engines.postgres import PostgresEngine
from crmops.engines.postgres_archive import add_data_offsets
from tests.matrix.digest import pg_digest
from tests.services.test_restore_boundary import execute

pytestmark = pytest.mark.postgres

SCHEMA = [
    "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE contacts (id int PRIMARY KEY, account_id int REFERENCES accounts, note text)",
    "CREATE TABLE empty_one (id int)",
    "CREATE TABLE no_key (at timestamptz, what text)",
    "INSERT INTO accounts SELECT n, 'account ' || n FROM generate_series(1, 500) n",
    "INSERT INTO contacts SELECT n, 1 + n % 500, repeat('note ' || n || E' \\t\\\\ ', 20) "
    "FROM generate_series(1, 20000) n",
    "INSERT INTO no_key SELECT '2026-01-01'::timestamptz + n * interval '1 hour', 'event ' || n % 7 "
    "FROM generate_series(1, 3000) n",
    "CREATE VIEW contact_names AS SELECT c.id, a.name FROM contacts c JOIN accounts a ON a.id = c.account_id",
]
#: the header's 7 timestamp integers (archive 1.14: 5 + 3 + 3 bytes, then the compression int)
TIMESTAMP = slice(16, 16 + 7 * 5)


def _dump(url: str, out: Path, *, pipe: bool, large_object: bool = False) -> Path:
    engine = PostgresEngine(url)
    tool = engine._tool("pg_dump")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, **engine._env()}
    args = ["--format=custom", "--compress=0", "--no-password"]
    if pipe:  # as a backup reads it: through a pipe, where pg_dump cannot seek back
        out.write_bytes(subprocess.run(tool.argv(args), stdout=subprocess.PIPE, env=env, check=True,
                                       timeout=300).stdout)
    else:
        subprocess.run(tool.argv([*args, f"--file={out}"]), env=env, check=True, timeout=300)
    return out


def _without_time(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    data[TIMESTAMP] = bytes(TIMESTAMP.stop - TIMESTAMP.start)
    return bytes(data)


def test_patched_pipe_archive_is_what_pg_dump_writes_to_a_file(pg_url_factory: Callable[[], str],
                                                                tmp_path: Path) -> None:
    src = pg_url_factory()
    execute(src, SCHEMA)
    piped = _dump(src, tmp_path / "piped", pipe=True)
    filed = _dump(src, tmp_path / "filed", pipe=False)
    assert piped.read_bytes()[5:8] == bytes([1, 14, 0])  # the archive version this test knows the header of
    assert _without_time(piped) != _without_time(filed)  # the offsets are missing
    assert add_data_offsets(piped) == 4  # every table's data: accounts, contacts, empty_one, no_key
    assert _without_time(piped) == _without_time(filed)
    assert add_data_offsets(filed) == 0  # already there: nothing changed
    # restored by pg_restore -j 2 from the patched file: the source's digest
    dst = pg_url_factory()
    PostgresEngine(dst, jobs=2).restore((), format="pg-custom", staged=piped)
    assert pg_digest(dst) == pg_digest(src)


def test_large_objects_and_unknown_archives_are_left_to_pg_restore(pg_url_factory: Callable[[], str],
                                                                   tmp_path: Path) -> None:
    src = pg_url_factory()
    execute(src, [*SCHEMA[:3], SCHEMA[4], "SELECT lo_from_bytea(0, '\\x00000000000103000000'::bytea)",
                  "SELECT lo_from_bytea(0, 'second object')"])
    piped = _dump(src, tmp_path / "piped", pipe=True)
    filed = _dump(src, tmp_path / "filed", pipe=False)
    patched = add_data_offsets(piped)
    assert patched == 4  # the three tables' data and the large objects' block, which comes last
    assert _without_time(piped) == _without_time(filed)
    dst = pg_url_factory()
    PostgresEngine(dst, jobs=2).restore((), format="pg-custom", staged=piped)
    assert pg_digest(dst) == pg_digest(src)
    assert execute(dst, ["SELECT count(*) FROM pg_largeobject_metadata"])[0][0] == 2
    for odd in (b"PGDMP\x01\x63\x00" + piped.read_bytes()[8:], b"not an archive at all, just text\n" * 4,
                piped.read_bytes()[:200]):
        path = tmp_path / "odd"
        path.write_bytes(odd)
        assert add_data_offsets(path) == 0
        assert path.read_bytes() == odd
