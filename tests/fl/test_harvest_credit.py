"""FL's harvest link holds a round receipt (`judged`) and credits it later (`credit_held`,
or when the FL session ends), so the contribution ledger's synced write is not on the round's
critical path: over a real harvest service and contribution ledger (LevelDB)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
from fognode.node.peerid import peer_id_from_pubkey
from fognode.node.role import Services
from fognode.protocols.fl.harvest_link import MAX_HELD, HarvestLink
from fognode.protocols.fl.rewards.receipts import AcceptedUpdate, RoundReceipt
from fognode.protocols.harvest.api import HarvestApi, RegistryLookup
from fognode.protocols.harvest.contribution import ContributionLedger
from fognode.protocols.harvest.contribution_store import ContributionStore
from fognode.protocols.harvest.executor import Executor
from fognode.protocols.harvest.metrics import HarvestMetrics
from fognode.protocols.harvest.policy import HarvestPolicy
from fognode.protocols.harvest.policy_core import PolicyCore
from fognode.protocols.harvest.policy_store import PolicyStore, StoredPolicy
from fognode.protocols.harvest.service import HarvestService

from tests.harvest.test_contribution import ME, NOW, OTHER, SID, key


@dataclass
class Ctx:
    services: Services


def receipt(round_no: int) -> RoundReceipt:
    """The aggregator's signed receipt of a round where this device's update was accepted."""
    k = key("agg")
    return RoundReceipt(SID, round_no, 0, peer_id_from_pubkey(bytes(k.verify_key)), bytes(k.verify_key),
                        b"\1" * 32, b"\2" * 32, (AcceptedUpdate(ME, 0.5, 10), AcceptedUpdate(OTHER, 0.5, 10)),
                        1_000_000, NOW).signed(k)


async def test_receipts_are_held_then_credited_and_the_end_credits_what_is_held(tmp_path: Path) -> None:
    ledger = ContributionLedger(ContributionStore(tmp_path / "c"), ME, NOW)
    svc = HarvestService(peer_id=ME, ledger=ledger, executor=Executor(), core=PolicyCore(HarvestPolicy()),
                         metrics=HarvestMetrics.create(CollectorRegistry()), events=EventBus(),
                         clock=lambda: NOW, base_policy=HarvestPolicy(),
                         store=PolicyStore(tmp_path / "policy.json"), stored=StoredPolicy())
    services = Services()
    services.provide("harvest", HarvestApi(svc, RegistryLookup(services)))
    link = HarvestLink(Ctx(services))
    await svc.open_session("fl", SID.hex())
    try:
        assert link.judged(receipt(1)) and link.judged(receipt(2))
        assert ledger.totals().validated == 0          # held: nothing written yet
        await link.credit_held()
        assert ledger.totals().validated == 2 and link.held == []
        assert link.judged(receipt(3))
        await link.ended(SID.hex(), "completed", "")     # the end credits what is held first
        assert ledger.totals().validated == 3 and ledger.totals().completed == 1
        # past MAX_HELD held receipts the link is `full`: the executor credits them at once
        await svc.open_session("fl", SID.hex())
        got = [link.judged(receipt(10 + i)) for i in range(MAX_HELD)]
        assert got == [True] * MAX_HELD and link.full
        await link.credit_held()
        assert ledger.totals().validated == 3 + MAX_HELD and link.held == [] and not link.full
    finally:
        ledger.close()


def test_without_a_harvest_role_nothing_is_held(tmp_path: Path) -> None:
    link = HarvestLink(Ctx(Services()))
    assert link.judged(receipt(1)) is False and link.held == []
