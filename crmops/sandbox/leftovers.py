"""Find and remove sandboxes by label, e.g. after a SIGKILL or a power cut.

A sandbox whose owning crmops process still runs on this host is in use and left
alone unless asked; one kept with `drill --keep` outlives its owner and is removed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

from crmops.sandbox.docker import LABEL, docker_client, remove_by_name


@dataclass
class SandboxEntry:
    name: str
    kind: str  # container | network | volume
    status: str
    image: str
    engine: str
    created: str
    pid: int | None
    host: str
    owner_running: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _entry(name: str, kind: str, status: str, image: str, labels: dict[str, str]) -> SandboxEntry:
    pid = int(labels["crmops.pid"]) if labels.get("crmops.pid", "").isdigit() else None
    host = labels.get("crmops.host", "")
    # another host's process cannot be checked from here: treat it as running, to be safe
    running = _pid_alive(pid) if host == socket.gethostname() else True
    return SandboxEntry(name, kind, status, image, labels.get("crmops.engine", ""), labels.get("crmops.created", ""),
                        pid, host, running)


def list_sandboxes(client: Any = None) -> list[SandboxEntry]:
    """Every labelled container, plus networks no container holds any more."""
    client = client or docker_client()
    out: list[SandboxEntry] = []
    names = set()
    # ignore_removed: a sandbox that another run removes between the listing and its inspection is gone, not an error
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}, ignore_removed=True):
        image = (c.attrs.get("Config") or {}).get("Image", "")
        out.append(_entry(c.name, "container", c.status, image, c.labels))
        names.add(c.name)
    for n in client.networks.list(filters={"label": f"{LABEL}=1"}):
        if n.name not in names:
            out.append(_entry(n.name, "network", "", "", n.attrs.get("Labels") or {}))
    for v in client.volumes.list(filters={"label": f"{LABEL}=1"}):  # a dry run's copies of app volumes
        out.append(_entry(v.name, "volume", "", "", v.attrs.get("Labels") or {}))
    return sorted(out, key=lambda e: (e.created, e.name))


def cleanup(client: Any = None, *, include_running: bool = False, names: Collection[str] = ()
            ) -> tuple[list[SandboxEntry], list[SandboxEntry]]:
    """Remove leftovers, or exactly the named sandboxes; returns (removed, skipped as still in use)."""
    client = client or docker_client()
    removed, skipped = [], []
    for e in list_sandboxes(client):
        if names and e.name not in names:
            continue
        if e.owner_running and not (include_running or names):
            skipped.append(e)
            continue
        remove_by_name(client, e.name)
        removed.append(e)
    return removed, skipped
