"""The Sandbox protocol: a throwaway database of the snapshot's engine and version.

A verification restores into a sandbox, never into anything a person relies on, and
the sandbox disappears afterwards whatever happens (success, failure, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from crmops.engines.base import version_parts
from crmops.errors import ConfigError


@runtime_checkable
class Sandbox(Protocol):
    """Started by start() (or `with`), gone after remove(); keep() leaves it for people to inspect."""

    #: "docker" or "sqlite"
    kind: str
    #: unique name (the container's, for Docker)
    name: str
    #: engine kind as engine_kind() names it: "postgresql" | "mysql" | "sqlite"
    engine: str
    #: the image it runs ("" without Docker) and that image's id, for the signed record
    image: str
    image_id: str

    @property
    def url(self) -> str:
        """A database URL reachable from this host, password included (never print it: see connect_info)."""
        ...

    def start(self) -> None: ...

    def remove(self) -> None: ...

    def alive(self) -> bool:
        """Still there and running: tells a broken snapshot from a sandbox that vanished under us."""
        ...

    def keep(self) -> None:
        """Leave the sandbox running past this process (`crmops sandbox cleanup` removes it later)."""
        ...

    def connect_info(self) -> dict[str, Any]:
        """How a person reaches and removes it: masked URL, a shell line, the removal command."""
        ...

    def __enter__(self) -> Sandbox: ...

    def __exit__(self, *exc: object) -> None: ...


def flavor_of(engine: str, server_version: str) -> str:
    """Which image family a server needs: postgresql, mariadb or mysql (MariaDB reports itself in VERSION())."""
    if engine == "postgresql":
        return "postgresql"
    if engine == "mysql":
        return "mariadb" if "mariadb" in server_version.lower() else "mysql"
    return engine




def image_for(images: dict[str, str], engine: str, server_version: str) -> str:
    """The configured image for this engine and version, e.g. postgres:{major} -> postgres:15."""
    flavor = flavor_of(engine, server_version)
    template = images.get(flavor)
    if not template:
        raise ConfigError(f"verify.images.{flavor} is not set: no sandbox image for {flavor} snapshots",
                          hint=f"set verify.images.{flavor}, e.g. {flavor}:{{version}}")
    try:
        return template.format(**version_parts(flavor, server_version))
    except (KeyError, IndexError) as e:
        raise ConfigError(f"verify.images.{flavor}: unknown placeholder {e} (use {{major}} or {{version}})") from None
