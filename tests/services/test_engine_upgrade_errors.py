"""A restore that goes on past errors names the object of each one (the engine-upgrade dry run's report)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmops.engines import open_engine
from crmops.services.engine_upgrade import restore_past_errors


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
