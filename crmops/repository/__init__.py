"""The snapshot repository: chunking, compression, encryption, keys, manifests, locks."""

from __future__ import annotations

from crmops.config import Config
from crmops.repository.cache import ObjectCache
from crmops.repository.keys import Credential, write_key_file
from crmops.repository.listing import SnapshotInfo
from crmops.repository.repo import Repository
from crmops.repository.writer import SnapshotWriter, WriteStats
from crmops.storage import open_store

__all__ = ["Credential", "Repository", "SnapshotInfo", "SnapshotWriter", "WriteStats", "credential",
           "open_repository", "write_key_file"]


def credential(config: Config) -> Credential:
    """The configured way in: a key file if named, else the passphrase (config or $CRMOPS_PASSPHRASE)."""
    enc = config.encryption
    if enc.key_file is not None:
        return Credential(key_file=enc.key_file)
    return Credential(passphrase=enc.resolved_passphrase())


def open_repository(config: Config) -> Repository:
    """The configured repository; a remote one keeps copies of its manifests and records under
    state_dir/cache (crmops.repository.cache), so listing it costs one round trip, not one each."""
    store = open_store(config.repository.url, config.repository)
    cache = ObjectCache(config.state_dir / "cache") if not config.repository.url.startswith("file:") else None
    return Repository.open(store, credential(config), cache)
