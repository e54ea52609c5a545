"""A deploy's escrow order when the committee does not answer in time (owner._open_escrow).

Two in-process validators (real libp2p on 127.0.0.1, real LevelDB: tests/ledger/cluster.py);
the second is stopped, so the owner's escrow order gathers no quorum within its drive
(STEP_TIMEOUT / 2, shortened here): NotCertified, and the order stays in flight. The owner
drives it again (fognode_onion_hosted_order_redrives_total{order="escrow"}) instead of failing the
host; once the validator is back the order is certified. Exactly one escrow is opened and paid
for, and asked again for the same agreement (a shard's retry) the owner finds it open and signs
no second order: before session 22 that second order was refused as a conflict and the deploy
failed ("not certified in time" at load 34-37, issue 14). The host's side the same way: the
first debit note's payout order, with the owner's validator stopped, is driven again and
collected once it is back; a note already paid is not collected twice.
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
from fognode.protocols.onion.hosting import host as host_mod
from fognode.protocols.onion.hosting import owner as owner_mod
from fognode.protocols.onion.hosting.host import HostingServer
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
    monkeypatch.setattr(host_mod, "STEP_TIMEOUT", 4.0)
    monkeypatch.setattr(host_mod, "PAY_TIMEOUT", 120.0)
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

            # the host's side (node 1, the payee): its first debit note's payout order meets the
            # same silent committee (node 0 stopped) and is driven again until node 0 is back
            assert n1.ctx is not None
            host_api = ledger_api(n1.ctx.services)
            assert host_api is not None
            await wait_until(lambda: host_api.escrow(eid) is not None, timeout=60)
            note = await api.sign_debit_note(eid, amount // 5)
            host = HostingServer(overlay=n1.ctx.overlay, services=n1.ctx.services, root=tmp_path / "host",
                                 quota_mib=1, price=1, grace=3600.0, clock=time.time, metrics=HostingMetrics.create(reg),
                                 add_service=lambda port: pytest.fail("no service is mapped here"))
            payee_before = host_api.balance(payee)
            await c.stop(0)

            async def owner_node_back_after_a_redrive() -> None:
                await wait_until(lambda: (reg.get_sample_value(REDRIVES, {"order": "first_note"}) or 0) >= 1,
                                 timeout=60)
                await c.start(0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(owner_node_back_after_a_redrive)
                await host._collect_first_note(host_api, note)
            paid = host_api.escrow(eid)
            assert paid is not None and paid.paid == amount // 5
            assert host_api.balance(payee) == payee_before + amount // 5 - fee
            seq = n1.svc.state.account(payee).next_sequence
            await host._collect_first_note(host_api, note)        # paid already: no second order
            assert n1.svc.state.account(payee).next_sequence == seq
