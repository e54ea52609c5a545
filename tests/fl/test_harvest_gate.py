"""FL and the harvest role, in the in-memory harness: a device whose harvest role says
"suspended" is neither selected nor opts in; once it may work again it takes part in the next
session; every participant that trained is handed its round's signed receipt (RoundJudged)."""
from __future__ import annotations

import dataclasses

from fognode.protocols.fl.messages import DeviceFacts, SelectionCriteria
from fognode.protocols.fl.session.selection import DeviceCandidate, ineligibility
from fognode.protocols.harvest.receipts import FL_ROUND, Outcome, verify_evidence
from fognode.node.wire import pack

from tests.fl.harness import Sim
from tests.fl.test_session import spec


class HarvestSim(Sim):
    """The registry's view with each device's announced harvest state."""

    def __init__(self, n: int) -> None:
        self.suspended: dict[str, str] = {}
        super().__init__(n)

    def _view(self, peer: str, facts: DeviceFacts) -> DeviceCandidate:
        c = super()._view(peer, facts)
        return dataclasses.replace(c, harvest_suspended=self.suspended.get(peer, ""))


def test_a_suspended_candidate_is_ineligible() -> None:
    assert ineligibility(DeviceCandidate("x", harvest_suspended="on_battery"), SelectionCriteria()) \
        == "harvest suspended (on_battery)"
    assert ineligibility(DeviceCandidate("x"), SelectionCriteria()) is None


def test_a_device_on_battery_is_left_out_until_it_charges_again() -> None:
    sim = HarvestSim(4)
    phone = sim.nodes[3]
    sim.suspended[phone.peer] = "on_battery"
    sid = sim.start(spec(rounds=2, min_participants=3, participants=4))
    sim.run_until(lambda: sim.ended(sid), 600)
    st = sim.status(sid)
    assert st["state"] == "completed"
    assert all(phone.peer not in h["participants"] for h in st["history"])
    assert sid not in phone.core.sessions and "harvest suspended" in phone.core.ignored[sid]
    assert phone.judged == []
    # every participant that trained got each round's receipt, which credits it
    for nd in sim.nodes[:3]:
        rounds = sorted(a.receipt.round for a in nd.judged)
        assert rounds == [1, 2], (nd.index, rounds)
        for a in nd.judged:
            if a.receipt.aggregator != nd.peer:
                c = verify_evidence(FL_ROUND, pack(a.receipt.to_wire()), nd.peer)
                assert c.outcome is Outcome.VALIDATED and c.ref == sid.hex()
    # charging again: the next session selects it
    del sim.suspended[phone.peer]
    sid2 = sim.start(spec(rounds=1, min_participants=4, participants=4))
    sim.run_until(lambda: sim.ended(sid2), 600)
    st = sim.status(sid2)
    assert st["state"] == "completed" and phone.peer in st["history"][0]["participants"]
    assert [a.receipt.round for a in phone.judged] == [1]
