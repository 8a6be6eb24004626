"""``keep_freed_heap``: freed chunk-sized temporaries stay in the process (glibc only).

Each check runs in a fresh interpreter: the allocator's thresholds are process-wide.
"""

from __future__ import annotations

import ctypes.util
import platform
import subprocess
import sys

import pytest

from tokenprism.backend.models.heap import keep_freed_heap

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's"
)

# free bytes the heap keeps after a 20 MB block (a metric sweep's temporary) is freed
PROBE = """
import ctypes, sys
from tokenprism.backend.models.heap import keep_freed_heap
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                 .split())]
libc = ctypes.CDLL(sys.argv[2])
libc.mallinfo2.restype = Info
print(keep_freed_heap(int(sys.argv[1])))
block = bytearray(20 * 1024 * 1024)
del block
print(libc.mallinfo2().fordblks)
"""


def _kept(keep_mb: int) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(keep_mb), str(ctypes.util.find_library("c"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], int(out[1])


def test_freed_temporaries_stay_in_the_heap_only_when_asked() -> None:
    tuned, kept = _kept(512)
    default, returned = _kept(0)
    assert tuned == "True" and kept >= 20 * 1024 * 1024
    assert default == "False" and returned < 20 * 1024 * 1024


def test_zero_or_negative_changes_nothing() -> None:
    assert keep_freed_heap(0) is False
    assert keep_freed_heap(-5) is False
