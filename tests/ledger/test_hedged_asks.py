"""Hedged asks on real validators (4 in-process ledger nodes on real overlays, issue 16): a
send asks first only the validators a quorum needs (submit.py, `VoteCollector.first_asks`);
the validator it does not need never sees the order, and a silent validator among the first
costs the send the hedge delay, not the request timeout."""
from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fognode.ledger.messages import Certificate
from fognode.ledger.order_streams import ORDER_STREAM
from fognode.node.errors import FognodeError
from fognode.node.overlay import FramedStream

from .cluster import Cluster, ledger_cluster, wait_until


@pytest.fixture(autouse=True)
def dev_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOGNODE_PASSPHRASE", "")


async def connected(c: Cluster) -> None:
    await wait_until(lambda: all(len(n.ctx.overlay.peers()) == 3 for n in c.nodes))


def signers(c: Cluster, cert: Certificate) -> set[int]:
    return {i for i, n in enumerate(c.nodes) if n.svc.me in dict(cert.votes)}


@pytest.mark.slow
async def test_the_validator_a_quorum_does_not_need_never_sees_the_order(tmp_path: Path) -> None:
    """With a hedge delay no send reaches, each order goes to this node's validator and 2 of
    the 3 others; the third neither locks nor votes, and applies the certificate from gossip.
    The sender's next orders go to the same two (they signed its previous certificate, so the
    order's `prev` applies there), so none is refused for a missing predecessor."""
    with trio.fail_after(120):
        async with ledger_cluster(tmp_path, 4, hedge_delay=60.0) as c:
            await connected(c)
            n0 = c.nodes[0]
            seen = []
            for _ in range(4):
                cert = await n0.svc.submitter.pay(c.nodes[1].wallet, 1000, timeout=60)
                seen.append(signers(c, cert))
                assert len(seen[-1]) == 3 and 0 in seen[-1]
                spared = ({0, 1, 2, 3} - seen[-1]).pop()
                o = cert.order.order
                assert c.nodes[spared].svc.locks.get(o.sender, o.sequence) is None
                # it applies the certificate all the same (gossip)
                await wait_until(lambda: c.nodes[spared].svc.state.account(o.sender).next_sequence > o.sequence)
            assert all(s == seen[0] for s in seen), seen
            refused = [n.ctx.metrics.get_sample_value("fognode_ledger_orders_rejected_total",
                                                      {"reason": "wrong_sequence"}) for n in c.nodes]
            assert not any(refused), refused


@pytest.mark.slow
async def test_a_silent_validator_among_the_first_costs_the_hedge_not_the_timeout(tmp_path: Path) -> None:
    """Validator 3 reads its order stream and never answers, and it signed the sender's
    previous certificate (as the submitter remembers it), so it is among the first asked.
    With a request timeout of 60 s a send would wait a minute for it without the hedge; with
    a 0.5 s hedge the spared validator is asked and the send completes (bounded well below
    the timeout). The next send prefers the new signers."""
    with trio.fail_after(120):
        async with ledger_cluster(tmp_path, 4, hedge_delay=0.5, request_timeout=60.0) as c:
            await connected(c)
            asked = []

            async def silent(stream: FramedStream) -> None:
                try:
                    while True:
                        asked.append(await stream.recv())
                except FognodeError:      # closed when the cluster stops
                    return
            c.nodes[3].ctx.overlay.set_stream_handler(ORDER_STREAM, silent)
            n0 = c.nodes[0]
            n0.svc.submitter._signers[n0.wallet] = frozenset({c.nodes[0].svc.me, c.nodes[3].svc.me,
                                                              c.nodes[1].svc.me})
            for _ in range(2):
                with trio.fail_after(30):      # half the request timeout: the hedge did it
                    cert = await n0.svc.submitter.pay(c.nodes[1].wallet, 1000, timeout=60)
                assert 3 not in signers(c, cert)
            assert len(asked) == 1         # asked first once; the next send went to the new signers
