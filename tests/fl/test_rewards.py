"""Round rewards end to end with the real ledger: the aggregator of each round mints the
accepted participants' shares, evidenced by "fl_update" receipts the validators check."""
from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fognode.node.peerid import pubkey_from_peer_id
from fognode.protocols.fl.protocol import FlConfig, FlRole
from fognode.protocols.fl.receipts import PPM

from tests.ledger.cluster import ledger_cluster, wait_until


async def test_round_rewards_are_minted_to_accepted_participants(tmp_path: Path,
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
                out = await roles[0].start(task="synthetic", rounds=2, min_participants=2,
                                           participants=2, deadline=15.0, optin_seconds=2.0,
                                           reward_budget=budget, task_params={"max_samples": 200})
                sid = out["session_id"]
                assert roles[0].core is not None
                core = roles[0].core
                await wait_until(lambda: core.status(bytes.fromhex(sid))["state"] != "running", 60)
                st = core.status(bytes.fromhex(sid))
                assert st["state"] == "completed", st
                owed: dict[str, int] = {}
                for h in st["history"]:
                    for peer, w in h["weights"].items():
                        if peer != h["aggregator"]:
                            owed[peer] = owed.get(peer, 0) + (budget // 2) * int(round(w * PPM)) // PPM
                assert owed and all(v > 0 for v in owed.values())
                ledger = cluster.nodes[0].svc
                await wait_until(lambda: all(ledger.balance(pubkey_from_peer_id(p)) == v
                                             for p, v in owed.items()), 30)
                assert ledger.state.supply.minted == sum(owed.values())
                nursery.cancel_scope.cancel()
