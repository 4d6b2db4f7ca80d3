"""Remove live sandboxes on every way out: normal exit, exceptions, Ctrl-C, SIGTERM, SIGHUP.

Context managers cover exceptions and Ctrl-C; SIGTERM and SIGHUP are turned into
KeyboardInterrupt (if nobody else handles them) so the same path runs; atexit catches
whatever still escapes. Only SIGKILL and power cuts leave leftovers, and those carry
labels that `crmops sandbox cleanup` finds.
"""

from __future__ import annotations

import atexit
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

_live: dict[str, Callable[[], None]] = {}
_lock = threading.Lock()
_installed: dict[int, object] = {}
_atexit_done = False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _install() -> None:
    global _atexit_done
    if not _atexit_done:
        atexit.register(remove_all)
        _atexit_done = True
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if sig not in _installed and signal.getsignal(sig) is signal.SIG_DFL:
            _installed[sig] = signal.signal(sig, _interrupt)


def _uninstall() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in list(_installed.items()):
        if signal.getsignal(sig) is _interrupt:
            signal.signal(sig, previous)  # type: ignore[arg-type]
        del _installed[sig]


def register(name: str, remove: Callable[[], None]) -> None:
    """Remember how to remove a sandbox before it exists, so an interrupted start is cleaned too."""
    with _lock:
        _live[name] = remove
        _install()


def forget(name: str) -> None:
    with _lock:
        _live.pop(name, None)
        if not _live:
            _uninstall()


def remove_all() -> None:
    for name, remove in reversed(list(_live.items())):  # newest first: a rehearsal stack before its sandbox
        try:
            remove()
        except Exception:  # best effort at exit; cleanup by label is the fallback
            pass
        forget(name)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while a removal runs, so a second signal cannot leave half of it."""
    main = threading.current_thread() is threading.main_thread()
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    if main:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
