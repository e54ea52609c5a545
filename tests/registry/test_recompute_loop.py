"""The registry role leaves the event loop free while it recomputes reputation and while it
syncs from a peer: real roles on overlays on 127.0.0.1, with the loop thread's CPU time of
its longest task step measured by a trio instrument (CPU, not wall time, so the machine's load
does not inflate it)."""
from __future__ import annotations

import dataclasses
import os
import random
import time
from pathlib import Path

import trio
from nacl.signing import SigningKey

from fognode.node.host import peer_id_from_pubkey
from fognode.protocols.registry.observation import ALL_SERVICES, Observation, sign_observation
from tests.registry.helpers import record
from tests.registry.test_role_overlay import CFG, start_node, wait_until

PEERS = 1000
OBS_PER_PEER = 60
SERVICES = ("fl", "harvest", "market")
# CPU time (the loop thread's own, so the machine's load does not inflate it) of the longest
# step; the recompute's steps on the loop (copying the sums, installing the scores) take about 3 ms here
STEP_CPU_BOUND = 0.020
RECORDS = 320
OBSERVERS, OBS_EACH = 4, 120
SYNC_STEP_CPU_BOUND = 0.010   # a step checks SYNC_STEP (8) items: 3-5 ms here with the reply


class LongestStep(trio.abc.Instrument):
    """The loop thread's CPU time of the longest task step while `on` (of the tasks whose name
    holds `only`), and its task's name."""

    def __init__(self, only: str = "") -> None:
        self.only = only
        self.on = False
        self.longest = 0.0
        self.task = ""
        self._t0 = time.thread_time()   # added mid-step: that step is timed from here

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._t0 = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.thread_time() - self._t0
        if self.on and took > self.longest and self.only in task.name:
            self.longest, self.task = took, task.name


async def test_recompute_keeps_the_loop_free(tmp_path: Path) -> None:
    """1,000 peers, 60 observations each, 3 services: 60,000 observation pairs. Before, the
    role built the local trust matrices on the loop (about 60-90 ms of CPU per recompute at
    this size, plus numpy's import the first time); now it copies the sums (under 1 ms)."""
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
                await trio.sleep(0)   # ends the step in progress, so that it is measured
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


async def test_a_synced_page_is_checked_a_few_items_per_loop_step(tmp_path: Path) -> None:
    """A node joining a registry that holds 320 device records and 480 observations pulls them
    by sync, 64 records or 128 observations per page; the workers that check them (one
    signature each) never hold the loop for more than SYNC_STEP_CPU_BOUND per step. Before,
    a page was checked in one step (about 10 ms per observation page, 17 ms per record page)."""
    keys = [SigningKey(os.urandom(32)) for _ in range(2)]
    ids = [peer_id_from_pubkey(bytes(k.verify_key)) for k in keys]
    cfg = dataclasses.replace(CFG, eigentrust_interval=3600.0)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            (tmp_path / "a").mkdir()
            (tmp_path / "b").mkdir()
            a = await start_node(nursery, keys[0], tmp_path / "a", {"registry": {"pretrusted": ids[:1]}},
                                 [], "eu-west", cfg)
            now = time.time()
            for _ in range(RECORDS):
                rec = record(SigningKey(os.urandom(32)), issued=now)
                assert a.role.core.on_dht_record(rec.peer_id, rec.encode(), now)
            observers = [SigningKey(os.urandom(32)) for _ in range(OBSERVERS)]
            for k, observer in enumerate(observers):
                for i in range(OBS_EACH):
                    a.role.core.book.add(sign_observation(
                        observer, subject=ids[1], service="fl", ok=True, weight=1.0,
                        evidence=b"%d:%d" % (k, i), ts=int(now)), now)
            steps = LongestStep(only="_quick_worker")
            steps.on = True
            trio.lowlevel.add_instrument(steps)
            try:
                b = await start_node(nursery, keys[1], tmp_path / "b", {"registry": {"pretrusted": ids[:1]}},
                                     [a.overlay.listen_addrs()[0]], "eu-west", cfg)
                await wait_until(lambda: len(b.role.core.view) >= RECORDS + 1
                                 and b.role.core.book.accepted >= OBSERVERS * OBS_EACH, 60,
                                 "the new node to sync every record and observation")
            finally:
                trio.lowlevel.remove_instrument(steps)
            assert steps.longest < SYNC_STEP_CPU_BOUND, (
                f"a step of task {steps.task} took {steps.longest * 1e3:.1f} ms of CPU on the "
                f"loop during the sync (bound {SYNC_STEP_CPU_BOUND * 1e3:.0f} ms)")
            await b.stop()
            await a.stop()
