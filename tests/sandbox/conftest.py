"""Every sandbox test must leave no container or network of this process behind."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def own_leftovers(client) -> list[str]:  # type: ignore[no-untyped-def]
    mine = {"label": ["crmops.sandbox=1", f"crmops.pid={os.getpid()}"]}
    return [c.name for c in client.containers.list(all=True, filters=mine, ignore_removed=True)] + [
        n.name for n in client.networks.list(filters=mine)]


@pytest.fixture
def no_leftovers(docker_client) -> Iterator[None]:  # type: ignore[no-untyped-def]
    yield
    assert own_leftovers(docker_client) == []
