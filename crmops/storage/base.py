"""The Store protocol: where repository bytes live (a local folder, an S3 bucket).

Stores know nothing of chunks or encryption; they move named, immutable objects.
A put is atomic from a reader's view: an object is either whole or absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class Store(Protocol):
    #: where it is, safe to print (no credentials)
    url: str

    def put(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> None:
        """Write an object atomically; retain_until asks for S3 Object Lock retention."""
        ...

    def get(self, key: str) -> bytes:
        """The whole object; raises IntegrityError naming the key when it is missing."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with prefix."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; an object under retention raises (and is kept)."""
        ...


@dataclass
class Temporary:
    """Something a store left half-written (a local temp file, an S3 multipart upload never completed).

    Never part of the repository: a put either completes or leaves one of these, which
    `check` reports and `prune` removes once it is older than a day.
    """

    name: str
    size: int
    created: datetime

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "created": self.created.isoformat(timespec="seconds")}
