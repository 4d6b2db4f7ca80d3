"""`restore --at T --tables ...`: one table back as it was, every other table exactly as it is now.

A writer fills contacts, deals and activities; at T someone empties deals (TRUNCATE ...
RESTART IDENTITY, so the live sequence starts again at 1) while contacts and activities
keep receiving rows. The deals of T-1s come back through the same steps as plain
`restore --tables`; a native digest (pg_dump --schema-only, per-table md5, sequence
values) of everything else is the same before and after.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import psycopg
import pytest

from tests.matrix.digest import pg_digest
from tests.pitr.conftest import Cluster

pytestmark = pytest.mark.usefixtures("docker_client")

DEALS = "SELECT count(*), md5(COALESCE(string_agg(d::text, E'\\n' ORDER BY d.id), '')) FROM {} d"


class CrmWriter(threading.Thread):
    """A contact, a deal for it and an activity per transaction; the deals stop when `deals` is cleared."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.deals = threading.Event()
        self.deals.set()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                with conn.transaction():
                    cid = conn.execute("INSERT INTO contacts (name) VALUES ('someone') RETURNING id").fetchone()[0]
                    if self.deals.is_set():
                        conn.execute("INSERT INTO deals (contact_id, amount) VALUES (%s, 100)", (cid,))
                    conn.execute("INSERT INTO activities (contact_id, what) VALUES (%s, 'called')", (cid,))
                time.sleep(0.01)


def _ids(cluster: Cluster) -> list[str]:
    return sorted(p.name for p in (cluster.repo / "snapshots").iterdir())


def test_tables_at_a_point_in_time_bring_back_emptied_deals_and_touch_nothing_else(cluster: Cluster) -> None:
    cluster.sql("ALTER SYSTEM SET track_commit_timestamp = on")
    cluster.stop()
    cluster.start()
    cluster.sql("CREATE TABLE contacts (id bigserial PRIMARY KEY, name text NOT NULL)")
    cluster.sql("CREATE TABLE deals (id bigserial PRIMARY KEY, contact_id bigint NOT NULL REFERENCES contacts(id), "
                "amount int NOT NULL)")
    cluster.sql("CREATE TABLE activities (id bigserial PRIMARY KEY, contact_id bigint REFERENCES contacts(id), "
                "what text)")
    cluster.sql("INSERT INTO contacts (name) SELECT 'person ' || g FROM generate_series(1, 200) g")
    cluster.sql("INSERT INTO deals (contact_id, amount) SELECT g, g * 10 FROM generate_series(1, 200) g")
    cluster.sql("DELETE FROM deals WHERE id > 150")  # ids the sequence handed out and that are gone already
    writer = CrmWriter(cluster.url)
    writer.start()
    try:
        time.sleep(1.5)
        cluster.crmops_json("backup", "--physical")
        time.sleep(2.5)
        writer.deals.clear()  # the newest deals are deleted before the cutoff: their ids stay handed out
        time.sleep(0.1)
        top = cluster.sql("SELECT max(id) FROM deals")[0][0]
        cluster.sql("DELETE FROM deals WHERE id > %s", top - 10)
        time.sleep(1.2)
        disaster_at = cluster.sql("SELECT now()")[0][0]
        cutoff = disaster_at - timedelta(seconds=1)
        expected = cluster.sql(DEALS.format("deals") + " WHERE pg_xact_commit_timestamp(d.xmin) <= %s", cutoff)[0]
        all_deals = cluster.sql(DEALS.format("deals"))[0]
        cluster.sql("TRUNCATE deals RESTART IDENTITY")  # the disaster
        time.sleep(2)  # contacts and activities keep growing after it
    finally:
        writer.stop.set()
        writer.join()
    assert expected[0] > 150 + 50 and expected == all_deals, expected  # added, then stopped, before the cutoff
    assert cluster.sql("SELECT count(*) FROM contacts WHERE pg_xact_commit_timestamp(xmin) > %s",
                       disaster_at)[0][0] > 20
    time.sleep(1.1)
    cluster.switch_and_wait()
    at = cutoff.isoformat(sep=" ")
    before = pg_digest(cluster.url, skip=("public.deals",))
    snapshots = _ids(cluster)

    # a typo: did-you-mean against the tables, before any replay, nothing changed
    typo = cluster.crmops("restore", "--at", at, "--tables", "dealz", "--to", cluster.url, "--force", check=False)
    assert typo.returncode == 16, typo.stderr
    assert "did you mean deals" in typo.stderr and "nothing was recovered" in typo.stderr
    assert len(typo.stderr.strip().splitlines()) == 1 and json.loads(typo.stdout)["error"] == "table-missing"
    # a live target without --force (or --as): refused before any replay too
    busy = cluster.crmops("restore", "--at", at, "--tables", "deals", "--to", cluster.url, check=False)
    assert busy.returncode == 60 and "--force" in busy.stderr and "--as" in busy.stderr
    assert pg_digest(cluster.url, skip=("public.deals",)) == before and _ids(cluster) == snapshots

    r = json.loads(cluster.crmops("restore", "--at", at, "--tables", "deals", "--to", cluster.url, "--force").stdout)
    assert r["tables"] == ["public.deals"] and r["replaced"] == ["public.deals"] and r["created"] == []
    assert r["safety_snapshot"] in _ids(cluster) and r["target"] == {"kind": "time", "value": at}
    assert cluster.sql(DEALS.format("deals"))[0] == expected
    assert pg_digest(cluster.url, skip=("public.deals",)) == before  # schema, rows, other sequences
    # the live sequence had restarted at 1: it now stands past every id the deals had handed out by
    # then, the deleted newest ones included (the largest id in the table alone would reuse them)
    new_id = cluster.sql("INSERT INTO deals (contact_id, amount) VALUES (1, 5) RETURNING id")[0][0]
    assert cluster.sql("SELECT max(id) FROM deals WHERE id <> %s", new_id)[0][0] == top - 10
    assert new_id > top

    # --as: the deals of T-1s beside the live ones, no --force, nothing else touched
    cluster.sql("DELETE FROM deals WHERE id = %s", new_id)
    before = pg_digest(cluster.url)
    r = json.loads(cluster.crmops("restore", "--at", at, "--tables", "deals", "--as", "restored_",
                                  "--to", cluster.url).stdout)
    assert r["created"] == ["public.restored_deals"] and r["replaced"] == [] and r["safety_snapshot"] is None
    assert cluster.sql(DEALS.format("restored_deals"))[0] == expected
    assert pg_digest(cluster.url, skip=("public.restored_deals",)) == before
