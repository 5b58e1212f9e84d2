"""Give freed memory back to the OS (glibc): a front end's peak memory, not a library's behaviour.

glibc raises its mmap threshold each time a large block is freed, so after the first photo the
big, short-lived buffers (decoded images, resized copies, network activations) come from the heap,
and freed heap pages stay resident while new ones are taken: on the benchmark's folder of ten
1080p photos the peak was ~630 MB. Fixing the threshold at 128 KiB (glibc's initial value;
setting it explicitly turns the dynamic raise off) serves those buffers with ``mmap`` and unmaps
them when freed: the same run peaks at ~535 MB, at the same CPU time (``benchmarks/speed.py``).

Only the front ends (CLI, web server) call :func:`return_freed_memory_to_os`; importing the
library changes nothing. The user's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
environment settings win, and ``IDENTITYDP_MALLOC=default`` leaves glibc's behaviour as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024


def return_freed_memory_to_os() -> bool:
    """Fix glibc's mmap threshold (see the module docstring). Returns whether it was applied
    (False off glibc, or when the environment already tunes malloc)."""
    if not sys.platform.startswith("linux"):
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    if os.environ.get("IDENTITYDP_MALLOC", "") == "default":
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt, nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
