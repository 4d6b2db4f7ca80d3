"""`restore --at T --tables pay`: a partitioned table comes back with the rows of all its partitions.

`pg_dump -t pay` alone dumps the partitioned table's definition and none of its rows (they
are in the partitions); the recovered copy is dumped with its partitions, so --as gives a
partitioned copy of 1,000 rows and --force puts 1,000 rows back, nothing else touched.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.matrix.digest import pg_digest
from tests.pitr.conftest import Cluster

pytestmark = pytest.mark.usefixtures("docker_client")

PAY = ("public.pay", "public.pay_2024", "public.pay_2025", "public.pay_other")


def test_partitioned_table_at_a_point_in_time(cluster: Cluster) -> None:
    cluster.sql("CREATE TABLE pay (id int, at date, amt int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)")
    cluster.sql("CREATE TABLE pay_2024 PARTITION OF pay FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')")
    cluster.sql("CREATE TABLE pay_2025 PARTITION OF pay FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')")
    cluster.sql("CREATE TABLE pay_other PARTITION OF pay DEFAULT")
    cluster.sql("INSERT INTO pay SELECT g, date '2024-03-01' + (g % 900), g FROM generate_series(1, 1000) g")
    cluster.sql("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
    cluster.sql("INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, 30) g")
    expected = {p: cluster.sql(f"SELECT count(*) FROM {p}")[0][0] for p in PAY}
    cluster.crmops_json("backup", "--physical")
    time.sleep(1.1)
    at = cluster.sql("SELECT now()")[0][0].isoformat(sep=" ")
    time.sleep(1.1)
    cluster.sql("DELETE FROM pay WHERE id % 2 = 0")  # the disaster: half of it, in every partition
    cluster.sql("INSERT INTO notes (body) VALUES ('written after the disaster')")
    time.sleep(1.1)
    cluster.switch_and_wait()

    before = pg_digest(cluster.url)
    r = json.loads(cluster.crmops("restore", "--at", at, "--tables", "pay", "--as", "restored_",
                                  "--to", cluster.url).stdout)
    copies = tuple(p.replace("public.", "public.restored_") for p in PAY)
    assert r["created"] == list(copies) and r["replaced"] == []
    assert cluster.sql("SELECT count(*) FROM restored_pay")[0][0] == 1000
    assert cluster.sql("SELECT count(*) FROM pg_inherits WHERE inhparent = 'restored_pay'::regclass")[0][0] == 3
    assert pg_digest(cluster.url, skip=copies) == before

    before = pg_digest(cluster.url, skip=(*PAY, *copies))
    r = json.loads(cluster.crmops("restore", "--at", at, "--tables", "pay", "--to", cluster.url, "--force").stdout)
    assert set(r["replaced"]) == set(PAY) and r["safety_snapshot"]
    assert cluster.sql("SELECT count(*) FROM pay")[0][0] == 1000
    for p in PAY[1:]:
        assert cluster.sql(f"SELECT count(*) FROM {p}")[0][0] == expected[p], p
    assert pg_digest(cluster.url, skip=(*PAY, *copies)) == before  # notes keeps its newer row
