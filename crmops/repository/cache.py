"""A local copy of a remote repository's small immutable objects: manifests, records, key slots.

`crmops snapshots` or `status` on S3 fetched every manifest on every run, one round trip
each. Objects are written once and never changed in place, so a copy kept under
state_dir/cache/<repository id> serves them again, under three rules that keep every
guarantee: a copy is used only for a key the current listing names, with the very size
the listing gives (a deleted or rewritten object is fetched anew, and its copy goes);
what it holds is still sealed, so the caller authenticates it exactly as it would the
stored object; and a copy that fails to open is dropped and the object read from the
store (a damaged copy never hides a whole object, nor a whole copy a damaged one: `check`
reads the store itself). Local repositories use none: a local read is as cheap as the copy.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from crmops.errors import IntegrityError
from crmops.storage.base import Store

T = TypeVar("T")


class ObjectCache:
    """Sealed objects of one repository by key; folder None: no copies, every read from the store."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key.replace("/", os.sep)

    def read(self, store: Store, key: str, size: int | None, parse: Callable[[bytes], T]) -> T:
        """parse (which authenticates) of the object key whose listed size is size."""
        if self.folder is not None and size is not None:
            path = self._path(key)
            try:
                data = path.read_bytes()
            except OSError:
                data = None
            if data is not None and len(data) == size:
                try:
                    return parse(data)
                except (IntegrityError, ValueError):
                    self.drop(key)  # the copy is damaged, not necessarily the object: read the store
        data = store.get(key)
        result = parse(data)  # raises before a damaged object is kept
        if self.folder is not None and size is not None and len(data) == size:
            self.keep(key, data)
        return result

    def keep(self, key: str, data: bytes) -> None:
        """Keep a copy of an object as stored (sealed): what this process read, or has just written, so the
        next run whose listing names it at this size reads no more than the copy."""
        if self.folder is None:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            pass  # a cache that cannot be written only costs the next run a round trip

    def drop(self, key: str) -> None:
        if self.folder is not None:
            try:
                self._path(key).unlink()
            except OSError:
                pass

    def prune(self, prefix: str, listed: set[str]) -> None:
        """Forget the copies under prefix whose keys the listing no longer names."""
        if self.folder is None:
            return
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return
        for path in base.rglob("*"):
            if path.is_file():
                key = path.relative_to(self.folder).as_posix()
                if key not in listed:
                    try:
                        path.unlink()
                    except OSError:
                        pass
