"""Start a sandbox on a thread while the caller fetches, authenticates and stages what goes into it.

A container's start is mostly waiting (the image's entrypoint runs initdb, a temporary
server, the real server), and so is a repository; side by side, the slower of the two
sets the pace instead of their sum. The sandbox is registered with the guard on the
calling (main) thread first, so Ctrl-C or SIGTERM during either half still removes it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from crmops.sandbox import guard
from crmops.sandbox.base import Sandbox


class Starting:
    """A sandbox whose start() runs on a thread; ready() waits for it and raises what the start raised."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._failed: list[BaseException] = []
        self._thread = threading.Thread(target=self._start, name="crmops-sandbox-start", daemon=True)

    def _start(self) -> None:
        try:
            self.sandbox.start()
        except BaseException as e:  # noqa: BLE001 - raised again on the caller's thread
            self._failed.append(e)

    def check(self) -> None:
        """Raise now if the start has already failed (e.g. between two chunks of a long staging)."""
        if self._failed:
            raise self._failed[0]

    def ready(self) -> None:
        self._thread.join()
        self.check()


@contextmanager
def starting(sandbox: Sandbox) -> Iterator[Starting]:
    """Start sandbox in the background for the block; on the way out a start still waiting gives up.

    Removing the sandbox stays the caller's (it may keep it)."""
    guard.register(sandbox.name, sandbox.remove)  # signal handlers are installed by the main thread
    started = Starting(sandbox)
    started._thread.start()
    try:
        yield started
    finally:
        sandbox.abandoned = True  # type: ignore[attr-defined]  # a start still waiting for the server stops
        started._thread.join()
