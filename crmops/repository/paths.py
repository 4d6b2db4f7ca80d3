"""Where a repository keeps each object, and the small facts every part of it shares.

The byte layout behind these names is documented in docs/FORMAT.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def now() -> datetime:
    return datetime.now(UTC)


#: a sealed object is at least its version byte, nonce and tag
SEALED_MIN = 1 + 12 + 16


def chunk_key(chunk_id: str) -> str:
    return f"data/{chunk_id[:2]}/{chunk_id}"


def quarantine_key(chunk_id: str) -> str:
    return f"quarantine/{chunk_id}"


def manifest_chunks(manifest: dict[str, Any]) -> list[str]:
    """Every chunk id a snapshot needs (database streams, then attachments), in order, repeats kept."""
    ids = [c for s in manifest.get("streams", {}).values() for c in s["chunks"]]
    ids += [c for f in manifest.get("files", []) for c in f.get("chunks", [])]
    return ids
