"""glibc malloc thresholds for a process that moves MB-sized buffers: large stream buffers
from the heap, and freed heap kept, instead of an mmap, page faults and munmap per buffer.

Symptom. A bulk transfer (FL's 0.58 MB tensors in 1 MiB frames) builds buffers of 100 KB to
1 MB on every read: the TCP receive, a Yamux stream's bytearray growing by 64 KiB bodies, a
frame joined from its chunks. glibc serves an allocation over its mmap threshold (128 KiB
to start, raised only to the size of the largest mmapped block freed so far) with a fresh
mmap, and gives heap memory above its trim threshold back to the kernel when it is freed;
either way every page of the next buffer is faulted in and zeroed by the kernel again. A
bytearray grown by 64 KiB extends to 1 MB cost 470 CPU us per MB, its `bytes()` copy 1,000,
against 25 for the copies themselves (the same loop with the thresholds below: 29 and 61).
Through the whole stack (`python -m fognode.tools.bench.stream_bulk`, two processes on
127.0.0.1, load 3-9) a receiving daemon spent 1,200-2,630 CPU us per MB, depending on the
direction and on which sizes its allocator had met; with these thresholds alone 1,400-1,500
(with the copies of node/p2pfix_noiseio.py and node/streams.py cut too, 1,080-1,290).
Reproduction: that benchmark with and without `MALLOC_MMAP_THRESHOLD_=8388608
MALLOC_TRIM_THRESHOLD_=16777216` in the environment.

Fix. `tune()` sets, once per process, glibc's `M_MMAP_THRESHOLD` to MMAP_THRESHOLD (blocks
below it come from the heap: a frame is at most 4 MiB) and `M_TRIM_THRESHOLD` to
TRIM_THRESHOLD (up to that much freed memory at the top of the heap is kept for the next
buffers, not returned to the kernel). The cost is resident memory: at most TRIM_THRESHOLD of
freed heap stays mapped. Nothing is changed when the process is not on glibc, or when the
operator set either threshold with glibc's own environment variables (they win).
node/host.py's `open_overlay` calls it.
"""
from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD = 8 << 20    # bytes; glibc's own default is 128 KiB, raised dynamically
TRIM_THRESHOLD = 16 << 20   # bytes; glibc's own default is 128 KiB, raised dynamically
_M_TRIM_THRESHOLD = -1      # mallopt parameters (glibc malloc.h)
_M_MMAP_THRESHOLD = -3
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_tuned: bool | None = None


def tune() -> bool:
    """Set the thresholds (module doc) if this process runs on glibc and the operator did not
    set them; returns whether they are set by this module. Idempotent."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if platform.libc_ver()[0] != "glibc" or any(v in os.environ for v in _ENV):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _tuned
