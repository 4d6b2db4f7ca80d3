"""Where an undo reads the past from: a database URL that holds the state to go back to.

A source is a context manager yielding a PastState; the database behind its url exists
only while the context is open. Today the one source is a snapshot restored into a
sandbox (the same sandboxes and restore `crmops verify` uses); point-in-time recovery
adds a second one (the archive replayed to a time, in a sandbox) with the same shape,
so selection, planning and writing never need to know which one ran.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from crmops.config import Config
from crmops.engines import open_engine
from crmops.engines.base import STAGE_LIMIT
from crmops.errors import CrmopsError, SandboxUnavailable
from crmops.repository import Repository
from crmops.sandbox import open_sandbox
from crmops.services.restore import ENGINE_OF_FORMAT, read_staged, stage
from crmops.undo.closure import mysql_sandbox_tables, sandbox_tables


@dataclass
class PastState:
    """A database holding the past, and what an audit needs to say where it came from."""

    #: database URL with password (never print it)
    url: str
    engine: str
    #: "snapshot" today; "point-in-time" once that exists
    kind: str
    #: what the user asked for and what it resolved to
    label: str
    snapshot_id: str | None = None
    snapshot_time: str | None = None
    #: the snapshot's manifest, for its attachment files (None: no files to bring back)
    manifest: dict[str, Any] | None = None
    sandbox: str = ""
    restore_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "snapshot_id": self.snapshot_id,
                "snapshot_time": self.snapshot_time, "engine": self.engine, "sandbox": self.sandbox,
                "restore_seconds": self.restore_seconds}


#: how an undo obtains its past state; a point-in-time source is another function of this shape
PastSource = Callable[[], AbstractContextManager[PastState]]


#: dump formats whose sandbox can hold only an undo's closure (undo.closure), read from the staged dump
NARROWED = {"pg-custom", "mysql-sql"}


@contextmanager
def from_snapshot(config: Config, ref: str, repo: Repository, on_step: Callable[[str], None] | None = None,
                  table: str | None = None) -> Iterator[PastState]:
    """Restore snapshot ref (an id, a prefix or latest) into a throwaway sandbox, removed on exit.

    table: the undo's table; a PostgreSQL, MariaDB or MySQL sandbox then holds only what it can
    reach (undo.closure). The sandbox starts on a thread while the dump is fetched, authenticated
    and staged here: a container's start-up is mostly waiting, and so is the repository."""
    import time

    say = on_step or (lambda s: None)
    from crmops.sandbox.background import starting
    from crmops.services.sources import resolve

    manifest = resolve(config, repo, ref)
    stream = manifest["streams"]["database"]
    engine = ENGINE_OF_FORMAT.get(stream["format"], "unknown")
    sandbox = open_sandbox(config.verify, engine, manifest.get("server_version") or "",
                           database=manifest.get("database"))
    try:
        with starting(sandbox) as started:
            # staged: a PostgreSQL dump always (then pg_restore -j or one transaction), a MariaDB one to read
            # its closure from
            staged_ctx = stage(repo, manifest, files=False) if stream["size"] <= STAGE_LIMIT and (
                stream["format"] == "pg-custom" or (table and stream["format"] in NARROWED)) else None
            with staged_ctx if staged_ctx is not None else _nothing() as staged:
                tables = _closure(staged, manifest, table, config) if staged is not None else None
                started.ready()
                say(f"sandbox {sandbox.name} ready" + (f" ({sandbox.image})" if sandbox.image else ""))
                if tables is not None:
                    say(f"the sandbox holds the {len(tables)} table{'s' * (len(tables) != 1)} {table} can reach")
                target = open_engine(sandbox.url, config.database.model_copy(update={"restore_owners": False}))
                t0 = time.monotonic()
                try:
                    if staged is not None and stream["format"] == "pg-custom":
                        target.restore((), format=stream["format"], staged=staged, tables=tables)
                    elif staged is not None:
                        target.restore(read_staged(staged), format=stream["format"], tables=tables)
                    else:
                        target.restore(repo.read_stream(manifest), format=stream["format"])
                except CrmopsError:
                    if not sandbox.alive():
                        raise SandboxUnavailable(f"sandbox {sandbox.name} stopped or vanished during the restore",
                                                 hint="check `docker events` and verify.memory_limit, then retry") \
                            from None
                    raise
            seconds = round(time.monotonic() - t0, 3)
            say(f"snapshot {manifest['id'][:10]} restored into the sandbox in {seconds:.1f} s")
            yield PastState(url=sandbox.url, engine=engine, kind="snapshot", label=ref, snapshot_id=manifest["id"],
                            snapshot_time=manifest["time"], manifest=manifest, sandbox=sandbox.name,
                            restore_seconds=seconds)
    finally:
        sandbox.remove()


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def _closure(staged: Any, manifest: dict[str, Any], table: str | None, config: Config) -> list[str] | None:
    """The tables the sandbox must hold, read from the staged dump's schema (None: all of them).

    Before the sandbox is up: pg_restore is chosen for the snapshot's server version (the
    sandbox's), through the configured database's engine, which it does not connect to."""
    if not table:
        return None
    if manifest["streams"]["database"]["format"] == "pg-custom":
        reader = open_engine(config.database.url, config.database)
        return sandbox_tables(*reader.describe_archive(staged, manifest.get("server_version") or None), table,
                              config.undo.relations)
    return mysql_sandbox_tables(staged, table, config.undo.relations)
