"""Ports for servers the tests start themselves.

A port the kernel hands out for bind(0) comes from the ephemeral range, which every outgoing
connection of the suite (to PostgreSQL, MariaDB, S3, Docker) also draws from: between the
probe closing and the server binding, another test's client socket could take it. Picking
from below that range, at random and probed, leaves only the rare pick of the same port by
two workers at once, which the probe then catches.
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 32000  # below Linux's default ephemeral range (32768-60999)


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now, outside the ephemeral range."""
    for _ in range(200):
        port = random.randint(LOW, HIGH)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {LOW} and {HIGH}")
