"""`restore --at T --tables` on the real schemas, on a PostgreSQL 15 cluster archiving its WAL.

Each schema is set up from its package (as in the other tests here) in a cluster of the test's
own, a physical base backup is taken, and after T a bad mass update overwrites the core
table. Recovering that one table as it was at T brings back its rows exactly, leaves every
other table (schema, rows, sequences) as it is, and `--as` puts the same rows beside it.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.matrix.digest import pg_digest
from tests.pitr.conftest import Cluster, cluster  # noqa: F401 (the fixture)
from tests.realschemas.packages import PG_BIN, django_manage, tryton_fill, tryton_schema
from tests.realschemas.test_django_crm import FILL, setupdata
from tests.realschemas.test_request_tracker import _load_rt

pytestmark = pytest.mark.usefixtures("docker_client")


def _tryton(url: str) -> None:
    # the dump is made once per series; the first time it needs a scratch database of the shared server
    subprocess.run([str(PG_BIN / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(tryton_schema(url))],
                   check=True, capture_output=True, timeout=600)
    tryton_fill(url, 100)


SETUP = {
    "request-tracker": (lambda url: _load_rt(url, "postgresql"), "transactions",
                        "UPDATE transactions SET type = 'Comment'"),
    "tryton": (_tryton, "party_party", "UPDATE party_party SET name = 'overwritten by a bad import'"),
    "django-crm": (lambda url: (setupdata(url), django_manage(url, FILL, "fill", "50")),
                   "crm_contact", "UPDATE crm_contact SET email = ''"),
}
ROWS = "SELECT count(*), md5(COALESCE(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {} t"


@pytest.mark.parametrize("name", sorted(SETUP))
def test_restore_at_tables_on_a_real_schema(name: str, cluster: Cluster) -> None:  # noqa: F811
    setup, table, damage = SETUP[name]
    setup(cluster.url)
    cluster.crmops_json("backup", "--physical")
    good = cluster.sql(ROWS.format(table))[0]
    time.sleep(1.1)
    at = cluster.sql("SELECT now()")[0][0]
    time.sleep(1.1)
    cluster.sql(damage)
    assert cluster.sql(ROWS.format(table))[0] != good
    cluster.switch_and_wait()
    before = pg_digest(cluster.url, skip=(f"public.{table}",))
    t0 = time.monotonic()
    r = json.loads(cluster.crmops("restore", "--at", at.isoformat(sep=" "), "--tables", table, "--to", cluster.url,
                                  "--force").stdout)
    took = time.monotonic() - t0
    assert r["replaced"] == [f"public.{table}"]
    assert cluster.sql(ROWS.format(table))[0] == good
    assert pg_digest(cluster.url, skip=(f"public.{table}",)) == before
    cluster.crmops("restore", "--at", at.isoformat(sep=" "), "--tables", table, "--as", "at_", "--to", cluster.url)
    assert cluster.sql(ROWS.format(f"at_{table}"))[0] == good
    print(json.dumps({"schema": name, "restore --at --tables --force seconds": round(took, 1)}))
