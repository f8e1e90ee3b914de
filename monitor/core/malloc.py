"""Large buffers go back to the operating system when they are freed.

glibc's malloc serves a block of at least `M_MMAP_THRESHOLD` bytes (128 KiB) with a mapping
of its own, unmapped by `free()`. But each time such a block is freed it raises the
threshold to that block's size (up to 32 MiB): after the first large scrape, the 8 MB
batches of a `/metrics` body and the replies of poll processes come from the heaps of the
threads that asked, which seldom shrink. At 100,000 images, scrapes during a cycle raised
the peak RSS by 75 MB that way (`bench/scale.py`); with the threshold set, by 7 MB. Setting
it once, as this does, turns the raising off.
"""

from __future__ import annotations

import ctypes

#: mallopt's parameter number for the threshold (glibc's malloc.h).
M_MMAP_THRESHOLD = -3

#: Blocks of this size and larger are mappings of their own: a /metrics batch, a large reply.
MMAP_THRESHOLD = 1 << 20


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold at `MMAP_THRESHOLD`; False where the C library has no
    `mallopt` (musl) or refused it."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
