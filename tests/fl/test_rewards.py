"""Round rewards end to end with the real ledger: the starter's wallet funds the session's
reward pool at fl.start, and the aggregator of each round pays the accepted participants'
shares from it to the wallets they opted in with, evidenced by "fl_update" receipts
(announcement, signed round header, Merkle proof) the validators check. Nothing is minted."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import trio

from fognode.ledger.rewardpool_orders import PoolPayOrder
from fognode.node.peerid import pubkey_from_peer_id
from fognode.protocols.fl.protocol import FlConfig, FlRole
from fognode.protocols.fl.rewards.receipts import PPM

from tests.ledger.cluster import ledger_cluster, wait_until


async def test_round_rewards_are_paid_from_the_funded_pool(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOGNODE_PASSPHRASE", "")   # the dev wallets that pay the mint fees
    with trio.fail_after(120):
        async with ledger_cluster(tmp_path, 2) as cluster:
            async with trio.open_nursery() as nursery:
                roles: list[FlRole] = []
                for i, node in enumerate(cluster.nodes):
                    assert node.ctx is not None
                    role = FlRole(node.ctx, FlConfig(data_seed=7, data_index=i, tick_interval=0.1,
                                                     republish_interval=1.0))
                    await nursery.start(role.run)
                    roles.append(role)
                await wait_until(lambda: all(len([p for p in r.ctx.overlay.peers() if p.connected]) >= 1
                                             for r in roles), 30)
                budget = 2_000_000
                ledger = cluster.nodes[0].svc
                starter = cluster.nodes[0].wallet
                before = ledger.balance(starter)
                out = await roles[0].start(task="synthetic", rounds=2, min_participants=2,
                                           participants=2, deadline=15.0, optin_seconds=2.0,
                                           reward_budget=budget, task_params={"max_samples": 200})
                sid = out["session_id"]
                # the budget left the starter's wallet before the session was announced
                assert ledger.balance(starter) == before - budget - ledger.genesis.fee
                pool = ledger.state.pools[next(iter(ledger.state.pools))]
                assert (pool.funder, pool.session.hex(), pool.amount) == (starter, sid, budget)
                assert roles[0].core is not None
                core = roles[0].core
                await wait_until(lambda: core.status(bytes.fromhex(sid))["state"] != "running", 60)
                st = core.status(bytes.fromhex(sid))
                assert st["state"] == "completed", st
                wallets = {r.ctx.peer_id: n.wallet for r, n in zip(roles, cluster.nodes)}
                owed: dict[bytes, int] = {}
                for h in st["history"]:
                    for peer, w in h["weights"].items():
                        if peer != h["aggregator"]:
                            owed[wallets[peer]] = owed.get(wallets[peer], 0) + \
                                (budget // 2) * math.floor(w * PPM) // PPM
                assert owed and all(v > 0 for v in owed.values())
                await wait_until(lambda: next(iter(ledger.state.pools.values())).paid == sum(owed.values()), 30)
                assert ledger.state.supply.minted == 0
                # paid to the opted-in wallets, not the identity keys
                assert all(ledger.balance(pubkey_from_peer_id(p)) == 0 for p in wallets)
                for w, v in owed.items():
                    paid = [c.order.order for _, c in ledger.store.history(w)
                            if isinstance(c.order.order, PoolPayOrder) and c.order.order.receipt.beneficiary == w]
                    assert sum(o.amount for o in paid) == v
                    assert all(o.receipt.kind == "fl_update" for o in paid)
                nursery.cancel_scope.cancel()
