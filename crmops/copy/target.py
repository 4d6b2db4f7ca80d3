"""Opening a copy as a store, and making it a repository of the same id and key slots as the primary.

The copy receives the primary's `config` and `keys/*` objects as they are (the key slots
wrap the one master key, bound to the repository id): the same passphrase or key file opens
both, and sealed chunks authenticate in either. `config` is written last, as `repo init`
writes it: an interrupted first copy leaves no half repository.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from crmops.config import Config
from crmops.errors import ConfigError, CrmopsError, RepositoryNotFound
from crmops.repository import Repository
from crmops.storage import Store, open_store

log = logging.getLogger("crmops.copy")


def open_copy_store(config: Config, name: str) -> Store:
    """The copy's store, with the copy's own credentials."""
    return open_store(config.copy_named(name).url, config.copy_repository(name))


def _ensure_bucket(store: Store) -> None:
    bucket_exists = getattr(store, "bucket_exists", None)
    if bucket_exists is not None and not bucket_exists():
        store.create_bucket()  # type: ignore[attr-defined]


def prepare(source: Repository, store: Store, name: str) -> dict[str, Any]:
    """Make store a copy of source's repository (or check that it is one); sync the key slots.

    Returns {"created": bool, "keys_added": [...], "keys_removed": [...]}. A store holding
    another repository is refused before anything is written.
    """
    try:
        exists = store.exists("config")
    except RepositoryNotFound:
        exists = False
    if exists:
        other = json.loads(store.get("config"))
        if other.get("id") != source.id:
            raise ConfigError(f"copy {name} at {store.url} holds another repository (id {other.get('id')}), "
                              f"not a copy of this one (id {source.id})",
                              hint="point the copy at an empty place, or at a copy of this repository")
    else:
        _ensure_bucket(store)
    theirs = {key for key, _ in store.list("keys/")}
    mine = {key for key, _ in source.store.list("keys/")}
    added = sorted(mine - theirs)
    for key in added:
        store.put(key, source.store.get(key))
    removed = []
    if mine:  # a slot removed from the repository (a departing administrator) goes from the copy too
        for key in sorted(theirs - mine):
            try:
                store.delete(key)
                removed.append(key)
            except CrmopsError as e:
                log.warning("copy %s: key slot %s removed from the repository stays in the copy: %s",
                            name, key, e.message)
    if not exists:
        store.put("config", source.store.get("config"))  # last: the copy is now a repository
    return {"created": not exists, "keys_added": [k.split("/", 1)[1] for k in added],
            "keys_removed": [k.split("/", 1)[1] for k in removed]}
