"""When the dump tool says its snapshot is open (crmops/engines/mysql_snapshot.py)."""

from __future__ import annotations

from crmops.engines.mysql_snapshot import said_snapshot_open

#: what mariadb-dump 10.11 --verbose writes to stderr, in order
SAID = ["-- Connecting to 127.0.0.1...", "-- Starting transaction...", "-- Setting savepoint...",
        "-- Retrieving table structure for table notes..."]


def test_the_dump_is_open_only_after_a_line_that_follows_its_start_transaction() -> None:
    def said(n: int, tail: str = "") -> str:
        return "".join(line + "\n" for line in SAID[:n]) + tail

    assert not said_snapshot_open("")
    assert not said_snapshot_open(said(1))
    # printed just before START TRANSACTION runs: not yet open
    assert not said_snapshot_open(said(2))
    # the next line still being written is not taken for a whole one
    assert not said_snapshot_open(said(2, "-- Setting sa"))
    assert said_snapshot_open(said(3))
    assert said_snapshot_open(said(4))
    # MySQL's mysqldump with --source-data logs its flush first; the transaction still decides
    assert not said_snapshot_open("-- Connecting to localhost...\n-- main : logs flushed successfully!\n")
