"""Throwaway databases for verification: Docker containers, or a temporary directory for SQLite."""

from __future__ import annotations

from crmops.config import VerifyConfig
from crmops.sandbox.base import Sandbox, flavor_of, image_for

__all__ = ["Sandbox", "flavor_of", "image_for", "open_sandbox"]


def open_sandbox(cfg: VerifyConfig, engine: str, server_version: str, *, database: str | None = None) -> Sandbox:
    """A not yet started sandbox for a snapshot's engine ("postgresql", "mysql", "sqlite") and version."""
    if engine == "sqlite":
        from crmops.sandbox.sqlite import SqliteSandbox

        return SqliteSandbox(database)
    from crmops.sandbox.docker import DockerSandbox

    return DockerSandbox(cfg, engine, server_version, database=database)
