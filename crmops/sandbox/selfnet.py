"""crmops inside a container (docs/COMPOSE.md): join the sandbox's private network to reach it.

On a host, crmops reaches a sandbox by its IP on the sandbox's internal bridge. From inside a
container (the crmops image beside a Compose stack, the Docker socket mounted) that bridge is
not routed to it, so crmops attaches its own container to the sandbox's network for the
sandbox's lifetime; the network stays internal (no way out for either). Removing the network
detaches whatever is still attached.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

#: a 64-hex container id in a path Docker mounts into every container (hostname, resolv.conf)
_ID_IN_MOUNTS = re.compile(r"/containers/([0-9a-f]{64})/")


def own_container_id(mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """This process's container id when it runs in a Docker container, else None."""
    if not Path("/.dockerenv").exists():
        return None
    try:
        found = _ID_IN_MOUNTS.search(mountinfo.read_text())
    except OSError:
        found = None
    return found.group(1) if found else socket.gethostname()  # Docker's default hostname is the short id


def join(client: Any, network: str) -> bool:
    """Attach this process's own container to `network` when it runs in one on the same engine."""
    from docker.errors import NotFound

    cid = own_container_id()
    if cid is None:
        return False
    try:
        me = client.containers.get(cid)
    except NotFound:
        return False  # a container of another engine: nothing to join
    client.networks.get(network).connect(me)
    return True


def detach_all(net: Any) -> None:
    """Disconnect every container still attached (crmops's own), so the network can be removed."""
    from docker.errors import APIError, NotFound

    net.reload()
    for cid in (net.attrs.get("Containers") or {}):
        try:
            net.disconnect(cid, force=True)
        except (NotFound, APIError):
            pass
