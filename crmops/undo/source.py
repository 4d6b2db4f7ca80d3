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
from crmops.errors import CrmopsError, SandboxUnavailable
from crmops.repository import Repository
from crmops.sandbox import open_sandbox
from crmops.services.restore import ENGINE_OF_FORMAT


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


@contextmanager
def from_snapshot(config: Config, ref: str, repo: Repository,
                  on_step: Callable[[str], None] | None = None) -> Iterator[PastState]:
    """Restore snapshot ref (an id, a prefix or latest) into a throwaway sandbox, removed on exit."""
    import time

    say = on_step or (lambda s: None)
    from crmops.services.sources import resolve

    manifest = resolve(config, repo, ref)
    stream = manifest["streams"]["database"]
    engine = ENGINE_OF_FORMAT.get(stream["format"], "unknown")
    sandbox = open_sandbox(config.verify, engine, manifest.get("server_version") or "",
                           database=manifest.get("database"))
    try:
        sandbox.start()
        say(f"sandbox {sandbox.name} ready" + (f" ({sandbox.image})" if sandbox.image else ""))
        target = open_engine(sandbox.url, config.database.model_copy(update={"restore_owners": False}))
        t0 = time.monotonic()
        try:
            target.restore(repo.read_stream(manifest), format=stream["format"])
        except CrmopsError:
            if not sandbox.alive():
                raise SandboxUnavailable(f"sandbox {sandbox.name} stopped or vanished during the restore",
                                         hint="check `docker events` and verify.memory_limit, then retry") from None
            raise
        seconds = round(time.monotonic() - t0, 3)
        say(f"snapshot {manifest['id'][:10]} restored into the sandbox in {seconds:.1f} s")
        yield PastState(url=sandbox.url, engine=engine, kind="snapshot", label=ref, snapshot_id=manifest["id"],
                        snapshot_time=manifest["time"], manifest=manifest, sandbox=sandbox.name,
                        restore_seconds=seconds)
    finally:
        sandbox.remove()
