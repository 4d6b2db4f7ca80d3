"""The Engine protocol: what crmops needs from any database it protects.

A dump and its fingerprint describe the same consistent point in time, so a
restored copy can be compared with what was dumped, table by table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from crmops.errors import ConfigError, DatabaseError, Interrupted


@dataclass(frozen=True)
class TableFingerprint:
    rows: int
    #: order-independent content checksum (hex), comparable only within one engine
    checksum: str


@dataclass
class Fingerprint:
    engine: str
    tables: dict[str, TableFingerprint] = field(default_factory=dict)
    #: schema object counts: tables, indexes, foreign_keys, views, triggers, routines, sequences
    objects: dict[str, int] = field(default_factory=dict)
    #: sequence (PostgreSQL) or AUTO_INCREMENT (MySQL) / sqlite_sequence values by name
    sequences: dict[str, int] = field(default_factory=dict)
    #: how the checksums were computed ("" = the engine's first way); two fingerprints
    #: compare only when computed the same way, so a stored one names its method
    method: str = ""
    #: PostgreSQL partitions by name -> the partitioned table they belong to; their rows are
    #: counted and hashed once, in that table's entry (older fingerprints listed them as tables)
    partitions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(
            engine=data["engine"],
            tables={k: TableFingerprint(**v) for k, v in data.get("tables", {}).items()},
            objects=dict(data.get("objects", {})),
            sequences=dict(data.get("sequences", {})),
            method=data.get("method", ""),
            partitions=dict(data.get("partitions", {})),
        )

    def compare(self, other: Fingerprint) -> list[Difference]:
        """Differences from self (expected) to other (found); empty means equal."""
        if self.method != other.method:
            return [Difference("method", "checksums", self.method or "original", other.method or "original",
                               "fingerprints computed in different ways cannot be compared")]
        diffs: list[Difference] = []
        for name in sorted(set(self.tables) | set(other.tables)):
            a, b = self.tables.get(name), other.tables.get(name)
            if (a is None and name in self.partitions) or (b is None and name in other.partitions):
                continue  # a partition: one side counts it in its table only
            if a is None:
                diffs.append(Difference("table", name, None, b.rows if b else None, "unexpected table"))
            elif b is None:
                diffs.append(Difference("table", name, a.rows, None, "table missing"))
            elif a.rows != b.rows:
                diffs.append(Difference("table", name, a.rows, b.rows, "row count differs"))
            elif a.checksum != b.checksum:
                diffs.append(Difference("table", name, a.checksum, b.checksum, "content checksum differs"))
        for kind in sorted(set(self.objects) | set(other.objects)):
            if self.objects.get(kind) != other.objects.get(kind):
                diffs.append(Difference("objects", kind, self.objects.get(kind), other.objects.get(kind),
                                        "object count differs"))
        # sequences are not transactional: a dump may store a value taken a moment after the
        # fingerprint, never before it, so a restored copy must be at or above the recorded one
        for name in sorted(set(self.sequences) | set(other.sequences)):
            want, got = self.sequences.get(name), other.sequences.get(name)
            if want is None or got is None or got < want:
                diffs.append(Difference("sequence", name, self.sequences.get(name),
                                        other.sequences.get(name), "sequence value differs"))
        return diffs


@dataclass(frozen=True)
class Difference:
    kind: str  # table | objects | sequence | method
    name: str
    expected: Any
    found: Any
    reason: str


@runtime_checkable
class Dump(Protocol):
    """An open dump: its bytes stream out once; its fingerprint and metadata are known first."""

    #: dump format tag stored in the manifest: "pg-custom", "mysql-sql", "sqlite-db"
    format: str
    server_version: str

    @property
    def fingerprint(self) -> Fingerprint:
        """The fingerprint of exactly what was dumped; may only be ready once chunks() is consumed."""
        ...

    def chunks(self) -> Iterator[bytes]:
        """The dump's bytes, in pieces of any size; raises DatabaseError if the tool fails."""
        ...


def tables_outcome(tables: list[str], live: set[str] | list[str], beside: list[str] | None = None
                   ) -> dict[str, list[str]]:
    """What a partial restore did: with beside (the --as names) it only created those; else it replaced
    the tables the target had and created the others."""
    if beside is not None:
        return {"replaced": [], "created": beside}
    return {"replaced": [t for t in tables if t in live], "created": [t for t in tables if t not in live]}


@dataclass
class TableCommit:
    """Whether a one-transaction table restore has committed: what a Ctrl-C leaves is told from it."""

    committed: bool = False


def stopped_tables(tables: list[str], done: TableCommit) -> Interrupted:
    """The one line for a stop during a table restore: each table's state, known from the commit."""
    if done.committed:
        e = Interrupted(f"restore stopped after the commit; {', '.join(f'{t}: restored rows' for t in tables)}")
    else:
        e = Interrupted(f"restore stopped before the commit; {', '.join(f'{t}: left as they were' for t in tables)}"
                        " (rolled back)")
    e.committed = done.committed  # type: ignore[attr-defined]
    return e


def told_on_stop(tables: list[str], run: Callable[[TableCommit], dict[str, list[str]]]) -> dict[str, list[str]]:
    """run(done) with a stop (Ctrl-C, SIGTERM) turned into the line that says each table's state."""
    done = TableCommit()
    try:
        return run(done)
    except KeyboardInterrupt:
        raise stopped_tables(tables, done) from None


def check_method(engine: str, method: str | None, known: tuple[str, ...] = ("",)) -> str:
    """The method to compute a fingerprint with; a snapshot from a newer crmops is refused clearly."""
    if method is None:
        return known[-1]
    if method not in known:
        raise DatabaseError(f"this crmops cannot compute a {engine} fingerprint the way {method!r} was",
                            hint="upgrade crmops to the version that wrote the snapshot")
    return method


@runtime_checkable
class Engine(Protocol):
    """One database (a URL): dump, restore, fingerprint, inspect."""

    name: str  # "postgresql" | "mysql" | "sqlite"

    def server_version(self) -> str: ...

    def server_major(self) -> int:
        """The leading number of server_version(), e.g. for choosing a sandbox image (postgres:15)."""
        ...

    def database_name(self) -> str: ...

    def check(self) -> dict[str, Any]:
        """Connect and report engine, version, size, table count and dump-tool readiness."""
        ...

    def dump(self) -> AbstractContextManager[Dump]: ...

    def restore(self, chunks: Iterable[bytes], *, format: str, tables: list[str] | None = None) -> None:
        """Load a dump into this (empty, unless tables are chosen) database."""
        ...

    def restore_tables(self, chunks: Iterable[bytes], *, format: str, tables: list[str],
                       prefix: str | None = None) -> dict[str, list[str]]:
        """Into a live database: replace only the chosen tables, all or nothing, keys checked.

        With prefix, add them beside the live ones as prefix+name instead. Returns the
        tables "replaced" and "created"; raises ConstraintBroken (nothing changed) when a
        foreign key from or to a replaced table would no longer hold.
        """
        ...

    def existing_tables(self, tables: list[str]) -> list[str]:
        """Which of these tables already exist here."""
        ...

    def fingerprint(self, *, method: str | None = None) -> Fingerprint:
        """Computed the given way (a stored fingerprint's .method, so the two compare) or the newest way."""
        ...

    def is_empty(self) -> bool: ...

    def schema_revision(self) -> str | None:
        """The Alembic revision(s) recorded in alembic_version, comma-joined, or None."""
        ...

def version_parts(flavor: str, server_version: str) -> dict[str, str]:
    """{major} and {version} for image templates: postgres:15, mariadb:10.11, mysql:8.0."""
    nums = re.findall(r"\d+", server_version.split("-")[0])
    if not nums:
        raise ConfigError(f"cannot read a version from the snapshot's server version {server_version!r}")
    major = nums[0]
    minor = nums[1] if len(nums) > 1 else "0"
    if flavor == "postgresql" and int(major) >= 10:
        return {"major": major, "version": major}  # PostgreSQL 10+: the major alone is the release line
    return {"major": major, "version": f"{major}.{minor}"}
