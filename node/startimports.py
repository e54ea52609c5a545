"""How a daemon start imports its modules: fast, and without waking idle BLAS threads.

`fognode run` imports in two blocks (node/daemon_start.py): what the control socket needs
(trio, the RPC server, the supervisor: about 300 modules, most of which libp2p would import
anyway), then, in a worker thread while the socket answers "warming up", libp2p and the roles.
Both blocks run inside `start_imports()`:

- with the cyclic GC off (`imports_without_gc`): imports create a few hundred thousand
  long-lived objects and almost no garbage, and with the collector on, the growing heap is
  scanned again and again while they load. Measured with `python -X importtime`, minimum of
  five runs per module, load ~25: the warm-up's imports took about 0.9 s instead of 1.4 s; the
  socket's block, about 20 ms of CPU less of its ~155 ms (load ~10);
- with the dataclass methods' bytecode cached across starts (node/codecache.py), one cache
  session shared by the two blocks (`keep=True` on the first), so each start reads the file
  once and it holds what both blocks use.

`quiet_blas_threads` is called by `fognode run` before anything imports numpy (the roles do,
in the second block). OpenBLAS, which numpy loads, starts one worker thread per core that
busy-waits for work for 2**28 TSC cycles (about 0.1 s at 2.6 GHz) after each job and after its
own start: 20-30 ms of CPU per start measured at load ~10 (more on an idle machine, where its
sched_yield gives nothing away), while the start's own imports want that core; 0 ms with the
setting below. `OPENBLAS_THREAD_TIMEOUT=4` (2**4 cycles, OpenBLAS's minimum) puts the
workers to sleep as soon as they are idle; they are woken (a futex) by the next threaded BLAS
call, so the FL aggregator's sgemv still runs on every core. An operator's own
OPENBLAS_THREAD_TIMEOUT is kept; child processes (FL tasks, WASM jobs) inherit the setting,
which only shortens their BLAS threads' idle spinning.
"""
from __future__ import annotations

import contextlib
import gc
import os
from typing import Iterator

from fognode.node.codecache import dataclass_code_cache

BLAS_THREAD_TIMEOUT = "4"      # OpenBLAS's minimum: 2**4 TSC cycles of spinning before a worker sleeps


def quiet_blas_threads() -> None:
    """Set OPENBLAS_THREAD_TIMEOUT (module docstring) unless the environment has it. Call it
    before numpy is imported: OpenBLAS reads it once, when it loads."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", BLAS_THREAD_TIMEOUT)


@contextlib.contextmanager
def start_imports(*, keep: bool = False) -> Iterator[None]:
    """Import with the GC off and the dataclass code cache on (module docstring). `keep`: a
    later block of this start will use the cache too (node/codecache.py)."""
    with imports_without_gc(), dataclass_code_cache(keep=keep):
        yield


@contextlib.contextmanager
def imports_without_gc() -> Iterator[None]:
    """Import a start's modules with the cyclic garbage collector off, then freeze what they
    made (`gc.freeze`: out of every later collection) and turn it back on.

    The price: cyclic garbage made by those imports (about 3,500 objects for the warm-up) is
    frozen with the rest and never freed. A no-op for the collector if it was already off
    (tests, embedders)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
