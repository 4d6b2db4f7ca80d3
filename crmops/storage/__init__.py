"""Where repository bytes live, behind the Store protocol (base.py)."""

from __future__ import annotations

from crmops.config import RepositoryConfig
from crmops.errors import ConfigError
from crmops.storage.base import Store

__all__ = ["Store", "open_store"]


def open_store(url: str, cfg: RepositoryConfig | None = None) -> Store:
    """The store for a repository URL: file:///path or s3://bucket/prefix."""
    if url.startswith("file://"):
        from crmops.storage.local import LocalStore

        return LocalStore(url[len("file://"):])
    if url.startswith("s3://"):
        from crmops.storage.s3 import S3Store

        return S3Store(url, (cfg or RepositoryConfig(url=url)).s3)
    raise ConfigError(f"repository URL {url!r}: expected file:///path or s3://bucket/prefix")
