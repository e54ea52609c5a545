"""The registry's reputation recompute leaves the event loop free: on a real role (overlay on
127.0.0.1) holding 60,000 observation pairs (1,000 peers, 60 observations each, 3 services),
no task step of the loop costs more than STEP_CPU_BOUND of CPU while the recompute runs.
Before, the role built the local trust matrices on the loop (about 60-90 ms of CPU per
recompute at this size, plus numpy's import the first time)."""
from __future__ import annotations

import dataclasses
import os
import random
import time
from pathlib import Path

import trio
from nacl.signing import SigningKey

from fognode.node.host import peer_id_from_pubkey
from fognode.protocols.registry.observation import ALL_SERVICES, Observation
from tests.registry.test_role_overlay import CFG, start_node

PEERS = 1000
OBS_PER_PEER = 60
SERVICES = ("fl", "harvest", "market")
# CPU time (the loop thread's own, so the machine's load does not inflate it) of the longest
# step; the recompute's one step on the loop (copying the sums) takes under 1 ms here
STEP_CPU_BOUND = 0.020


class LongestStep(trio.abc.Instrument):
    """The loop thread's CPU time of the longest task step while `on`, and its task's name."""

    def __init__(self) -> None:
        self.on = False
        self.longest = 0.0
        self.task = ""
        self._t0 = time.thread_time()   # added mid-step: that step is timed from here

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._t0 = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.thread_time() - self._t0
        if self.on and took > self.longest:
            self.longest, self.task = took, task.name


async def test_recompute_keeps_the_loop_free(tmp_path: Path) -> None:
    key = SigningKey(os.urandom(32))
    me = peer_id_from_pubkey(bytes(key.verify_key))
    cfg = dataclasses.replace(CFG, eigentrust_interval=3600.0)   # only the test recomputes
    rng = random.Random(0)
    peers = [f"12D3KooWpeer{i:040d}" for i in range(PEERS)]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            node = await start_node(nursery, key, tmp_path, {"registry": {"pretrusted": [me]}},
                                    [], "eu-west", cfg)
            book, now = node.role.core.book, time.time()
            for i, observer in enumerate(peers):   # unsigned: the book trusts its decoder
                for k, j in enumerate(rng.sample(range(PEERS - 1), OBS_PER_PEER)):
                    j += j >= i
                    book.add(Observation(observer, b"\0" * 32, peers[j], SERVICES[k % 3],
                                         rng.random() < 0.8, 1.0, f"{i}:{k}".encode(),
                                         int(now), b""), now)
            assert book.pair_count() == PEERS * OBS_PER_PEER
            steps = LongestStep()
            steps.on = True
            trio.lowlevel.add_instrument(steps)
            try:
                await node.role.recompute()
                steps.on = False
            finally:
                trio.lowlevel.remove_instrument(steps)
            assert node.role.core.reputation.recomputes == 1
            assert len(node.role.core.reputation.scores(ALL_SERVICES)) == PEERS + 1
            assert node.role.core.reputation.services() == sorted([ALL_SERVICES, *SERVICES])
            assert steps.longest < STEP_CPU_BOUND, (
                f"a step of task {steps.task} took {steps.longest * 1e3:.1f} ms of CPU on the "
                f"loop during the recompute (bound {STEP_CPU_BOUND * 1e3:.0f} ms)")
            await node.stop()
