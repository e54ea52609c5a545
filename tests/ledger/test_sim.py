"""The ledger cores under a lossy, duplicating, reordering network (tests/ledger/sim.py): every
seed is a reproducible run of milliseconds, no sockets."""
from __future__ import annotations

import pytest

from fognode.ledger.client import Decision
from fognode.ledger.errors import Reason
from tests.ledger.helpers import NOW, key, make_genesis, pk, validator_keys
from tests.ledger.sim import Faults, Sim, Submission, transfer_to

LOSSY = Faults(drop=0.2, duplicate=0.2, reorder=True)
USERS = [key(i) for i in range(3)]      # funded by make_genesis(funded=3)


def payments(seed: int, faults: Faults, per_user: int = 4) -> Sim:
    """Each user pays the next one `per_user` times, one order after the other."""
    g = make_genesis(n_validators=4, funded=3)
    sim = Sim(g, validator_keys(4), seed, faults, now=NOW)
    left = {pk(u): per_user for u in USERS}
    current: dict[bytes, Submission] = {}
    while True:
        for i, u in enumerate(USERS):
            sub = current.get(pk(u))
            if left[pk(u)] and (sub is None or sub.outcome is not None):
                left[pk(u)] -= 1
                current[pk(u)] = sim.submit(f"c{i}", u, transfer_to(g, u, pk(USERS[(i + 1) % 3]), 1000 + i))
        if not sim.step() and not any(left.values()):
            break
    sim.heal()
    return sim


def roots(sim: Sim) -> set[bytes]:
    return {n.state.root() for n in sim.nodes.values()}


@pytest.mark.parametrize("seed", range(8))
def test_replicas_converge_whatever_the_network_does(seed: int) -> None:
    sim = payments(seed, LOSSY)
    assert sim.dropped > 0 and sim.delivered > 0
    # the client's retry policy carried every order through the losses
    assert all(s.outcome is Decision.CERTIFIED for s in sim.submissions), \
        [(s.outcome, s.collector.reasons()) for s in sim.submissions if s.outcome is not Decision.CERTIFIED]
    assert len(sim.certified) == 12
    assert len(roots(sim)) == 1
    for node in sim.nodes.values():
        assert node.state.applied == 12 and not node.replica.pending
        assert {c.tx_id for c in node.log} == {c.tx_id for c in sim.certified}


def test_a_run_is_its_seed() -> None:
    a, b = payments(7, LOSSY), payments(7, LOSSY)
    assert (a.delivered, a.dropped, a.now, roots(a)) == (b.delivered, b.dropped, b.now, roots(b))
    assert roots(a) == roots(payments(8, LOSSY)) == roots(payments(0, Faults()))   # same payments, same state


@pytest.mark.parametrize("seed", range(16))
def test_a_double_spend_is_never_certified_twice(seed: int) -> None:
    """A faulty client signs two orders for one sequence and sends both everywhere: at most
    one is certified, whatever the delivery order; the other is refused for the conflict."""
    g = make_genesis(n_validators=4, funded=3)
    sim = Sim(g, validator_keys(4), seed, LOSSY, now=NOW)
    thief = USERS[0]
    a = sim.submit("c0", thief, transfer_to(g, thief, pk(USERS[1]), 5), sequence=0)
    b = sim.submit("c1", thief, transfer_to(g, thief, pk(USERS[2]), 5), sequence=0)
    sim.run_until_quiet()
    outcomes = [a.outcome, b.outcome]
    assert outcomes.count(Decision.CERTIFIED) <= 1
    assert len(sim.certified) == outcomes.count(Decision.CERTIFIED)
    for s in (a, b):
        if s.outcome is not Decision.CERTIFIED:
            assert s.outcome is Decision.REJECTED and s.collector.main_reason() is Reason.CONFLICT
    assert len(roots(sim)) == 1
