"""Where repository bytes live, behind the Store protocol (base.py)."""

from __future__ import annotations

from crmops.config import RepositoryConfig
from crmops.errors import ConfigError
from crmops.storage.base import Store

__all__ = ["Store", "open_store"]


def open_store(url: str, cfg: RepositoryConfig | None = None) -> Store:
    """The store for a repository URL: file:///path or s3://bucket/prefix."""
    if url.startswith("file://"):
        from pathlib import Path

        from crmops.storage.local import LocalStore

        root = Path(url[len("file://"):])
        for place in (root, *root.parents):  # the nearest part that exists must be a folder
            if place.exists() or place.is_symlink():
                if not place.is_dir():
                    what = "the repository path" if place == root else f"{place}, in the repository path,"
                    raise ConfigError(f"repository URL {url}: {what} is a file, not a folder",
                                      hint="point repository.url at a folder; `crmops repo init` creates it")
                break
        return LocalStore(root)
    if url.startswith("s3://"):
        from crmops.storage.s3 import S3Store

        return S3Store(url, (cfg or RepositoryConfig(url=url)).s3)
    raise ConfigError(f"repository URL {url!r}: expected file:///path or s3://bucket/prefix")
