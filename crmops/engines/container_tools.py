"""Client tools matching the server: the host's when they are new enough, else the server version's image.

`pg_dump` refuses a server newer than itself and an older `mariadb-dump` can miss newer
syntax, while CRMs run on whatever server was current when they were installed. So when
the host's tool is missing or older than the server, the tool runs from the sandbox image
of the server's own version (postgres:17, mariadb:11.8) in a short-lived container:

- its output streams out over the container's stdout (`--log-driver none`, so no copy of
  the dump lands in Docker's container logs), its input in over stdin;
- the password reaches it as an environment variable named on the docker command line
  without a value (`-e PGPASSWORD`), so the value travels only through environments;
- it runs as crmops's own user, read-only, with no capabilities and no new privileges,
  and only a spooled archive is mounted (read-only) when pg_restore needs a seekable file;
- network: a server on the host's loopback is reachable only from the host's network
  namespace, so the container joins it (`--network host`); a server whose address lies in
  a Docker network's subnet is reached by joining that network alone; any other address
  through the default bridge, as any client on this host would.

`CRMOPS_TOOLS_PATH` (pinned folders) or `CRMOPS_TOOLS_CONTAINER=never` turn this off.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crmops.engines.tools import ToolProcess, feed, require_tool, tool_version
from crmops.errors import ToolMissing

log = logging.getLogger("crmops.tools")

#: the sandbox images' defaults (verify.images): the tools come from the same images
IMAGES = {"postgresql": "postgres:{major}", "mariadb": "mariadb:{version}", "mysql": "mysql:{version}"}
#: the images the source tree's scripts/images/build.sh makes from Debian (bullseye, bookworm, trixie)
BUILDABLE = ("postgres:13", "postgres:15", "postgres:17", "mariadb:10.5", "mariadb:10.11", "mariadb:11.8")
#: that recipe: present in a crmops checkout, absent where crmops is installed (wheel, pipx, image)
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "images" / "build.sh"
#: Killing the docker client (PR_SET_PDEATHSIG when crmops dies) leaves its container running:
#: a dump in a container would go on to the end, holding a snapshot open on the server. So a
#: dumping tool runs under a shell that ends it when the container's stdin closes, which the
#: daemon does as soon as the client that attached it (`-i`, crmops's own pipe) is gone.
WATCHDOG = 'exec 3<&0; "$0" "$@" & p=$!; (cat >/dev/null; kill -TERM "$p" 2>/dev/null) <&3 & wait "$p"'
_announced: set[tuple[str, str]] = set()
_versions: dict[tuple[str, str], str] = {}


def image_hint(image: str, setting: str | None = None) -> str:
    """How to get a missing image with what this installation has (docs/OPERATIONS.md, "Sandbox images").

    The build recipe lives in the source tree only: an installed crmops names it only when it
    is really there, and otherwise the ways every Docker host has (pull, or load a saved image).
    """
    ways = []
    if BUILD_SCRIPT.is_file() and image in BUILDABLE:
        ways.append(f"build it with {BUILD_SCRIPT} {image}")
    elif BUILD_SCRIPT.is_file() and image.split(":")[0] in ("postgres", "mariadb"):
        ways.append(f"{BUILD_SCRIPT} builds only {', '.join(BUILDABLE)}")
    ways.append(f"docker pull {image} where a registry is reachable, or on a host without one "
                f"`docker save {image}` where it exists and `docker load -i FILE` here")
    if setting:
        ways.append(f"or name an image this host has in {setting}")
    return "; ".join(ways)


@dataclass
class Tool:
    """A client tool ready to run: on the host (path) or in a container of image."""

    name: str
    where: str  # "host" or "container"
    version: str  # the tool's own --version line
    reason: str
    path: str | None = None
    image: str | None = None
    network: str | None = None
    env_names: Sequence[str] = field(default_factory=tuple)

    def argv(self, args: Sequence[str], *, stdin: bool = False, mounts: Iterable[str] = (),
             container_name: str | None = None, watchdog: bool = False) -> list[str]:
        if self.where == "host":
            assert self.path is not None
            return [self.path, *args]
        docker = shutil.which("docker") or "docker"
        cmd = [docker, "run", "--rm", "--log-driver", "none", "--network", self.network or "bridge",
               "--user", f"{os.getuid()}:{os.getgid()}", "--read-only", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", "--label", f"org.crmops.tool={self.name}"]
        if container_name:
            cmd += ["--name", container_name]
        if stdin or watchdog:
            cmd.append("-i")
        for name in self.env_names:
            cmd += ["-e", name]  # the value comes from docker's own environment, never argv
        for path in mounts:
            cmd += ["-v", f"{path}:{path}:ro"]
        assert self.image is not None
        if watchdog:
            return [*cmd, "--entrypoint", "sh", self.image, "-c", WATCHDOG, self.name, *args]
        return [*cmd, "--entrypoint", self.name, self.image, *args]

    def process(self, args: Sequence[str], *, env: dict[str, str], secrets: Iterable[str] = (),
                label: str | None = None, mounts: Iterable[str] = ()) -> ToolProcess:
        """Start the tool with its stdout read in pieces (see ToolProcess)."""
        self._announce()
        name = self._container_name()
        if self.where == "container":
            p: ToolProcess = _ContainerProcess(self.argv(args, mounts=mounts, container_name=name, watchdog=True),
                                               env=env, stdin=subprocess.PIPE, secrets=secrets,
                                               label=label or self.name)
        else:
            p = ToolProcess(self.argv(args, mounts=mounts), env=env, secrets=secrets, label=label or self.name)
        p.container_name = name  # type: ignore[attr-defined]
        return p

    def feed(self, args: Sequence[str], pieces: Iterable[bytes], *, env: dict[str, str],
             secrets: Iterable[str] = (), label: str | None = None, mounts: Iterable[str] = ()) -> None:
        """Run a loading tool with pieces on its stdin (see tools.feed)."""
        self._announce()
        name = self._container_name()
        try:
            feed(self.argv(args, stdin=True, mounts=mounts, container_name=name), pieces, env=env,
                 secrets=secrets, label=label or self.name)
        except BaseException:
            _remove(name)
            raise

    def _container_name(self) -> str | None:
        return f"crmops-{self.name.replace('_', '-')}-{uuid.uuid4().hex[:10]}" if self.where == "container" else None

    def _announce(self) -> None:
        if self.where == "container" and (self.name, self.image or "") not in _announced:
            _announced.add((self.name, self.image or ""))
            log.warning("running %s from image %s (%s): %s", self.name, self.image, self.version, self.reason)

    def describe(self) -> str:
        if self.where == "host":
            return f"{self.path} ({self.version})"
        return f"container {self.image} on network {self.network} ({self.version}): {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "where": self.where, "version": self.version, "path": self.path,
                "image": self.image, "network": self.network, "reason": self.reason}


class _ContainerProcess(ToolProcess):
    """Killing the docker client does not stop its container: remove that too."""

    container_name: str | None = None

    def kill(self) -> None:
        running = self.proc.poll() is None
        super().kill()
        if running:
            _remove(self.container_name)

    def close(self) -> None:
        super().close()
        if self.proc.stdin:  # the watchdog's pipe: held open, never written, until the tool is done
            self.proc.stdin.close()


def _remove(name: str | None) -> None:
    docker = shutil.which("docker")
    if name and docker:
        subprocess.run([docker, "rm", "-f", name], capture_output=True, timeout=60, check=False)


def image_for_server(flavor: str, server_version: str) -> str:
    from crmops.engines.base import version_parts

    return IMAGES[flavor].format(**version_parts(flavor, server_version))


def network_for(host: str | None) -> str:
    """The one network namespace from which a container reaches host (see the module's docstring)."""
    host = host or "127.0.0.1"
    try:
        addrs = {ipaddress.ip_address(a[4][0]) for a in socket.getaddrinfo(host, None)}
    except (OSError, ValueError):
        return "bridge"
    if any(a.is_loopback for a in addrs):
        return "host"
    for name, subnets in _docker_subnets():
        if any(a in net for a in addrs for net in subnets):
            return name
    return "bridge"


def _docker_subnets() -> list[tuple[str, list[Any]]]:
    docker = shutil.which("docker")
    if not docker:
        return []
    out = subprocess.run([docker, "network", "ls", "-q", "--filter", "driver=bridge"], capture_output=True,
                         text=True, timeout=30).stdout.split()
    if not out:
        return []
    fmt = "{{.Name}}{{range .IPAM.Config}} {{.Subnet}}{{end}}"
    lines = subprocess.run([docker, "network", "inspect", "--format", fmt, *out], capture_output=True,
                           text=True, timeout=30).stdout.splitlines()
    found = []
    for line in lines:
        name, *subnets = line.split()
        nets = []
        for s in subnets:
            try:
                nets.append(ipaddress.ip_network(s, strict=False))
            except ValueError:
                continue
        if name not in ("bridge", "host", "none"):
            found.append((name, nets))
    return found


def _container_version(image: str, tool: str) -> str | None:
    """The tool's --version line inside image, or None when the image or the tool is not there."""
    key = (image, tool)
    if key not in _versions:
        docker = shutil.which("docker")
        if not docker:
            return None
        try:
            r = subprocess.run([docker, "run", "--rm", "--log-driver", "none", "--network", "none",
                                "--entrypoint", tool, image, "--version"], capture_output=True, text=True,
                               timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if r.returncode != 0:
            return None
        _versions[key] = r.stdout.strip()
    return _versions[key]


def _image_present(image: str) -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "image", "inspect", image], capture_output=True,
                                           timeout=60).returncode == 0


def choose_tool(names: list[str], release: tuple[int, ...], *, flavor: str, server_version: str, host: str | None,
                what: str, fix: str, env_names: Sequence[str] = (), extra_dirs: Iterable[str] = ()) -> Tool:
    """The host's tool when it reaches the server's release, else the same tool from the server's image."""
    try:
        path = require_tool(names, release, what=what, fix=fix, extra_dirs=extra_dirs, flavor=flavor)
    except ToolMissing as e:
        if os.environ.get("CRMOPS_TOOLS_PATH") is not None or os.environ.get("CRMOPS_TOOLS_CONTAINER") == "never":
            raise
        image = image_for_server(flavor, server_version)
        if not shutil.which("docker"):
            raise ToolMissing(f"{e.message}; no docker client to run it from {image} either", hint=fix) from None
        if not _image_present(image):
            raise ToolMissing(f"{e.message}; the image {image} that would supply it is not present",
                              hint=f"{fix}, or {image_hint(image)}") from None
        for name in names:
            version = _container_version(image, name)
            if version:
                return Tool(name, "container", version, reason=e.message, image=image, network=network_for(host),
                            env_names=tuple(env_names))
        raise ToolMissing(f"{e.message}; the image {image} has no {names[0]} either", hint=fix) from None
    found = tool_version(path)
    version = found[1].splitlines()[0] if found else "version unknown"
    return Tool(os.path.basename(path), "host", version, reason="the host's tool reaches the server's release",
                path=path)
