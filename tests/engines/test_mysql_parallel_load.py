"""A staged MariaDB dump loaded over several clients gives what `mysql < dump` gives.

The source has what a load can get wrong: foreign keys, a table without a primary key,
a MyISAM table, a trigger that would write rows of its own if it existed before the rows
were loaded, views (one over another), a function, a procedure and an event. The same
dump is loaded by one client (the way before) and by the parallel load, and the two
targets' native digests (`mariadb-dump --no-data` with routines, events and triggers, and
CHECKSUM TABLE of every table) are compared with each other and with the source. A load
that fails half-way stops every client, names the server's error, runs nothing of what
comes after the rows (triggers, routines, views), as one client stops at its first error,
and leaves every other database as it was.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crmops.engines import mysql_load
from crmops.engines.mysql import MysqlEngine
from crmops.engines.mysql_load import plan_load
from crmops.engines.tools import read_pieces
from crmops.errors import DatabaseError
from tests.engines.test_child_processes import _alive, _children
from tests.matrix.digest import my_digest, native_digest
from tests.services.test_backup_restore import PASSPHRASE, write_config
from tests.services.test_restore_boundary import execute

pytestmark = pytest.mark.mysql

SCHEMA = [
    "CREATE TABLE accounts (id int PRIMARY KEY AUTO_INCREMENT, name varchar(60) NOT NULL, UNIQUE KEY (name))",
    "CREATE TABLE contacts (id int PRIMARY KEY AUTO_INCREMENT, account_id int NOT NULL, email varchar(80), "
    "note text, KEY (email), CONSTRAINT contacts_account_fk FOREIGN KEY (account_id) REFERENCES accounts (id))",
    "CREATE TABLE audit (id int PRIMARY KEY AUTO_INCREMENT, contact_id int, what varchar(20))",
    "CREATE TABLE events_log (at datetime, what varchar(40))",  # no primary key: rows in load order
    "CREATE TABLE counters (name varchar(20) PRIMARY KEY, n int) ENGINE=MyISAM",
    "INSERT INTO accounts (name) SELECT concat('account ', seq) FROM seq_1_to_300",
    "INSERT INTO contacts (account_id, email, note) SELECT 1 + seq % 300, concat('c', seq, '@example.org'), "
    "repeat(concat('note ', seq, ' '), 20) FROM seq_1_to_24000",
    "INSERT INTO events_log SELECT '2026-01-01' + INTERVAL (seq % 97) HOUR, concat('event ', seq % 50) "
    "FROM seq_1_to_6000",
    "INSERT INTO counters VALUES ('restores', 3), ('backups', 7)",
    # made after the rows, as a CRM's audit trigger is: fired by a load only if made before the rows
    "CREATE TRIGGER contacts_ai AFTER INSERT ON contacts FOR EACH ROW "
    "INSERT INTO audit (contact_id, what) VALUES (NEW.id, 'created')",
    "CREATE VIEW contact_names AS SELECT c.id, c.email, a.name FROM contacts c JOIN accounts a ON a.id = c.account_id",
    "CREATE VIEW names_only AS SELECT name FROM contact_names",
    "CREATE FUNCTION domain_of(e varchar(80)) RETURNS varchar(80) DETERMINISTIC RETURN substring_index(e, '@', -1)",
    "CREATE PROCEDURE bump() UPDATE counters SET n = n + 1",
    "CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' DISABLE DO CALL bump()",
]


@pytest.fixture(scope="module")
def source(mysql_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The source database and its dump staged in a file, as a restore stages it."""
    made: list[str] = []
    base = mysql_admin_url.rsplit("/", 1)[0]

    def make() -> str:
        name = f"pload_{os.urandom(5).hex()}"
        execute(f"{base}/mysql", [f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"])
        made.append(name)
        return f"{base}/{name}"

    src = make()
    execute(src, SCHEMA)
    staged = tmp_path_factory.mktemp("pload") / "dump"
    with MysqlEngine(src).dump() as dump, open(staged, "wb") as f:
        for piece in dump.chunks():
            f.write(piece)
        _ = dump.fingerprint
    yield {"src": src, "staged": staged, "make": make, "tmp": staged.parent}
    execute(f"{base}/mysql", [f"DROP DATABASE IF EXISTS `{n}`" for n in made])


def _parallel(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the clients the parallel load starts per phase; the size floor lowered to this dump."""
    phases: list[int] = []
    real = mysql_load._phase

    def counted(fd: int, first: Any, units: list[Any], jobs: int, *args: Any) -> None:
        phases.append(max(1, min(jobs, len(units))) if units else 1)
        real(fd, first, units, jobs, *args)

    monkeypatch.setattr(mysql_load, "_phase", counted)
    monkeypatch.setattr(mysql_load, "PARALLEL_MIN", 0)
    return phases


def test_parallel_load_gives_what_one_client_gives(source: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    one, many = source["make"](), source["make"]()
    MysqlEngine(one).restore(read_pieces(source["staged"]), format="mysql-sql")
    phases = _parallel(monkeypatch)
    MysqlEngine(many, jobs=2).restore((), format="mysql-sql", staged=source["staged"])
    assert phases == [1, 2, 1]  # the tables, their rows over two clients, then what follows the rows
    # mariadb-dump's schema with routines, events and triggers, and every table's CHECKSUM TABLE and count
    assert my_digest(many) == my_digest(one) == my_digest(source["src"])
    # the trigger was made after the rows, as in the dump: it wrote nothing of its own
    assert execute(many, ["SELECT count(*) FROM audit"])[0][0] == 0
    assert execute(many, ["SELECT count(*), count(DISTINCT name) FROM names_only"])[0] == (24000, 300)
    assert execute(many, ["SELECT domain_of('a@b.example')"])[0][0] == "b.example"
    execute(many, ["INSERT INTO contacts (account_id, email) VALUES (1, 'new@example.org')"])
    assert execute(many, ["SELECT what FROM audit"]) == [("created",)]  # and it works


def test_plan_follows_the_dump_and_refuses_what_it_does_not_know(source: dict[str, Any], tmp_path: Path) -> None:
    plan = plan_load(source["staged"])
    assert plan is not None
    assert plan.rows[0].name == "`contacts`"  # the largest table first
    assert {r.name for r in plan.rows} == {f"`{t}`" for t in ("accounts", "contacts", "audit", "events_log",
                                                             "counters")}
    text = source["staged"].read_bytes()
    odd = {
        "a statement the header does not hold": text.replace(b"\n--\n-- Table structure", b"\nUSE `x`;\n--\n-- "
                                                             b"Table structure", 1),
        "rows without LOCK TABLES": text.replace(b"LOCK TABLES `accounts` WRITE;", b"", 1),
        "a table without its rows": text.replace(b"-- Dumping data for table `audit`", b"-- audit's rows", 1),
        "a table after the routines": text + b"\n--\n-- Table structure for table `late`\n--\n\n"
                                             b"CREATE TABLE `late` (\n  `id` int\n);\n",
    }
    for why, changed in odd.items():
        path = tmp_path / "odd"
        path.write_bytes(changed)
        assert plan_load(path) is None, why


def test_failure_half_way_stops_every_client_and_runs_nothing_after(source: dict[str, Any], mysql_admin_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    # a row of contacts loaded twice: the server refuses it (duplicate key) in the middle of the rows
    text = source["staged"].read_bytes()
    statements = [m.end() for m in re.finditer(rb"\nINSERT INTO `contacts` VALUES\s*\(", text)]
    assert len(statements) >= 3  # the rows come in several statements: the middle one fails
    row = statements[len(statements) // 2]
    bad = tmp_path / "dump"
    bad.write_bytes(text[:row] + b"1" + text[text.index(b",", row):])
    bystander = source["make"]()
    execute(bystander, ["CREATE TABLE kept (id int PRIMARY KEY, v varchar(20))", "INSERT INTO kept VALUES (1, 'x')"])
    before = native_digest(bystander)
    outcomes = {}
    for way in ("one client", "parallel"):
        target = source["make"]()
        if way == "parallel":
            phases = _parallel(monkeypatch)
        with pytest.raises(DatabaseError) as e:
            if way == "parallel":
                MysqlEngine(target, jobs=2).restore((), format="mysql-sql", staged=bad)
            else:
                MysqlEngine(target).restore(read_pieces(bad), format="mysql-sql")
        assert "mysql failed (exit 1)" in e.value.message and "Duplicate entry" in e.value.message
        assert "note " not in e.value.message  # the error names the statement's place, not the row's values
        objects = execute(target, [
            "SELECT (SELECT count(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE()), "
            "(SELECT count(*) FROM information_schema.routines WHERE routine_schema = DATABASE()), "
            "(SELECT count(*) FROM information_schema.events WHERE event_schema = DATABASE())"])[0]
        outcomes[way] = objects, execute(target, ["SELECT count(*) FROM contacts"])[0][0]
        # no client of the load is left on the target (a client's goodbye reaches the server a moment later)
        db = target.rsplit("/", 1)[1]
        deadline = time.monotonic() + 5
        while execute(mysql_admin_url, [f"SELECT count(*) FROM information_schema.processlist WHERE db = '{db}'"]
                      )[0][0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert time.monotonic() < deadline, "a client of the load was still connected"
    assert phases == [1, 2]  # the tail never started
    for objects, contacts in outcomes.values():
        assert objects == (0, 0, 0) and contacts < 24000
    assert native_digest(bystander) == before


def test_restore_command_loads_in_parallel(source: dict[str, Any], tmp_path: Path) -> None:
    """The whole command: backup, then `crmops restore` into an empty database, its clients counted."""
    if os.path.getsize(source["staged"]) < mysql_load.PARALLEL_MIN:
        pytest.fail("the source's dump is smaller than the parallel load's floor: make it larger")
    config = write_config(tmp_path, source["src"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    env["TEST_PASSPHRASE"] = PASSPHRASE

    def crmops(*args: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
        r = subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), "--json", *args],
                           capture_output=True, text=True, env={**env, **(extra or {})}, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    crmops("repo", "init")
    snap = crmops("backup")["snapshot_id"]
    tools, calls = _client_wrapper(tmp_path)
    target = source["make"]()
    crmops("restore", snap, "--to", target, extra={"CRMOPS_TOOLS_PATH": str(tools)})
    # the tables; the rows, one client per core (up to 4); what follows the rows (and one query before)
    loads = [c for c in calls() if "--binary-mode" in c]
    assert len(loads) == 2 + min(len(os.sched_getaffinity(0)), 4)
    assert [c for c in calls() if "--execute" in c and "information_schema" in c]  # the emptiness probe
    assert my_digest(target) == my_digest(source["src"])


def _client_wrapper(tmp_path: Path) -> tuple[Path, Callable[[], list[str]]]:
    """A mariadb client that logs each load it runs, then runs the real one."""
    real = subprocess.run(["sh", "-c", "command -v mariadb || command -v mysql"], capture_output=True, text=True,
                          check=True).stdout.strip()
    tools = tmp_path / "tools"
    tools.mkdir()
    log = tmp_path / "calls"
    wrapper = tools / "mariadb"
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = "--version" ] || echo "$*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return tools, lambda: log.read_text().splitlines() if log.exists() else []


def test_kill_9_of_crmops_ends_every_client_of_the_load(source: dict[str, Any], tmp_path: Path) -> None:
    """Each client is started from the main thread with the death signal asked for, so none outlives
    crmops. Stand-in clients pass the tables' phase and then wait, holding the rows phase open."""
    client = tmp_path / "client"
    client.write_text('#!/bin/sh\nif grep -q "^LOCK TABLES"; then exec sleep 120; fi\n')
    client.chmod(0o755)
    code = ("from pathlib import Path\nfrom crmops.engines import mysql_load as m\n"
            f"p = Path({str(source['staged'])!r})\n"
            f"m.run_plan(p, m.plan_load(p), 2, [{str(client)!r}], {{}}, 'mysql')\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while len(waiting := _children(proc.pid, "sleep")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(waiting) == 2, "the rows phase did not start two clients"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in waiting) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in waiting)
    finally:
        proc.kill()
