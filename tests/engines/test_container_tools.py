"""Which client tool runs: the host's when it reaches the server's release, else the server version's image.

The full path (a PostgreSQL 17 server backed up and verified with this host's pg_dump 15)
runs in tests/matrix; here the choices and their one-line refusals."""

from __future__ import annotations

import uuid

import pytest

from crmops.config import VerifyConfig
from crmops.engines.container_tools import choose_tool, network_for
from crmops.errors import ImageMissing, ToolMissing
from crmops.sandbox import open_sandbox

pytestmark = [pytest.mark.docker]


def _pg(version: str, **kw: object):  # type: ignore[no-untyped-def]
    major = int(version.split(".")[0])
    return choose_tool(["pg_dump"], (major,), flavor="postgresql", server_version=version, host="127.0.0.1",
                       what=f"back up PostgreSQL {major}", fix="install postgresql-client", **kw)  # type: ignore[arg-type]


def test_host_tool_when_it_reaches_the_server(docker_client) -> None:  # type: ignore[no-untyped-def]
    tool = _pg("13.22")
    assert tool.where == "host" and "(PostgreSQL) 15" in tool.version


def test_server_image_supplies_a_newer_tool(docker_client) -> None:  # type: ignore[no-untyped-def]
    tool = _pg("17.2", env_names=["PGHOST", "PGPASSWORD"])
    assert tool.where == "container" and tool.image == "postgres:17" and "(PostgreSQL) 17" in tool.version
    assert tool.network == "host" and "older than the server" in tool.reason
    argv = tool.argv(["--format=custom"])
    # the password variable is passed by name only; the container is read-only, unprivileged, unlogged
    assert ["-e", "PGPASSWORD"] in [argv[i:i + 2] for i in range(len(argv))]
    assert not any("=" in a and a.startswith("PGPASSWORD") for a in argv)
    for flag in ("--read-only", "--rm"):
        assert flag in argv
    assert argv[argv.index("--log-driver") + 1] == "none" and argv[argv.index("--cap-drop") + 1] == "ALL"


def test_missing_image_names_it_and_how_to_build(docker_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ToolMissing) as err:
        _pg("16.4")
    line = err.value.line()
    assert "postgres:16" in line and "not present" in line and "\n" not in line and err.value.exit_code == 13


def test_containers_can_be_turned_off(docker_client, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CRMOPS_TOOLS_CONTAINER", "never")
    with pytest.raises(ToolMissing) as err:
        _pg("17.2")
    assert "older than the server (17)" in err.value.line()


def test_network_is_the_one_that_reaches_the_server(docker_client) -> None:  # type: ignore[no-untyped-def]
    assert network_for("127.0.0.1") == "host" and network_for("localhost") == "host"
    net = docker_client.networks.create(f"crmops-test-tools-{uuid.uuid4().hex[:8]}", driver="bridge",
                                        labels={"crmops.test": "1"})
    try:
        net.reload()
        subnet = net.attrs["IPAM"]["Config"][0]["Subnet"]
        inside = subnet.split("/")[0].rsplit(".", 1)[0] + ".77"
        assert network_for(inside) == net.name
        assert network_for("192.0.2.10") == "bridge"  # elsewhere: the default bridge, as any client here
    finally:
        net.remove()


@pytest.mark.parametrize(("engine", "version", "image"), [
    ("postgresql", "16.4", "postgres:16"),
    ("mysql", "11.4.2-MariaDB", "mariadb:11.4"),
])
def test_sandbox_image_missing_is_exit_32_naming_the_image(docker_client, engine: str, version: str,
                                                           image: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImageMissing) as err:
        open_sandbox(VerifyConfig(), engine, version).start()
    line = err.value.line()
    assert err.value.exit_code == 32 and image in line and "scripts/images/build.sh builds only" in line
    assert "postgres:17" in line and "mariadb:11.8" in line and "\n" not in line


def test_a_buildable_image_is_named_with_its_build_line() -> None:
    from crmops.sandbox.base import build_hint

    for image in ("postgres:13", "postgres:17", "mariadb:10.5", "mariadb:11.8"):
        assert f"scripts/images/build.sh {image}" in build_hint(image)
    assert build_hint("mysql:8.0") == ""
