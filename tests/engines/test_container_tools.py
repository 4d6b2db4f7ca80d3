"""Which client tool runs: the host's when it reaches the server's release, else the server version's image.

The full path (a PostgreSQL 17 server backed up and verified with this host's pg_dump 15)
runs in tests/matrix; here the choices and their one-line refusals."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

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
    from crmops.engines.container_tools import image_hint

    for image in ("postgres:13", "postgres:17", "mariadb:10.5", "mariadb:11.8"):
        assert f"scripts/images/build.sh {image}" in image_hint(image)
    assert "build.sh" not in image_hint("mysql:8.0") and "docker pull mysql:8.0" in image_hint("mysql:8.0")


def test_an_installed_crmops_names_no_path_of_the_source_tree(docker_client, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                              monkeypatch: Any) -> None:
    """Issue 24 item 12: the missing-image hint named scripts/images/build.sh, which an installed user does not
    have. Where crmops is installed the script's place is empty: the hint gives the ways every Docker host has."""
    import subprocess
    import sys

    from crmops.engines import container_tools
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    monkeypatch.setattr(container_tools, "BUILD_SCRIPT", site.parents[1] / "scripts" / "images" / "build.sh")
    for image in ("postgres:15", "postgres:16", "mariadb:11.8"):
        said = container_tools.image_hint(image, "verify.images.postgresql")
        assert "build.sh" not in said and "scripts/" not in said, said
        assert f"docker pull {image}" in said and "docker load -i FILE" in said and "verify.images.postgresql" in said
    # the same from an installed layout: a wheel puts the package alone into site-packages, no scripts/ beside it
    import shutil

    target = tmp_path / "installed"
    shutil.copytree(Path(container_tools.__file__).resolve().parents[1], target / "crmops",
                    ignore=shutil.ignore_patterns("__pycache__"))
    probe = ("from crmops.engines.container_tools import BUILD_SCRIPT, image_hint; "
             "print(BUILD_SCRIPT.exists(), image_hint('postgres:15'))")
    out = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(target)}, capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout
    assert out.startswith("False docker pull postgres:15"), out
    with pytest.raises(ImageMissing) as err:  # what `crmops verify` prints there
        open_sandbox(VerifyConfig(images={"postgresql": "crmops-no-such-image:{major}"}), "postgresql", "15.4").start()
    assert "scripts/" not in err.value.line() and "docker pull crmops-no-such-image:15" in err.value.line()
