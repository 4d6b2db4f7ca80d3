"""Every object kind survives by name; failures are one line with their own exit code;
no password is ever visible in the process list."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from crmops.engines import open_engine
from tests.conftest import _mysql_connect
from tests.engines.test_roundtrip import roundtrip

PG_OBJECTS = """
CREATE EXTENSION IF NOT EXISTS citext;
CREATE SCHEMA sales;
CREATE TYPE deal_mood AS ENUM ('cold', 'warm', '热');
CREATE TABLE sales.deals (id serial PRIMARY KEY, mood deal_mood, email citext, doc jsonb, raw bytea,
                          at timestamptz, price numeric(14,2));
COMMENT ON TABLE sales.deals IS '商机 table 🚀';
INSERT INTO sales.deals (mood, email, doc, raw, at, price) VALUES
  ('热', 'A@B.cn', '{"k": "值", "n": null}', '\\x00ff00', '2024-02-29 23:59:59.123456+08', 1234567.89),
  (NULL, NULL, NULL, NULL, NULL, NULL);
SELECT setval('sales.deals_id_seq', 4242);
CREATE MATERIALIZED VIEW sales.deal_moods AS SELECT mood, count(*) AS n FROM sales.deals GROUP BY mood;
CREATE FUNCTION sales.double_price(p numeric) RETURNS numeric LANGUAGE sql AS 'SELECT p * 2';
CREATE TABLE sales.visits (id int PRIMARY KEY, meta json, spot point);  -- no hash functions: hashed as text
INSERT INTO sales.visits VALUES (1, '{"via": "门店"}', '(1.5,2)'), (2, NULL, NULL);
CREATE TABLE sales.files (id int PRIMARY KEY, blob_oid oid);
INSERT INTO sales.files VALUES (1, lo_from_bytea(0, '\\x255044462d312e340a00ff'::bytea));
"""


def test_postgres_object_kinds_survive(pg_url_factory) -> None:  # type: ignore[no-untyped-def]
    src, dst = pg_url_factory(), pg_url_factory()
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute(PG_OBJECTS)
    dumped, restored = roundtrip(src, dst)
    assert dumped.compare(restored) == []
    for kind in ("enums", "materialized_views", "routines", "extensions", "large_objects", "sequences"):
        assert restored.objects[kind] >= 1, kind
    with psycopg.connect(dst) as conn:
        q = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        assert q("SELECT mood::text FROM sales.deals WHERE id = 1") == "热"
        assert q("SELECT email FROM sales.deals WHERE email = 'a@b.cn'") == "A@B.cn"  # citext works
        assert q("SELECT doc->>'k' FROM sales.deals WHERE id = 1") == "值"
        assert q("SELECT raw FROM sales.deals WHERE id = 1") == b"\x00\xff\x00"
        assert str(q("SELECT price FROM sales.deals WHERE id = 1")) == "1234567.89"
        assert q("SELECT at FROM sales.deals WHERE id = 1").microsecond == 123456
        assert q("SELECT count(*) FROM sales.deals WHERE mood IS NULL AND doc IS NULL") == 1
        assert q("SELECT last_value FROM sales.deals_id_seq") == 4242
        assert q("SELECT n FROM sales.deal_moods WHERE mood = '热'") == 1
        assert q("SELECT sales.double_price(2.5)") == 5
        assert q("SELECT obj_description('sales.deals'::regclass)") == "商机 table 🚀"
        assert q("SELECT lo_get(blob_oid) FROM sales.files") == b"%PDF-1.4\n\x00\xff"


MYSQL_OBJECTS = [
    "CREATE TABLE deals (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100), raw BLOB, doc JSON, "
    "price DECIMAL(14,2), at DATETIME(6)) CHARACTER SET utf8mb4",
    "INSERT INTO deals (name, raw, doc, price, at) VALUES ('客户 🚀', X'00FF00', '{\"k\": \"值\"}', 99.95, "
    "'2024-02-29 23:59:59.123456'), (NULL, NULL, NULL, NULL, NULL)",
    "ALTER TABLE deals AUTO_INCREMENT = 777",
    "CREATE TABLE deal_log (id INT AUTO_INCREMENT PRIMARY KEY, deal_id INT, "
    "FOREIGN KEY (deal_id) REFERENCES deals(id))",
    "CREATE TRIGGER trg_deal AFTER INSERT ON deals FOR EACH ROW INSERT INTO deal_log (deal_id) VALUES (NEW.id)",
    "CREATE VIEW deal_names AS SELECT name FROM deals WHERE name IS NOT NULL",
    "CREATE FUNCTION double_price(p DECIMAL(14,2)) RETURNS DECIMAL(14,2) DETERMINISTIC RETURN p * 2",
    "CREATE PROCEDURE touch_deals() UPDATE deals SET price = price",
    "CREATE EVENT nightly_cleanup ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM deal_log WHERE deal_id IS NULL",
]


def test_mariadb_object_kinds_survive(mysql_url_factory) -> None:  # type: ignore[no-untyped-def]
    src, dst = mysql_url_factory(), mysql_url_factory()
    conn = _mysql_connect(src, make_url(src).database)
    with conn.cursor() as cur:
        for sql in MYSQL_OBJECTS:
            cur.execute(sql)
    conn.close()
    dumped, restored = roundtrip(src, dst)
    assert dumped.compare(restored) == []
    assert restored.objects["routines"] == 2 and restored.objects["events"] == 1
    assert restored.sequences["deals"] == 777
    conn = _mysql_connect(dst, make_url(dst).database)
    with conn.cursor() as cur:
        cur.execute("SELECT name, raw, JSON_VALUE(doc, '$.k'), price, at FROM deals WHERE id = 1")
        name, raw, k, price, at = cur.fetchone()
        cur.execute("SELECT double_price(2.5), (SELECT COUNT(*) FROM deal_names)")
        doubled, names = cur.fetchone()
        cur.execute("INSERT INTO deals (name) VALUES ('after restore')")
        cur.execute("SELECT COUNT(*) FROM deal_log")
        logged = cur.fetchone()[0]
    conn.close()
    assert (name, raw, k, str(price), at.microsecond) == ("客户 🚀", b"\x00\xff\x00", "值", "99.95", 123456)
    assert float(doubled) == 5.0 and names == 1 and logged == 1  # the trigger fires in the copy


def crmops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "crmops", *args], capture_output=True, text=True, env=full,
                          timeout=120)


def _with(url: str, **parts: object) -> str:
    return make_url(url).set(**parts).render_as_string(hide_password=False)


@pytest.mark.parametrize("kind", ["pg", "mysql"])
def test_each_failure_has_its_own_exit_code(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue(f"{kind}_url")
    password = make_url(url).password
    cases = {
        "wrong password": (_with(url, password="not-the-password"), {}, 11),
        "unreachable host": (_with(url, host="127.0.0.1", port=9), {}, 10),
        "missing database": (_with(url, database="no_such_crm"), {}, 12),
        "missing tools": (url, {"CRMOPS_TOOLS_PATH": str(tmp_path)}, 13),
    }
    for what, (target, env, code) in cases.items():
        r = crmops("db", "check", "--url", "${CRM_URL}", env={**env, "CRM_URL": target})  # no password in argv
        assert r.returncode == code, (what, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, what
        assert password not in r.stderr and password not in r.stdout, what


def test_missing_sqlite_file(tmp_path: Path) -> None:
    r = crmops("db", "check", "--url", f"sqlite:///{tmp_path}/none.db")
    assert r.returncode == 12 and "not found" in r.stderr


def _visible_secret(secret: str, tools: set[str]) -> list[str]:
    """Processes whose command line shows the secret; adds dump tools seen running to tools."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\x00", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if secret in cmdline:
                found.append(cmdline)
            if "pg_dump" in cmdline or "mariadb-dump" in cmdline or "mysqldump" in cmdline:
                tools.add(cmdline.split()[0])
    return found


@pytest.mark.parametrize("kind", ["pg", "mysql"])
def test_no_password_in_the_process_list(kind: str, request: pytest.FixtureRequest) -> None:
    from crmops.democrm.load import create

    url = request.getfixturevalue(f"{kind}_url")
    secret = make_url(url).password
    assert secret and len(secret) >= 16
    create(url, size="small")
    seen: list[str] = []
    tools: set[str] = set()
    with open_engine(url).dump() as d:
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.extend(_visible_secret(secret, tools))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            for _ in d.chunks():
                time.sleep(0.05)  # a slow reader keeps the tool alive long enough to be watched
        finally:
            stop.set()
            watcher.join()
    assert tools, "the dump tool was never seen running"
    assert seen == []


def _fake_tool(folder: Path, name: str, says: str) -> None:
    """An executable that answers --version like an old client would (and cannot dump)."""
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{says}'\nexit 1\n")
    path.chmod(0o755)


@pytest.mark.parametrize("kind", ["pg", "mysql"])
def test_older_client_tools_are_refused(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue(f"{kind}_url")
    if kind == "pg":
        for name in ("pg_dump", "pg_restore"):
            _fake_tool(tmp_path, name, f"{name} (PostgreSQL) 13.2")
    else:
        _fake_tool(tmp_path, "mariadb-dump", "mariadb-dump  Ver 10.19 Distrib 10.5.2-MariaDB, for debian-linux-gnu")
        _fake_tool(tmp_path, "mariadb", "mariadb  Ver 15.1 Distrib 10.5.2-MariaDB, for debian-linux-gnu")
    r = crmops("db", "check", "--url", "${CRM_URL}", env={"CRMOPS_TOOLS_PATH": str(tmp_path), "CRM_URL": url})
    assert r.returncode == 13, r.stderr
    assert "older than the server" in r.stderr and r.stderr.count("\n") == 1
    assert ("postgresql-client-15" if kind == "pg" else "mariadb-client") in r.stderr


def test_real_tools_report_the_release_they_belong_to() -> None:
    from crmops.engines.tools import find_tool, tool_version

    pg_dump, mariadb_dump = find_tool(["pg_dump"]), find_tool(["mariadb-dump", "mysqldump"])
    assert pg_dump and mariadb_dump
    assert tool_version(pg_dump)[0][0] >= 15
    # "Ver 10.19" is the tool's own number; the Distrib release is what must match the server
    assert tool_version(mariadb_dump)[0] >= (10, 11)


def test_mariadb_dump_holds_writers_only_briefly(mysql_url: str) -> None:
    """Writers are let go once the dump's snapshot is open, not when the dump ends: with nothing of
    its output read yet (mariadb-dump waits on its full pipe, mid-dump), a write commits at once,
    and the dump does not see it. No clock: on a loaded machine the moment itself takes seconds."""
    from crmops.democrm.load import create

    create(mysql_url, size="small")
    conn = _mysql_connect(mysql_url, make_url(mysql_url).database)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE side_notes (id int PRIMARY KEY)")
    with open_engine(mysql_url).dump() as d:
        with conn.cursor() as cur:
            cur.execute("SET SESSION lock_wait_timeout = 5")  # a held writer would fail here, not wait on
            cur.execute("INSERT INTO side_notes VALUES (1)")
        conn.commit()
        assert d._proc.proc.poll() is None, "the dump ended before the write: it proves nothing"
        assert sum(len(p) for p in d.chunks()) > 1 << 20
        assert d.fingerprint.tables["activities"].rows == 2500
        assert d.fingerprint.tables["side_notes"].rows == 0  # the write came after the snapshot
    conn.close()
    assert d.lock_seconds > 0


def test_mariadb_dump_sees_its_snapshot_while_other_backups_keep_innodb_trx_busy(mysql_url: str) -> None:
    """InnoDB refreshes information_schema.INNODB_TRX only after 0.1 s without readers. Backups of other
    databases of the same server polling it at the same moment kept it stale for each other: the dump's
    transaction never showed, writers on the whole server were held 30 s and the backup failed. Here three
    readers keep it busy while a dump too large for its pipe (so it cannot simply end) opens its snapshot."""
    from crmops.engines.mysql_snapshot import LOCK_WAIT_LIMIT

    conn = _mysql_connect(mysql_url, make_url(mysql_url).database)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        cur.execute("INSERT INTO notes SELECT seq, REPEAT('call back ', 100) FROM seq_1_to_400")  # 400 KB
    conn.close()
    stop = threading.Event()

    def read() -> None:
        reader = _mysql_connect(mysql_url)
        with reader.cursor() as cur:
            while not stop.is_set():
                cur.execute("SELECT COUNT(*) FROM information_schema.INNODB_TRX")
                cur.fetchall()
                time.sleep(0.02)
        reader.close()

    readers = [threading.Thread(target=read, daemon=True) for _ in range(3)]
    for r in readers:
        r.start()
    try:
        with open_engine(mysql_url).dump() as d:
            pieces = list(d.chunks())
            assert d.fingerprint.tables["notes"].rows == 400
    finally:
        stop.set()
        for r in readers:
            r.join(timeout=10)
    assert sum(map(len, pieces)) > 400_000
    assert 0 < d.lock_seconds < LOCK_WAIT_LIMIT / 3


def test_mariadb_dump_holds_the_servers_writers_no_longer_than_configured(mysql_url_factory) -> None:  # type: ignore[no-untyped-def]
    """FLUSH TABLES WITH READ LOCK waits for running writes anywhere on the server (here a long UPDATE in
    another database) and holds every writer meanwhile: past database.hold_writers_seconds the backup
    fails with one line naming why, lets them go, and the other database's write completes."""
    from crmops.config import DatabaseConfig
    from crmops.errors import DatabaseError

    mine, other = mysql_url_factory(), mysql_url_factory()
    for url in (mine, other):
        conn = _mysql_connect(url, make_url(url).database)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            cur.execute("INSERT INTO notes SELECT seq, 'call back' FROM seq_1_to_400")
        conn.close()
    busy = _mysql_connect(other, make_url(other).database)
    done: list[int] = []

    def long_write() -> None:  # about 6 s: 400 rows, 15 ms each
        with busy.cursor() as cur:
            done.append(cur.execute("UPDATE notes SET body = CONCAT(body, SLEEP(0.015))"))

    writer = threading.Thread(target=long_write)
    writer.start()
    watch = _mysql_connect(mine)
    with watch.cursor() as cur:  # until the UPDATE runs: from then on it holds the read lock back for seconds
        while not cur.execute("SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s AND INFO LIKE 'UPDATE%%'",
                              (busy.thread_id(),)):
            assert writer.is_alive(), done
    watch.close()
    t0 = time.monotonic()
    with pytest.raises(DatabaseError) as e, open_engine(mine, DatabaseConfig(url=mine, hold_writers_seconds=1)).dump():
        pass
    waited = time.monotonic() - t0
    writer.join(timeout=60)
    busy.close()
    assert "FLUSH TABLES WITH READ LOCK" in e.value.line() and "waited 1 s behind a long write" in e.value.line()
    assert "hold_writers_seconds" in e.value.line()
    assert waited < 5.0 and done == [400]  # given up well before the write ended; the write was not harmed


def _dump(url: str) -> tuple[list[bytes], str]:
    with open_engine(url).dump() as d:
        return list(d.chunks()), d.format


def test_postgres_restores_chosen_tables_with_what_belongs_to_them(pg_url_factory) -> None:  # type: ignore[no-untyped-def]
    src = pg_url_factory()
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute(PG_OBJECTS)
        conn.execute("CREATE TABLE sales.notes (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                     "deal_id int REFERENCES sales.deals(id), body text)")
        conn.execute("INSERT INTO sales.notes (deal_id, body) VALUES (1, '跟进')")
        conn.execute("CREATE INDEX notes_body ON sales.notes (body)")
    pieces, fmt = _dump(src)

    only_notes = pg_url_factory()
    open_engine(only_notes).restore(iter(pieces), format=fmt, tables=["sales.notes"])
    with psycopg.connect(only_notes) as conn:
        q = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
        assert q("SELECT tablename FROM pg_tables WHERE schemaname = 'sales'") == [("notes",)]
        assert q("SELECT body FROM sales.notes") == [("跟进",)]
        assert q("SELECT indexname FROM pg_indexes WHERE tablename = 'notes' ORDER BY 1") == [
            ("notes_body",), ("notes_pkey",)]
        # the foreign key would point at rows that were not restored
        assert q("SELECT count(*) FROM pg_constraint WHERE contype = 'f'") == [(0,)]
        assert q("INSERT INTO sales.notes (body) VALUES ('new') RETURNING id") == [(2,)]

    only_deals = pg_url_factory()
    open_engine(only_deals).restore(iter(pieces), format=fmt, tables=["deals"])
    with psycopg.connect(only_deals) as conn:
        q = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        assert q("SELECT count(*) FROM sales.deals") == 2
        assert q("SELECT mood::text FROM sales.deals WHERE id = 1") == "热"  # its enum came along
        assert q("SELECT last_value FROM sales.deals_id_seq") == 4242
        assert q("SELECT obj_description('sales.deals'::regclass)") == "商机 table 🚀"
        assert q("SELECT n FROM sales.deal_moods WHERE mood = '热'") == 1  # a view over it alone
        assert q("SELECT to_regclass('sales.files')") is None

    from crmops.errors import DatabaseError

    with pytest.raises(DatabaseError, match="not in the snapshot"):
        open_engine(pg_url_factory()).restore(iter(pieces), format=fmt, tables=["no_such_table"])


def test_mariadb_restore_of_an_unknown_table_is_an_error(mysql_url_factory) -> None:  # type: ignore[no-untyped-def]
    from crmops.errors import DatabaseError

    src = mysql_url_factory()
    conn = _mysql_connect(src, make_url(src).database)
    with conn.cursor() as cur:
        for sql in MYSQL_OBJECTS[:5]:
            cur.execute(sql)
    conn.close()
    pieces, fmt = _dump(src)
    with pytest.raises(DatabaseError, match="'no_such_table' is not in the snapshot"):
        open_engine(mysql_url_factory()).restore(iter(pieces), format=fmt, tables=["deals", "no_such_table"])


def _children(name: str) -> list[int]:
    """Our child processes running the named program."""
    pids = []
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        for pid in Path(f"/proc/{os.getpid()}/task/{tid}/children").read_text().split():
            if name in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")[0].decode():
                pids.append(int(pid))
    return pids


@pytest.mark.parametrize("kind", ["pg", "mysql"])
def test_a_dump_tool_killed_midway_is_a_database_error(kind: str, request: pytest.FixtureRequest) -> None:
    import signal

    from crmops.democrm.load import create
    from crmops.errors import DatabaseError

    url = request.getfixturevalue(f"{kind}_url")
    create(url, size="small")
    tool = "pg_dump" if kind == "pg" else "dump"
    with pytest.raises(DatabaseError, match="failed") as caught, open_engine(url).dump() as d:
        for i, _ in enumerate(d.chunks()):
            if i == 0:
                victims = _children(tool)
                assert len(victims) == 1
                os.kill(victims[0], signal.SIGKILL)
    assert make_url(url).password not in str(caught.value)


@pytest.mark.parametrize("kind", ["pg", "mysql"])
def test_a_broken_dump_fails_the_restore_with_the_tools_words(kind: str, request: pytest.FixtureRequest) -> None:
    from crmops.errors import DatabaseError

    url = request.getfixturevalue(f"{kind}_url")
    fmt = "pg-custom" if kind == "pg" else "mysql-sql"
    garbage = [b"PGDMP\x01\x0e\x00 this is not an archive" if kind == "pg" else b"CREATE TABLE broken (;\n"]
    with pytest.raises(DatabaseError) as caught:
        open_engine(url).restore(iter(garbage), format=fmt)
    message = str(caught.value)
    assert ("pg_restore failed" if kind == "pg" else "mysql failed") in message
    assert make_url(url).password not in message and "\n" not in message
