"""Which snapshot a command means: per source, with the configured database's as the default.

`latest` is the newest readable backup of the configured database's source; a snapshot
of another source is used only when named by id or picked with --source. Safety
snapshots (pre-restore, pre-migrate, pre-undo) are never `latest`: they are named by id.
"""

from __future__ import annotations

from typing import Any

from crmops.config import Config
from crmops.errors import ConfigError
from crmops.repository import Repository
from crmops.repository.listing import Listing
from crmops.repository.source import match_source, source_of_manifest, source_of_url


def configured_source(config: Config) -> str:
    return source_of_url(config.database.url)


def chosen_source(config: Config, listing: Listing, source: str | None) -> str:
    """The configured database's source, or the one --source names among those in the repository."""
    if source is None:
        return configured_source(config)
    return match_source(source, listing.sources())


def resolve(config: Config, repo: Repository, ref: str = "latest", *, source: str | None = None) -> dict[str, Any]:
    """The manifest ref means: an id or prefix as named; `latest` of the configured (or --source) source."""
    if ref != "latest":
        m = repo.manifest(ref)
        if source is not None:
            want = match_source(source, repo.listing().sources())
            if source_of_manifest(m) != want:
                raise ConfigError(f"snapshot {m['id']} is of source {source_of_manifest(m)}, not {want}",
                                  hint="drop --source, or name a snapshot of that source")
        return m
    listing = repo.listing()
    return listing.latest(chosen_source(config, listing, source))
