"""Split votes on real validators (4 in-process ledger nodes on real overlays, issue 10): a
refusal that only says "this validator is behind" is not final, the validator catches up from
the requester, and the SAME order is certified (client.py's docstring: which refusals are final,
and the quorum arithmetic of a release)."""
from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fognode.ledger.address import encode_address
from fognode.ledger.messages import Certificate, SignedOrder, TransferOrder, Vote
from fognode.ledger.wallet import Keystore

from .cluster import ledger_cluster, wait_until


@pytest.fixture(autouse=True)
def dev_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOGNODE_PASSPHRASE", "")


@pytest.mark.slow
async def test_a_lagging_refuser_catches_up_and_the_same_order_is_certified(tmp_path: Path) -> None:
    """The wallet of node 0 has certificates for sequences 0 and 1 (voted by validators 0, 1
    and 3 and applied there only; anti-entropy is off), and validator 3 holds a lock on
    another order of the wallet for sequence 2 (a test-made conflict). Node 0's send of
    sequence 2 gets votes from 0 and 1, a final refusal (conflict) from 3 and `wrong_sequence`
    from 2, which lacks two certificates. Before, both refusals counted toward "no quorum
    possible" (the order could be declared stuck) and validator 2 stayed behind until its next
    anti-entropy round. Now the lagging refusal does not count, validator 2 pulls the sender's
    history from the requester at once, and the same order is certified by 0, 1 and 2."""
    with trio.fail_after(120):
        async with ledger_cluster(tmp_path, 4, sync_interval=3600.0) as c:
            n0 = c.nodes[0]
            await wait_until(lambda: all(len(n.ctx.overlay.peers()) == 3 for n in c.nodes))
            # the syncs on connect are over (one still running could bring validator 2 the
            # certificates made below, and the catch-up under test would not be needed)
            await wait_until(lambda: not any(n.svc.sync.is_syncing(m.ctx.peer_id) for n in c.nodes for m in c.nodes))
            g = n0.svc.genesis
            key = Keystore(n0.datadir).unlock(n0.wallet, "")

            def order(seq: int, memo: str) -> SignedOrder:
                return SignedOrder.sign(key, TransferOrder(chain=g.chain_id, epoch=0, sender=n0.wallet, sequence=seq,
                                                           fee=g.fee, recipient=c.nodes[1].wallet, amount=1, memo=memo))
            for seq in (0, 1):
                so = order(seq, f"early {seq}")
                up_to_date = (c.nodes[0], c.nodes[1], c.nodes[3])
                votes = [n.svc.validate("test", so)[0] for n in up_to_date]
                assert all(isinstance(v, Vote) for v in votes), votes
                cert = Certificate.from_votes(so, votes)
                for n in up_to_date:
                    n.svc.ingest("test", [cert])
            assert isinstance(c.nodes[3].svc.validate("test", order(2, "elsewhere"))[0], Vote)
            # (with a group-commit store the state shows them once they are durable)
            await wait_until(lambda: [n.svc.state.account(n0.wallet).next_sequence for n in c.nodes] == [2, 2, 0, 2])

            import traceback
            sy = c.nodes[2].svc.sync
            orig = sy.sync_soon
            def spy(peer):
                print("DEBUG sync_soon", peer, "".join(traceback.format_stack(limit=6)))
                orig(peer)
            sy.sync_soon = spy
            origw = sy.sync_with
            async def spyw(peer):
                print("DEBUG sync_with", peer, "".join(traceback.format_stack(limit=6)))
                return await origw(peer)
            sy.sync_with = spyw
            res = await n0.role.wallet_send(encode_address(c.nodes[1].wallet), "3", timeout=40.0)
            assert res["status"] == "final" and res["sequence"] == 2 and res["amount"] == "3", res
            # every replica converges (3 catches up through gossip of the certificate and sync)
            await wait_until(lambda: all(n.svc.state.applied == 3 for n in c.nodes), timeout=60)
            assert len({n.svc.state.root() for n in c.nodes}) == 1
            # the validators that voted saw one order for sequence 2; only 3 saw the conflict
            assert [(await n.role.ledger_stats())["forks"] for n in c.nodes] == [0, 0, 0, 1]
