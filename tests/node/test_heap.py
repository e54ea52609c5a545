"""node/heap.py: glibc's thresholds set once per process, the operator's environment
respected, and the page faults of growing MB-sized buffers gone (counted, not timed), each in
a fresh process."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

# a stream buffer's life in a bulk transfer: grown by 64 KiB bodies to 1 MB, copied, freed
_FAULTS = """
import resource, sys
from fognode.node import heap
body = memoryview(bytes(65_507))

def faults() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        buf = bytearray()
        for _ in range(16):
            buf.extend(body)
        frame = bytes(buf)
        del buf, frame
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

untuned = faults()
tuned = heap.tune()
faults()                    # the heap grows once
print(untuned, tuned, heap.tune(), faults())
"""


def _run(env: dict[str, str]) -> list[str]:
    """_FAULTS's output in a fresh process whose MALLOC_* variables are `env`'s only."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True,
                         timeout=60, env={**base, **env}, check=True)
    return out.stdout.split()


def test_tuned_heap_stops_the_page_faults_of_growing_buffers() -> None:
    out = _run({})
    untuned, tuned, again, after = int(out[0]), out[1], out[2], int(out[3])
    assert tuned == "True" and again == "True"
    # 40 buffers of 1 MB: thousands of faults untuned (each page faulted in again), a few after
    assert untuned > 2000 and after < untuned // 10, (untuned, after)


def test_the_operators_malloc_environment_wins() -> None:
    out = _run({"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert out[1] == "False" and out[2] == "False"
