"""The daemon's CPU scheduling policy (`node.scheduling`): Linux SCHED_BATCH by default.

`apply_scheduling(policy)` sets the calling thread's policy; `fognode run` calls it once, before
trio starts and before any other thread of the daemon exists, so every thread it creates later
(the trio loop's helpers, the ledger writer, worker threads) and every process it starts (harvest
jobs, FL task processes) inherits it (Linux copies a thread's policy to the threads and
children it creates).

Why batch. Under CFS a thread that wakes up usually preempts the one running on its CPU. A
daemon wakes others all the time: each message it writes wakes the peer's loop (on one machine,
another daemon), each synced ledger write wakes its writer thread (which then finds the GIL held
by the thread it preempted), each control-socket reply wakes the client. On a busy machine every
such wake-up was a forced context switch, and the preempted loop waited in the run queue. With
SCHED_BATCH the woken thread waits for the running one to block or use up its slice; the CPU
time and the time slices are the same, nothing is niced. Measured with the 4-validator ledger
benchmark on 2 cores (`tools/bench/ledger.py --certs 200 --wallets 4`, interleaved, the
benchmark under `chrt -b 0`): involuntary context switches of the daemons' loops per transfer
10-12 -> about 2, the kernel's share of their CPU 11-15 % -> 8-11 %, CPU per transfer about 10 %
lower (session 30). It is also the polite choice on a phone or laptop whose owner volunteers
it: the daemon no longer preempts the owner's interactive programs when a packet arrives.

"normal" keeps the default policy (SCHED_OTHER), for operators who want the daemon to preempt
like any program. Where the policy cannot be set (not Linux, a sandbox that forbids
sched_setscheduler) the daemon keeps the default and says why; that is not an error.
"""
from __future__ import annotations

import os

POLICIES = ("batch", "normal")


def apply_scheduling(policy: str) -> str:
    """Set the calling thread's scheduling policy: "batch" (SCHED_BATCH) or "normal"
    (SCHED_OTHER). Returns a sentence saying what now holds (for the start-up log)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown scheduling policy {policy!r}: one of {', '.join(POLICIES)}")
    batch = getattr(os, "SCHED_BATCH", None)
    setter = getattr(os, "sched_setscheduler", None)
    if setter is None or batch is None:
        return f"CPU scheduling: {policy} not applied (this platform has no sched_setscheduler); the default holds"
    target = batch if policy == "batch" else os.SCHED_OTHER
    try:
        if os.sched_getscheduler(0) != target:
            setter(0, target, os.sched_param(0))
    except OSError as e:
        return f"CPU scheduling: {policy} not applied ({e.strerror or e}); the default holds"
    return f"CPU scheduling: {policy} ({'SCHED_BATCH' if policy == 'batch' else 'SCHED_OTHER'})"
