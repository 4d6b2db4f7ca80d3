"""Peak memory of crmops while it streams a big database's dump to /dev/null.

    .venv/bin/python bench/engine_memory.py                   # ~1 GB per engine, pg mysql sqlite
    .venv/bin/python bench/engine_memory.py --mb 2000 --engines pg
    .venv/bin/python bench/engine_memory.py --url postgresql://...   # an existing database, e.g. the large demo CRM

Needs the test bed (scripts/testbed.sh up) unless --url is given. The big database is
generated on the server (generate_series / MariaDB's sequence engine / a recursive CTE),
which takes seconds where the demo CRM's row-by-row loader would take an hour for 2 GB;
it is kept and re-used by later runs. Each dump runs in its own Python process, which
reports its kernel-measured peak RSS (VmHWM) once the stream and the fingerprint are
done; the dump tool's own memory is a separate process and not counted. The target is
below 200 MB whatever the database's size. A measurement, never a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BED = Path(os.environ.get("CRMOPS_TESTBED_DIR", ROOT / ".testbed"))
NAME = "crmops_bench_memory"
#: one row is about 1 KB of CRM-like text and bytes
ROW_KB = 1

CHILD = """
import json, sys, time
from crmops.engines import open_engine
t0 = time.monotonic()
size = 0
with open_engine(sys.argv[1]).dump() as d, open('/dev/null', 'wb') as sink:
    for piece in d.chunks():
        sink.write(piece)
        size += len(piece)
    fp = d.fingerprint
    lock = getattr(d, 'lock_seconds', None)
wall = time.monotonic() - t0
hwm = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))
print(json.dumps({'seconds': wall, 'bytes': size, 'peak_rss_kb': hwm, 'lock_seconds': lock,
                  'rows': sum(t.rows for t in fp.tables.values())}))
"""


def bed_urls() -> dict[str, str]:
    env = dict(line.split("=", 1) for line in (BED / "env").read_text().splitlines() if "=" in line)
    return {"pg": env["CRMOPS_TEST_PG_URL"], "mysql": env["CRMOPS_TEST_MYSQL_URL"]}


def with_database(admin_url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def build_pg(admin_url: str, rows: int) -> str:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (NAME,)).fetchone():
            conn.execute(f'CREATE DATABASE "{NAME}"')
    url = with_database(admin_url, NAME)
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('notes_big')").fetchone()[0] is not None
        if not exists or conn.execute("SELECT count(*) FROM notes_big").fetchone()[0] != rows:
            print(f"building {rows:,} rows in PostgreSQL database {NAME} ...", flush=True)
            conn.execute("DROP TABLE IF EXISTS notes_big")
            conn.execute("CREATE TABLE notes_big (id bigserial PRIMARY KEY, subject text, body text, raw bytea, "
                         "doc jsonb, at timestamptz)")
            conn.execute("INSERT INTO notes_big (subject, body, raw, doc, at) "
                         "SELECT '客户跟进 ' || g, repeat(md5(g::text) || ' 备注 🚀 ', 18), "
                         "decode(md5(g::text) || md5((g + 1)::text), 'hex'), "
                         "jsonb_build_object('n', g, 'stage', 'won'), now() - g * interval '1 minute' "
                         "FROM generate_series(1, %s) g", (rows,))
    return url


def build_mysql(admin_url: str, rows: int) -> str:
    import pymysql
    from sqlalchemy.engine import make_url

    u = make_url(admin_url)
    conn = pymysql.connect(host=u.host, port=u.port, user=u.username, password=u.password, autocommit=True,
                           charset="utf8mb4")
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS `{NAME}` CHARACTER SET utf8mb4")
        cur.execute(f"USE `{NAME}`")
        cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s "
                    "AND table_name = 'notes_big'", (NAME,))
        have = -1
        if cur.fetchone()[0]:
            cur.execute("SELECT COUNT(*) FROM notes_big")
            have = cur.fetchone()[0]
        if have != rows:
            print(f"building {rows:,} rows in MariaDB database {NAME} ...", flush=True)
            cur.execute("DROP TABLE IF EXISTS notes_big")
            cur.execute("CREATE TABLE notes_big (id BIGINT AUTO_INCREMENT PRIMARY KEY, subject VARCHAR(200), "
                        "body TEXT, raw VARBINARY(32), doc JSON, at DATETIME(6))")
            cur.execute("INSERT INTO notes_big (subject, body, raw, doc, at) "
                        "SELECT CONCAT('客户跟进 ', seq), REPEAT(CONCAT(MD5(seq), ' 备注 🚀 '), 18), "
                        "UNHEX(CONCAT(MD5(seq), MD5(seq + 1))), JSON_OBJECT('n', seq, 'stage', 'won'), "
                        f"NOW(6) - INTERVAL seq MINUTE FROM seq_1_to_{rows}")
    conn.close()
    return with_database(admin_url, NAME)


def build_sqlite(rows: int) -> str:
    import sqlite3

    path = Path(tempfile.gettempdir()) / f"{NAME}.db"
    conn = sqlite3.connect(path)
    have = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'notes_big'").fetchone()[0]
    if not have or conn.execute("SELECT count(*) FROM notes_big").fetchone()[0] != rows:
        print(f"building {rows:,} rows in SQLite file {path} ...", flush=True)
        conn.execute("DROP TABLE IF EXISTS notes_big")
        conn.execute("CREATE TABLE notes_big (id INTEGER PRIMARY KEY AUTOINCREMENT, subject TEXT, body TEXT, "
                     "raw BLOB, doc TEXT, at TEXT)")
        conn.execute("WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?) "
                     "INSERT INTO notes_big (subject, body, raw, doc, at) "
                     "SELECT '客户跟进 ' || n, printf('%.*c', 900, 'x') || ' 备注 🚀', randomblob(32), "
                     "json_object('n', n, 'stage', 'won'), datetime('now', '-' || n || ' minutes') FROM g",
                     (rows,))
        conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def measure(url: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, url], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"dump failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else '?'}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=1000, help="approximate size of the generated table per engine")
    ap.add_argument("--engines", default="pg,mysql,sqlite")
    ap.add_argument("--url", help="measure this existing database instead of generating one")
    args = ap.parse_args()
    rows = args.mb * 1024 // ROW_KB
    if args.url:
        targets = {"url": args.url}
    else:
        admin = bed_urls() if {"pg", "mysql"} & set(args.engines.split(",")) else {}
        build = {"pg": lambda: build_pg(admin["pg"], rows), "mysql": lambda: build_mysql(admin["mysql"], rows),
                 "sqlite": lambda: build_sqlite(rows)}
        targets = {e: build[e]() for e in args.engines.split(",")}
    worst = 0.0
    for engine, url in targets.items():
        r = measure(url)
        rss = r["peak_rss_kb"] / 1024
        worst = max(worst, rss)
        mb = r["bytes"] / 1e6
        lock = f", writers held {r['lock_seconds'] * 1000:.0f} ms" if r["lock_seconds"] is not None else ""
        print(f"engine_memory {engine}: dumped {mb:,.0f} MB ({r['rows']:,} rows) in {r['seconds']:.1f} s "
              f"({mb / r['seconds']:.0f} MB/s), crmops peak RSS {rss:.0f} MB{lock}", flush=True)
    verdict = "within" if worst < 200 else "OVER"
    print(f"engine_memory: worst peak RSS {worst:.0f} MB, {verdict} the 200 MB target")


if __name__ == "__main__":
    main()
