"""Keep freed heap memory for the next chunk instead of handing it back to the OS at once.

Every metric sweep works on ``[chunk, vocab]`` temporaries (64 positions x 49,152 entries x
4 B = 12.5 MB for the default model), allocated and freed once per chunk. glibc serves blocks
that size with ``mmap`` or trims them off the heap top when freed, so each chunk's temporaries
are fresh pages, faulted in and zeroed by the kernel on first touch: measured on the 2-core
reference machine, that doubled the cost of the model-diff divergence sweep (480 -> 224 ms per
512 positions) and slows the scoring sweep the same way.

:func:`keep_freed_heap` raises glibc's mmap threshold to its maximum (32 MB) and its trim
threshold to ``keep_mb``, so freed temporaries stay in the process for the next chunk. The
cost is resident memory: up to ``keep_mb`` of freed heap is kept after a large job
(``TOKENPRISM_KEEP_FREED_MEMORY_MB``, 0 leaves glibc's defaults). Other C libraries: nothing
is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc refuses more on 64-bit systems
_DONE: set[int] = set()
_LOCK = threading.Lock()


def keep_freed_heap(keep_mb: int) -> bool:
    """Tune glibc's allocator once per process; True when it was (or already is) tuned."""
    if keep_mb <= 0:
        return False
    with _LOCK:
        if keep_mb in _DONE:
            return True
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name)
            mallopt = libc.mallopt
        except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): leave it
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        trim = min(keep_mb * 1024 * 1024, 2**31 - 1)
        ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
            mallopt(_M_TRIM_THRESHOLD, trim)
        )
        if ok:
            _DONE.add(keep_mb)
        else:
            log.debug("mallopt refused the thresholds; glibc defaults stay")
        return ok
