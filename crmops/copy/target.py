"""Opening a copy as a store, and making it a repository: the primary's id and key slots, or its own.

key: shared — the copy receives the primary's `config` and `keys/*` objects as they are (the
key slots wrap the one master key, bound to the repository id): the same passphrase or key
file opens both, and sealed chunks authenticate in either.
key: own — the copy is a repository of its own (its own id, master key and key slots, made
from the copy's `encryption`), whose `config` names the repository it copies (`copy_of`).
Either way `config` is written last, as `repo init` writes it: an interrupted first copy
leaves no half repository.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from crmops.config import Config
from crmops.errors import ConfigError, CrmopsError, RepositoryNotFound, WrongKey
from crmops.repository import Credential, Repository, credential
from crmops.storage import Store, open_store

log = logging.getLogger("crmops.copy")


def open_copy_store(config: Config, name: str) -> Store:
    """The copy's store, with the copy's own credentials."""
    return open_store(config.copy_named(name).url, config.copy_repository(name))


def copy_credential(config: Config, name: str) -> Credential:
    """The way into copy NAME: its own passphrase or key file (key: own), else the repository's."""
    c = config.copy_named(name)
    if c.key == "own" and c.encryption is not None:
        if c.encryption.key_file is not None:
            return Credential(key_file=c.encryption.key_file)
        return Credential(passphrase=c.encryption.passphrase.get_secret_value() if c.encryption.passphrase else "")
    return credential(config)


def open_copy(config: Config, name: str, store: Store | None = None) -> Repository:
    """Copy NAME opened with its key; a wrong key names the copy's own settings."""
    store = store or open_copy_store(config, name)
    try:
        return Repository.open(store, copy_credential(config, name))
    except WrongKey as e:
        if config.copy_named(name).key != "own":
            raise
        raise WrongKey(f"copy {name}: its own key (copies[{name}].encryption) does not open {store.url}",
                       hint="the copy has its own keys (key: own); the repository's passphrase does not "
                            "open it") from e


def _ensure_bucket(store: Store) -> None:
    bucket_exists = getattr(store, "bucket_exists", None)
    if bucket_exists is not None and not bucket_exists():
        store.create_bucket()  # type: ignore[attr-defined]


def _existing(source: Repository, store: Store, name: str, *, own: bool) -> bool:
    """Whether store already holds a copy of source of this kind; ConfigError (nothing written) when it
    holds another repository, or a copy of the other kind (`key` is fixed once a copy exists)."""
    try:
        if not store.exists("config"):
            return False
    except RepositoryNotFound:
        return False
    other = json.loads(store.get("config"))
    mine = other.get("copy_of") == source.id if own else other.get("id") == source.id
    if not mine:
        kind = "key: shared" if other.get("id") == source.id else "key: own" if other.get("copy_of") == source.id \
            else None
        what = f"a copy of this repository with {kind}" if kind else f"another repository (id {other.get('id')})"
        raise ConfigError(f"copy {name} at {store.url} holds {what}, not the key: {'own' if own else 'shared'} "
                          f"copy of this repository (id {source.id}) its configuration asks for",
                          hint="point the copy at an empty place, or set its `key` to what that place holds")
    return True


def prepare_own(source: Repository, store: Store, config: Config, name: str) -> tuple[dict[str, Any], Repository]:
    """Make store a copy with its own keys of source (or check that it is one); the copy, opened."""
    if _existing(source, store, name, own=True):
        return {"created": False, "keys_added": [], "keys_removed": []}, open_copy(config, name, store)
    _ensure_bucket(store)
    fmt = source.config
    dest = Repository.init(store, copy_credential(config, name), chunk_avg=fmt["chunker"]["avg"],
                           compression_level=fmt.get("compression_level", 1), label=f"copy {name}",
                           extra={"copy_of": source.id, "key": "own"})
    return {"created": True, "keys_added": [dest.slot_id], "keys_removed": []}, dest


def prepare(source: Repository, store: Store, name: str) -> dict[str, Any]:
    """Make store a copy of source's repository (or check that it is one); sync the key slots.

    Returns {"created": bool, "keys_added": [...], "keys_removed": [...]}. A store holding
    another repository is refused before anything is written.
    """
    exists = _existing(source, store, name, own=False)
    if not exists:
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
