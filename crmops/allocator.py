"""Keep large buffers in the heap instead of mapping and unmapping each one.

Every chunk passes through several 0.3–4 MiB buffers (read, cut, compressed, sealed).
glibc maps each allocation that size freshly from the kernel, and the page faults that
follow cost a backup of the large demo CRM 1.3 s of its 22 s (190,000 faults; 28,000
with this). The trim threshold still hands memory back once more than 64 MiB is free.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_large_buffers() -> bool:
    """Raise glibc's mmap threshold above the chunk sizes; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(None)  # the C library already loaded: no search (which runs ldconfig) at start-up
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 64 << 20))
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
