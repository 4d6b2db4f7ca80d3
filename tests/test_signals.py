"""A SIGTERM (or Ctrl-C) is never lost, even when it lands where Python swallows exceptions."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import os, signal, sys, time, weakref
from crmops.cli import main as m
signal.signal(signal.SIGTERM, m._raise_interrupt)
sys.unraisablehook = m._redeliver_swallowed_stop

class Obj:
    pass

def callback(ref):  # like a library's garbage-collector callback, running when the stop arrives
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10000):
        pass

o = Obj()
r = weakref.ref(o, callback)
try:
    del o
    time.sleep(5)
    print("lost")
except KeyboardInterrupt:
    print("stopped by", m._STOPPED_BY)
"""


def test_a_stop_swallowed_by_a_gc_callback_is_delivered_again() -> None:
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "stopped by SIGTERM", r.stdout + r.stderr
