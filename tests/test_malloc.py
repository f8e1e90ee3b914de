"""glibc's mmap threshold, fixed so that large buffers go back to the OS when freed."""

from __future__ import annotations

import subprocess
import sys

import pytest

# In a fresh process (malloc's state is per process): free an 8 MB block, which raises glibc's
# threshold to 8 MB unless it is fixed, then see whether a 2 MB block is still a mapping of
# its own (`hblks`, from mallinfo2) and so is unmapped when freed.
PROBE = """
import ctypes, sys
from monitor.core.malloc import return_large_buffers

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
if sys.argv[1] == "fixed":
    assert return_large_buffers()
libc.free(libc.malloc(8 << 20))
before = libc.mallinfo2().hblks
block = libc.malloc(2 << 20)
print(libc.mallinfo2().hblks - before)
libc.free(block)
"""


def mapped_blocks_for_a_2_mb_block(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_after_a_large_free_a_2_mb_block_is_still_a_mapping_that_free_returns() -> None:
    try:
        unfixed = mapped_blocks_for_a_2_mb_block("as-is")
    except subprocess.CalledProcessError as exc:
        if "mallinfo2" in exc.stderr:
            pytest.skip("not glibc 2.33 or newer: no mallinfo2 to look with")
        raise

    # glibc as it comes: the 8 MB free raised the threshold, so the 2 MB block is on the heap.
    assert unfixed == 0
    assert mapped_blocks_for_a_2_mb_block("fixed") == 1
