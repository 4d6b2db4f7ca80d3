"""A restore that goes on past errors names the object of each one (the engine-upgrade dry run's report)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmops.engine_upgrade.logical import restore_past_errors
from crmops.engines import open_engine


@pytest.mark.mysql
def test_mariadb_errors_name_their_table_and_the_rest_is_restored(mysql_url: str, tmp_path: Path) -> None:
    dump = tmp_path / "dump.sql"
    dump.write_text("/*!40101 SET NAMES utf8mb4 */;\n"
                    "-- Table structure for table `good`\n"
                    "CREATE TABLE `good` (\n  `id` int NOT NULL\n);\n"
                    "-- Table structure for table `bad`\n"
                    "CREATE TABLE `bad` (\n  `id` int,\n  `v` nosuchtype\n);\n"
                    "-- Dumping data for table `good`\n"
                    "INSERT INTO `good` VALUES (1),(2);\n"
                    "-- Dumping data for table `bad`\n"
                    "INSERT INTO `bad` VALUES (1,1);\n")
    engine = open_engine(mysql_url)
    found = restore_past_errors(engine, dump, "mysql-sql")
    objects = [f["object"] for f in found]
    assert objects == ["table `bad`", "rows of table `bad`"], found
    assert "nosuchtype" in found[0]["error"] and found[1]["error"].startswith("ERROR 1146")
    assert engine.fingerprint().tables["good"].rows == 2


@pytest.mark.postgres
def test_a_table_that_differs_names_the_columns_that_really_differ(pg_url_factory) -> None:  # type: ignore[no-untyped-def]
    from crmops.engine_upgrade.compare import compare_across

    old, new = pg_url_factory(), pg_url_factory()
    for url in (old, new):
        with open_engine(url).connect() as conn:  # type: ignore[attr-defined]
            conn.execute("CREATE TABLE contacts (id int PRIMARY KEY, name text, score float8, seen date)")
            conn.execute("INSERT INTO contacts SELECT g, 'n' || g, g / 3.0, DATE '2024-01-01' + g "
                         "FROM generate_series(1, 50) g")
            conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            conn.execute("INSERT INTO notes VALUES (1, 'same')")
    with open_engine(new).connect() as conn:  # type: ignore[attr-defined]
        conn.execute("UPDATE contacts SET score = round(score::numeric, 2) WHERE id = 7")
    for method in ("", "record-hash", "canonical"):
        expected = open_engine(old).fingerprint(method=method)
        diffs = compare_across(expected, open_engine(old), open_engine(new))
        assert [(d["name"], d.get("columns")) for d in diffs] == [("contacts", ["score"])], (method, diffs)


@pytest.mark.postgres
def test_values_written_differently_by_the_new_servers_settings_are_no_difference(pg_url_factory) -> None:  # type: ignore[no-untyped-def]
    from crmops.engine_upgrade.compare import compare_across

    old, new = pg_url_factory(), pg_url_factory()
    for url in (old, new):
        with open_engine(url).connect() as conn:  # type: ignore[attr-defined]
            conn.execute("CREATE TABLE visits (id int PRIMARY KEY, at timestamptz, price numeric, data bytea)")
            conn.execute("INSERT INTO visits VALUES (1, '2024-03-31 01:30+00', 1.50, '\\x00ff'), (2, NULL, 2, '')")
    with open_engine(new).connect() as conn:  # type: ignore[attr-defined]
        database = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(f"ALTER DATABASE {database} SET TimeZone = 'Asia/Tokyo'")
        conn.execute(f"ALTER DATABASE {database} SET bytea_output = 'escape'")
    expected = open_engine(old).fingerprint(method="")
    assert [d.name for d in expected.compare(open_engine(new).fingerprint(method=""))] == ["visits"]
    for method in ("", "record-hash", "canonical"):
        assert compare_across(open_engine(old).fingerprint(method=method), open_engine(old), open_engine(new)) == []
    with open_engine(new).connect() as conn:  # type: ignore[attr-defined]
        conn.execute("UPDATE visits SET price = 1.51 WHERE id = 1")
    for method in ("", "record-hash", "canonical"):
        diffs = compare_across(open_engine(old).fingerprint(method=method), open_engine(old), open_engine(new))
        assert [(d["name"], d.get("columns")) for d in diffs] == [("visits", ["price"])], (method, diffs)
