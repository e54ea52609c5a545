"""Hedged asks on real validators (4 in-process ledger nodes on real overlays, issue 16): a
send asks first only the validators a quorum needs (submit.py, `VoteCollector.first_asks`);
the validator it does not need never sees the order, and a silent validator among the first
costs the send the hedge delay, not the request timeout."""
from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fognode.ledger.client import VoteCollector
from fognode.ledger.messages import Certificate, Vote
from fognode.ledger.order_streams import ORDER_STREAM
from fognode.node.errors import FognodeError
from fognode.node.overlay import FramedStream

from .cluster import Cluster, ledger_cluster, wait_until


@pytest.fixture(autouse=True)
def dev_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOGNODE_PASSPHRASE", "")


def first_asked(c: Cluster, cert: Certificate) -> list[int]:
    """The nodes node 0 asked first for `cert`'s order (its own vote already in)."""
    svc = c.nodes[0].svc
    committee = svc.state.committee_for(cert.order.order.epoch)
    col = VoteCollector(cert.order, committee)
    col.add_vote(Vote(cert.tx_id, svc.me, dict(cert.votes)[svc.me]))
    first = col.first_asks(col.unasked(svc.me, set()), set(), cert.tx_id)
    return [i for i, n in enumerate(c.nodes) if n.svc.me in first]


async def connected(c: Cluster) -> None:
    await wait_until(lambda: all(len(n.ctx.overlay.peers()) == 3 for n in c.nodes))


@pytest.mark.slow
async def test_the_validator_a_quorum_does_not_need_never_sees_the_order(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with ledger_cluster(tmp_path, 4, hedge_delay=60.0) as c:
            await connected(c)
            n0 = c.nodes[0]
            for _ in range(3):
                cert = await n0.svc.submitter.pay(c.nodes[1].wallet, 1000, timeout=60)
                first = first_asked(c, cert)
                assert len(first) == 2 and 0 not in first
                spared = ({1, 2, 3} - set(first)).pop()
                assert {v for v, _ in cert.votes} == {c.nodes[i].svc.me for i in (0, *first)}
                o = cert.order.order
                assert c.nodes[spared].svc.locks.get(o.sender, o.sequence) is None
                # it applies the certificate all the same (gossip)
                await wait_until(lambda: c.nodes[spared].svc.state.account(o.sender).next_sequence > o.sequence)


@pytest.mark.slow
async def test_a_silent_validator_among_the_first_costs_the_hedge_not_the_timeout(tmp_path: Path) -> None:
    """Validator 3 reads its order stream and never answers. With a request timeout of 60 s,
    a send that asked it first would wait a minute without the hedge; with a 0.5 s hedge the
    other validator is asked and the send completes (bounded well below the timeout)."""
    async def silent(stream: FramedStream) -> None:
        try:
            while True:
                await stream.recv()
        except FognodeError:      # closed when the cluster stops
            return

    with trio.fail_after(120):
        async with ledger_cluster(tmp_path, 4, hedge_delay=0.5, request_timeout=60.0) as c:
            await connected(c)
            c.nodes[3].ctx.overlay.set_stream_handler(ORDER_STREAM, silent)
            n0 = c.nodes[0]
            hit = 0
            for _ in range(12):
                with trio.fail_after(30):      # half the request timeout: the hedge did it
                    cert = await n0.svc.submitter.pay(c.nodes[1].wallet, 1000, timeout=60)
                assert c.nodes[3].svc.me not in {v for v, _ in cert.votes}
                if 3 in first_asked(c, cert):
                    hit += 1
                    if hit == 2:
                        break
            assert hit == 2, "no order asked the silent validator first in 12 sends"
