"""`HarvestApi.get_available_harvesters(criteria)` over a real registry core's view: only
online devices announcing harvest "available" whose free cores and memory (under their policy)
meet the criteria; devices without the harvest role (unknown) and suspended ones never."""
from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
from fognode.node.role import Services
from fognode.protocols.harvest.api import HarvestApi, HarvesterCriteria, RegistryLookup, harvest_api
from fognode.protocols.harvest.contribution import ContributionLedger
from fognode.protocols.harvest.contribution_store import ContributionStore
from fognode.protocols.harvest.executor import Executor
from fognode.protocols.harvest.metrics import HarvestMetrics
from fognode.protocols.harvest.policy import HarvestPolicy
from fognode.protocols.harvest.policy_core import PolicyCore
from fognode.protocols.harvest.policy_store import PolicyStore, StoredPolicy
from fognode.protocols.harvest.sensors import Readings
from fognode.protocols.harvest.service import HarvestService
from fognode.protocols.registry.api import RegistryService
from fognode.protocols.registry.core import RegistryCore
from fognode.protocols.registry.record import HarvestInfo, make_profile, sign_record

from tests.registry.helpers import NOW, caps, key
from tests.registry.test_core import CFG

GIB = 1024**3


class RegistryRoleView:
    """What RegistryService reads of its role: the core (a real one)."""

    def __init__(self, core: RegistryCore) -> None:
        self.core = core

    def set_harvest(self, harvest: HarvestInfo | None) -> None:
        self.core.update_harvest(harvest, NOW + 1)


async def test_available_harvesters_filter_on_the_announced_state(tmp_path: Path) -> None:
    core = RegistryCore(key("me"), CFG, make_profile("eu", "server", ["harvest"]), pretrusted=[], now=NOW)
    core.start(caps(), NOW)
    states = {"big": HarvestInfo(True, "", 8, 16 * GIB), "small": HarvestInfo(True, "", 1, 2 * GIB),
              "phone": HarvestInfo(False, "on_battery", 0, 0), "old": None,
              "gone": HarvestInfo(True, "", 8, 16 * GIB)}
    peers = {}
    for i, (name, h) in enumerate(states.items()):
        rec = sign_record(key(name), seq=1, issued=int(NOW), expires=int(NOW) + 3600, caps=caps(),
                          profile=make_profile("us" if name == "small" else "eu", "server", ["harvest"]),
                          harvest=h)
        core.on_device_gossip(rec.peer_id, core._envelope(NOW, "record", record=rec.encode()), NOW)
        peers[name] = rec.peer_id
    core.mark_offline(peers["gone"], NOW)
    peers["me"] = core.peer_id
    services = Services()
    services.provide("registry", RegistryService(RegistryRoleView(core)))  # type: ignore[arg-type]
    svc = HarvestService(peer_id="me", ledger=ContributionLedger(ContributionStore(tmp_path / "c"), "me", NOW),
                         executor=Executor(), core=PolicyCore(HarvestPolicy()),
                         metrics=HarvestMetrics.create(CollectorRegistry()), events=EventBus(),
                         clock=lambda: NOW, base_policy=HarvestPolicy(),
                         store=PolicyStore(tmp_path / "policy.json"), stored=StoredPolicy())
    services.provide("harvest", HarvestApi(svc, RegistryLookup(services)))
    api = harvest_api(services)
    assert api is not None
    names = {v: k for k, v in peers.items()}

    def found(c: HarvesterCriteria | None = None) -> list[str]:
        return [names[r.peer_id] for r in api.get_available_harvesters(c)]

    assert sorted(found()) == ["big", "small"]
    assert found(HarvesterCriteria(min_cores=2)) == ["big"]
    assert found(HarvesterCriteria(min_memory_bytes=4 * GIB)) == ["big"]
    assert found(HarvesterCriteria(region="us")) == ["small"]
    assert found(HarvesterCriteria(min_cores=9)) == []
    # before its first decision this node announces nothing; after it, its state
    assert api.register_harvester() is None and api.suspension() is None
    readings = Readings(time=NOW, power_plugged=True, cpu_count=4, memory_available_bytes=3 * GIB,
                        memory_total_bytes=8 * GIB, owner_cpu_pct=0.0)
    svc.decision, svc.readings = svc.core.tick(0.0, readings), readings
    info = api.register_harvester()
    assert info == HarvestInfo(True, "", 2, 3 * GIB)      # 50 % of 4 cores; memory available now
    assert core.own is not None and core.own.harvest == info
    assert sorted(found()) == ["big", "me", "small"]
    svc.core.pause()
    svc.decision = svc.core.tick(1.0, readings)
    assert api.suspension() == "operator_pause"
    assert api.register_harvester() == HarvestInfo(False, "operator_pause", 0, 0)
    assert core.own.harvest == HarvestInfo(False, "operator_pause", 0, 0)
    svc.close("test over")
