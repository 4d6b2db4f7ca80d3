"""The core path against every supported server version: backup, verify in the snapshot's own image,
restore, restore --tables, migrate up and down. One server container per version and module;
run one version with `-k pg17` (ids: pg13 pg15 pg17 mariadb10_5 mariadb10_11 mariadb11_8)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crmops.democrm.load import create
from crmops.engines import open_engine
from crmops.repository import open_repository
from tests.matrix.cli import cli
from tests.matrix.servers import Server, params, run_server
from tests.verify.verify_helpers import ATTACHMENTS_QUERY, load, ok, write_config

pytestmark = [pytest.mark.docker, pytest.mark.matrix, pytest.mark.slow]

HOST_PG_DUMP_MAJOR = 15  # the test bed's own client tools: PostgreSQL 15, MariaDB 10.11
HOST_MARIADB = (10, 11)


@pytest.fixture(scope="module", params=params())
def server(request: pytest.FixtureRequest, docker_client) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    with run_server(docker_client, request.param) as s:
        yield s


def _newer_than_host(server: Server) -> bool:
    nums = tuple(int(n) for n in server.version.major.split("."))
    return nums > ((HOST_PG_DUMP_MAJOR,) if server.version.engine == "postgresql" else HOST_MARIADB)


def test_core_path(server: Server, tmp_path: Path) -> None:
    v = server.version
    assert server.server_version().startswith(v.major + "."), server.server_version()
    url = server.create_database()
    create(url, size="small", attachments_dir=tmp_path / "files")
    config = write_config(tmp_path, url, verify={"checks": {"attachments_query": ATTACHMENTS_QUERY}})
    ok(cli(config, "repo", "init"))
    snap = ok(cli(config, "--json", "backup"))["snapshot_id"]
    source_fp = open_engine(url).fingerprint()

    # the dump tool: the host's where it reaches the server, else the server's image, recorded either way
    check = ok(cli(config, "--json", "db", "check"))
    dump_tool = check["tool_choice"]["pg_dump" if v.engine == "postgresql" else "dump"]
    assert dump_tool["where"] == ("container" if _newer_than_host(server) else "host"), dump_tool
    if dump_tool["where"] == "container":
        assert dump_tool["image"] == v.image and dump_tool["network"] == "host"
        assert "older than the server" in dump_tool["reason"]
    recorded = open_repository(load(config)).manifest(snap)["dump_tool"]
    assert recorded["where"] == dump_tool["where"] and recorded["version"] == dump_tool["version"]

    # verify picks the sandbox image of the snapshot's own major version
    verified = ok(cli(config, "--json", "verify", snap))
    assert verified["ok"] and verified["image"] == v.image, verified
    assert verified["differences"] == []

    # a whole restore gives back the same rows
    target = server.create_database()
    ok(cli(config, "--json", "restore", snap, "--to", target))
    assert source_fp.compare(open_engine(target).fingerprint()) == []

    # --tables brings only the chosen tables
    partial = server.create_database()
    ok(cli(config, "--json", "restore", snap, "--to", partial, "--tables", "accounts,contacts"))
    got = open_engine(partial).fingerprint()
    assert set(got.tables) == {"accounts", "contacts"}
    for t in ("accounts", "contacts"):
        assert got.tables[t] == source_fp.tables[t]

    # the demo CRM's migrations, 1.0 -> 2.0 -> 1.0, on the restored copy
    up = ok(cli(config, "--json", "migrate", "up", "--to", "2.0", "--no-safety-backup", "--url", target))
    assert up["direction"] == "up" and up["revisions"], up
    assert open_engine(target).schema_revision() == "d2_0003" and "customer_feedback" in _tables(target)
    down = ok(cli(config, "--json", "migrate", "down", "--to", "1.0", "--no-safety-backup", "--url", target))
    assert down["direction"] == "down" and down["revisions"], down
    assert open_engine(target).schema_revision() == "d1_0003" and "customer_feedback" not in _tables(target)


def _tables(url: str) -> set[str]:
    return set(open_engine(url).fingerprint().tables)
