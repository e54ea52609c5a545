"""A deploy's escrow order when the committee does not answer in time (owner._open_escrow).

Two in-process validators (real libp2p on 127.0.0.1, real LevelDB: tests/ledger/cluster.py);
the second is stopped, so the owner's escrow order gathers no quorum within its drive
(STEP_TIMEOUT / 2, shortened here): NotCertified, and the order stays in flight. The owner
drives it again (fognode_onion_hosted_order_redrives_total{order="escrow"}) instead of failing the
host; once the validator is back the order is certified. Exactly one escrow is opened and paid
for, and asked again for the same agreement (a shard's retry) the owner finds it open and signs
no second order: before session 22 that second order was refused as a conflict and the deploy
failed ("not certified in time" at load 34-37, issue 14).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry

from fognode.ledger.amounts import MICRO
from fognode.ledger.api import ledger_api
from fognode.node.events import EventBus
from fognode.protocols.onion.hosting import owner as owner_mod
from fognode.protocols.onion.hosting.metrics import HostingMetrics
from fognode.protocols.onion.hosting.owner import HostedOwner

from ..ledger.cluster import ledger_cluster, wait_until

pytestmark = pytest.mark.slow

REDRIVES = "fognode_onion_hosted_order_redrives_total"


async def test_an_escrow_order_not_certified_in_time_is_driven_again(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOGNODE_PASSPHRASE", "")
    monkeypatch.setattr(owner_mod, "STEP_TIMEOUT", 4.0)       # each drive of the order: 2 s
    monkeypatch.setattr(owner_mod, "ESCROW_TIMEOUT", 120.0)
    with trio.fail_after(180):
        async with ledger_cluster(tmp_path / "net", 2) as c:
            n0, n1 = c.nodes
            await wait_until(lambda: n0.ctx is not None and len(n0.ctx.overlay.peers()) == 1, timeout=60)
            assert n0.ctx is not None
            api = ledger_api(n0.ctx.services)
            assert api is not None
            reg = CollectorRegistry()
            owner = HostedOwner(overlay=n0.ctx.overlay, services=n0.ctx.services, events=EventBus(reg),
                                datadir=tmp_path / "owner", interval=600.0, clock=time.time,
                                metrics=HostingMetrics.create(reg))
            wallet, payee = n0.wallet, n1.wallet
            agreement, amount, deadline = b"\x07" * 32, 5 * MICRO, int(time.time()) + 3600
            before, fee = api.balance(wallet), api.order_fee()
            await c.stop(1)

            async def validator_back_after_a_redrive() -> None:
                await wait_until(lambda: (reg.get_sample_value(REDRIVES, {"order": "escrow"}) or 0) >= 1, timeout=60)
                await c.start(1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(validator_back_after_a_redrive)
                eid = await owner._open_escrow(api, wallet, agreement, payee, amount, deadline)
            assert (reg.get_sample_value(REDRIVES, {"order": "escrow"}) or 0) >= 1
            assert eid == api.escrow_id(wallet, agreement)
            e = api.escrow(eid)
            assert e is not None and (e.customer, e.payee, e.amount, e.deadline) == (wallet, payee, amount, deadline)
            assert api.balance(wallet) == before - amount - fee         # one order, paid once

            # a shard's retry at the same host: the escrow is found open, no second order is signed
            seq = n0.svc.state.account(wallet).next_sequence
            assert await owner._open_escrow(api, wallet, agreement, payee, amount, deadline) == eid
            assert n0.svc.state.account(wallet).next_sequence == seq
            assert api.balance(wallet) == before - amount - fee
