"""Leaving the process once a command has finished and said so.

A normal interpreter exit then tears down every module and object: 30-130 ms for a
command that imported pydantic, SQLAlchemy, boto3 or docker (`snapshots` at 0.25 s,
`verify` closing its Docker client), with nothing left to do. Once the outcome is
printed, the exit handlers run as usual (logging's flush, temporary folders' removal,
the job journal), stdout and stderr are flushed, and the process ends there. If any
non-daemon thread is still running, the interpreter exits the usual way, which waits
for it.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading


def exit_code(code: object) -> int:
    """SystemExit's code as the process's exit status (a message: printed, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def leave(code: object) -> None:
    """End the process now with code; returns (to exit the usual way) if a thread still works."""
    main = threading.main_thread()
    if any(t is not main and t.is_alive() and not t.daemon for t in threading.enumerate()):
        return
    status = exit_code(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or a closed stream: nothing more to say
            pass
    os._exit(status)
