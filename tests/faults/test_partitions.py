"""Network partitions between five real validator daemons, each in its own network namespace,
while every node keeps sending transfers (Jepsen-style: clients, a nemesis, checkers).

3/2 split: the side holding 6/8 of the stake keeps certifying, the other certifies nothing
(no send made after the split is final there, and only certificates of orders sent before
the split reach its replicas). 2/2/1 split: no side holds a quorum, nobody certifies. After
each heal (safety, asserted): all replicas converge to one state root, `ledger.verify` passes
everywhere, no (sender, sequence) has two certificates on any replica, every final send is on
every replica, and an order a split left in flight either completed as itself or is still in
flight. Liveness after the heal (every client certifies again within HEAL_TIMEOUT) is checked
last; when it fails, the test is an xfail naming it (see the report on issue 10, item 9).
"""
from __future__ import annotations

import time
from typing import Callable

import pytest

from fognode.tools.devnet import Devnet, wait_until

from tests.faults.netns import Fabric
from tests.faults.conftest import HEAL_TIMEOUT
from tests.faults.workload import (Client, certificates, check_history, converged, flat, start_clients, state_of,
                                   summary)

pytestmark = pytest.mark.slow

SPLIT_TIMEOUT = 45.0      # bound on each wait before and while the network is split


def wait_ops(clients: list[Client], since: float, cond: Callable[[], bool], *, timeout: float,
             what: str) -> None:
    """wait_until(cond), failing with what each client saw since `since`."""
    try:
        wait_until(cond, timeout=timeout, interval=0.1, what=what)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; clients since then:\n{summary(clients, since)}") from None


def run_split(net: Devnet, fabric: Fabric, wallets: list[str], groups: list[list[int]],
              quorate: list[int]) -> None:
    """Split into `groups` while clients send; nodes in `quorate` (one group) must keep
    certifying, every other node must certify nothing; then heal and check."""
    clients = start_clients(net, wallets)
    try:
        t = time.monotonic()
        wait_ops(clients, t, lambda: all(c.since(t, "final") for c in clients), timeout=SPLIT_TIMEOUT,
                 what="every client to certify a transfer before the split")

        fabric.partition(groups)
        t_split = time.monotonic()
        stuck = [i for i in range(len(net.nodes)) if i not in quorate]
        # the split is felt: every node outside the quorate group saw a send time out
        wait_ops(clients, t_split, lambda: all(clients[i].since(t_split, "in_flight") for i in stuck),
                 timeout=SPLIT_TIMEOUT, what=f"nodes {stuck} to see a send stay in flight")
        frozen = {i: (state_of(net.nodes[i]), certificates(net.nodes[i], wallets)) for i in stuck}
        t_frozen = time.monotonic()
        if quorate:
            # the quorate side keeps certifying: two more finals per client after the freeze
            wait_ops(clients, t_frozen, lambda: all(len(clients[i].since(t_frozen, "final")) >= 2 for i in quorate),
                     timeout=SPLIT_TIMEOUT, what=f"nodes {quorate} to keep certifying")
        else:
            # every node tried once more with the network split
            wait_ops(clients, t_frozen, lambda: all(clients[i].since(t_frozen, "in_flight") for i in stuck),
                     timeout=SPLIT_TIMEOUT, what="one more send per node")
        started = {o.tx: o for c in clients for o in c.ops if o.tx}
        for i in stuck:
            # nothing sent from there after the split was certified
            assert not clients[i].since(t_split, "final"), f"node {i} certified while cut off from a quorum"
            # a replica without a quorum on its side may still receive a certificate of its
            # side made before the split, but never one of an order sent after it
            for sender, seq, tx in flat(certificates(net.nodes[i], wallets)) - flat(frozen[i][1]):
                op = started.get(tx)
                assert op is not None and op.start < t_split, \
                    f"node {i} applied {tx} ({sender}, {seq}) during the split: {op}, split at {t_split}"
        for c in clients:
            assert not c.since(0, "error"), c.since(0, "error")

        fabric.heal()
        t_heal = time.monotonic()
        try:
            wait_ops(clients, t_heal, lambda: all(c.since(t_heal, "final") for c in clients), timeout=HEAL_TIMEOUT,
                     what="every client to certify again after the heal")
            slow_recovery = ""
        except TimeoutError as e:
            slow_recovery = str(e)
    finally:
        for c in clients:
            c.join(timeout=30)
    for c in clients:
        assert not c.since(0, "error"), c.since(0, "error")
    wait_until(lambda: converged(net), timeout=HEAL_TIMEOUT, interval=0.2,
               what="every replica to converge to one state root")
    check_history(net, wallets, clients)
    if slow_recovery:
        # safety held (checked above: an order still in flight is certified as nothing else);
        # liveness after the heal did not, within the bound. Reported on issue 10 item 9.
        pytest.xfail(f"product weakness (ledger liveness after a heal, not safety): {slow_recovery}")


def test_split_3_2_majority_certifies_minority_does_not(netns_devnet: Devnet, fabric: Fabric,
                                                       wallets: list[str]) -> None:
    run_split(netns_devnet, fabric, wallets, [[0, 1, 2], [3, 4]], quorate=[0, 1, 2])


def test_split_2_2_1_nobody_certifies(netns_devnet: Devnet, fabric: Fabric, wallets: list[str]) -> None:
    run_split(netns_devnet, fabric, wallets, [[0, 1], [2, 3], [4]], quorate=[])
