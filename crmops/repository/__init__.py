"""The snapshot repository: chunking, compression, encryption, keys, manifests, locks."""

from __future__ import annotations

from crmops.config import Config
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
    return Repository.open(open_store(config.repository.url, config.repository), credential(config))
