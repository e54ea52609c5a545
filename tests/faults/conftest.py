"""Fixtures of the fault tests: a 5-validator devnet of real `fognode run` processes, each in
its own network namespace (tests/faults/netns.py), for partition scenarios.

Stakes are 2, 2, 2, 1, 1 (x DEV_STAKE): nodes 0-2 hold 6/8 of the stake, more than the 2/3
quorum, so they certify alone in a 3/2 split, and no side of a 2/2/1 split ({0,1} 4/8,
{2,3} 3/8, {4} 1/8) reaches a quorum. (With equal stakes a quorum needs 4 of 5 validators,
so neither side of a 3/2 split could certify at all.)
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from fognode.ledger.address import encode_address
from fognode.ledger.genesis import DEV_STAKE
from fognode.node.datadir import load_identity, read_genesis, write_genesis
from fognode.tools.devnet import Devnet, wait_until

from tests.faults.netns import Fabric, NetnsUnavailable

N = 5
# bound on recovery after a heal. Nothing probes a connection whose packets vanish, so each
# TCP connection across the cut stays "established" and retransmits with exponential back-off:
# it comes back up to about as long after the heal as the split lasted (measured: a 20 s split,
# 14 s; a 30 s split, 27 s), which is why the splits here are kept short.
HEAL_TIMEOUT = 60.0
STAKES = (2, 2, 2, 1, 1)      # in DEV_STAKE units, by node index

ARGS = ["--set", "overlay.peers_low=4", "--set", "overlay.connmgr_interval=0.5",
        "--set", "overlay.dial_timeout=3.0", "--set", "overlay.dial_backoff=2.0",
        "--set", "overlay.dial_backoff_max=4.0",
        "--set", "protocols.ledger.sync_interval=1.0", "--set", "protocols.ledger.request_timeout=2.0",
        "--set", "protocols.ledger.retry_interval=0.5",
        "--set", "protocols.fl.tick_interval=0.1", "--set", "protocols.fl.republish_interval=1.0"]


def reweight(net: Devnet, stakes: tuple[int, ...]) -> None:
    """Give node i's validator key `stakes[i]` x DEV_STAKE in the devnet's shared genesis."""
    g = read_genesis(net.nodes[0].datadir)
    by_addr = {encode_address(bytes(load_identity(n.datadir).verify_key)): stakes[n.index] for n in net.nodes}
    g["ledger"]["validators"] = [{"address": v["address"], "stake": by_addr[v["address"]] * DEV_STAKE}
                                 for v in g["ledger"]["validators"]]
    for n in net.nodes:
        write_genesis(n.datadir, g)


@pytest.fixture(scope="package")
def fabric() -> Iterator[Fabric]:
    """Five node namespaces on one switch; skips when this environment cannot make them."""
    f = Fabric(N)
    try:
        f.create()
    except NetnsUnavailable as e:
        pytest.skip(f"network namespaces unavailable: {e}")
    try:
        yield f
    finally:
        f.destroy()


@pytest.fixture
def netns_devnet(fabric: Fabric) -> Iterator[Devnet]:
    """Five validators (stakes 2,2,2,1,1), node i in namespace i at 10.213.0.<i+1>; a fresh
    network per test (a scenario's aftermath must not leak into the next); stopped (SIGTERM,
    then SIGKILL) at the end, their logs' warnings and tails printed (shown when a test failed)."""
    yield from devnet_in(fabric, ARGS)


def devnet_in(fabric: Fabric, args: list[str]) -> Iterator[Devnet]:
    """netns_devnet's body, with the daemons' extra arguments `args` (a fixture's generator)."""
    root = Path(tempfile.mkdtemp(prefix="fnf-", dir="/tmp"))   # unix socket paths stay short
    net = Devnet(root / "net", N, extra_args=args)
    try:
        net.create()
        reweight(net, STAKES)
        for node in net.nodes:
            node.host = fabric.address(node.index)
            node.launcher = fabric.exec_prefix(node.index)
        net.start_all(timeout=90)
        yield net
    finally:
        net.stop_all()
        for node in net.nodes:   # shown by pytest only when a test failed
            print(f"--- node {node.index} ({node.host}) {node.peer_id}: warnings, rewards, log tail ---")
            lines = node.log_path.read_text(errors="replace").splitlines() if node.log_path.exists() else []
            print("\n".join(ln for ln in lines[:-40] if "WARNING" in ln or "ERROR" in ln or "fognode.fl" in ln))
            print("\n".join(lines[-40:]))
        shutil.rmtree(root, ignore_errors=True)


def peers(net: Devnet, i: int) -> set[str]:
    return {p["peer_id"] for p in net.nodes[i].rpc("node.peers")}


@pytest.fixture
def wallets(netns_devnet: Devnet, fabric: Fabric) -> Iterator[list[str]]:
    """The nodes' default wallet addresses, on a healed network whose five daemons are all
    connected to each other (healed again after the test, whatever happened)."""
    net = netns_devnet
    fabric.heal()
    ids = {n.peer_id for n in net.nodes}
    wait_until(lambda: all(peers(net, i) >= ids - {net.nodes[i].peer_id} for i in range(len(net.nodes))),
               timeout=HEAL_TIMEOUT, interval=0.2, what="all five daemons connected to each other")
    yield [n.rpc("wallet.address")["address"] for n in net.nodes]
    fabric.heal()
