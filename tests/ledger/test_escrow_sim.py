"""Escrows under the simulated network (tests/ledger/sim.py): one faulty validator of four that
votes for every order it is asked about, lossy/duplicating/reordering delivery, skewed clocks.
Whatever happens, two orders spending the same escrow state are never both certified, every
replica ends with the same root, and the escrow holds exactly what its certified orders say."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from fognode.ledger.amounts import MICRO
from fognode.ledger.client import Decision
from fognode.ledger.errors import Reason
from tests.ledger.escrow_helpers import eid, open_order, payout, refund
from tests.ledger.helpers import NOW, key, make_genesis, pk, validator_keys
from tests.ledger.sim import Faults, Sim, Submission

LOSSY = Faults(drop=0.2, duplicate=0.2, reorder=True)
CUSTOMER, PROVIDER = key(0), key(1)
E = eid(CUSTOMER)
AMOUNT = 100 * MICRO
DEADLINE = int(NOW) + 60
GRACE = 30
SEEDS = range(24)


def opened(seed: int, skew: dict[str, float]) -> Sim:
    g = make_genesis(n_validators=4, funded=3)
    sim = Sim(g, validator_keys(4), seed, LOSSY, now=NOW, faulty=frozenset({"v0"}), skew=skew)
    sub = sim.submit("c", CUSTOMER, lambda seq: open_order(CUSTOMER, pk(PROVIDER), AMOUNT, seq,
                                                           deadline=DEADLINE, grace=GRACE))
    sim.run_until_quiet()
    assert sub.outcome is Decision.CERTIFIED
    return sim


def settle(sim: Sim) -> None:
    """The checks that hold whatever the run did."""
    roots = {n.state.root() for n in sim.nodes.values()}
    assert len(roots) == 1
    for n in sim.nodes.values():
        assert n.state.invariant_problems() == []
    spends = Counter((c.order.order.escrow, c.order.order.escrow_sequence) for c in sim.certified
                     if hasattr(c.order.order, "escrow"))
    assert max(spends.values()) == 1, spends          # one certificate per escrow sequence


def conflicts(*subs: Submission) -> int:
    return sum(1 for s in subs for r in s.collector.rejections.values() if r.reason is Reason.CONFLICT)


def test_payout_or_refund_never_both() -> None:
    """The payee sends its payout just before the deadline; time passes the deadline while it
    is in flight (some validators' clocks run ahead); the customer, who has not seen it, asks
    for the refund of the same escrow state. Only one of them is ever certified."""
    outcomes: Counter[str] = Counter()
    locked = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        skew = {f"v{i}": rng.uniform(-2.0, 2.0) for i in range(4)}
        sim = opened(seed, skew)
        sim.now = DEADLINE - 1.5
        pay = sim.submit("p", PROVIDER, lambda seq: payout(PROVIDER, CUSTOMER, E, 1, 60 * MICRO, seq))
        for _ in range(rng.randrange(0, 12)):
            sim.step()
        sim.now = max(sim.now, DEADLINE + 2.5)          # past the deadline on every clock
        back = sim.submit("c", CUSTOMER, lambda seq: refund(CUSTOMER, E, 1, seq))
        sim.run_until_quiet()
        certified = [s.outcome is Decision.CERTIFIED for s in (pay, back)]
        assert certified != [True, True], seed
        locked += conflicts(pay, back)
        settle(sim)
        e = next(iter(sim.nodes.values())).state.escrows[E]
        if certified[0]:
            outcomes["payout"] += 1
            assert e.paid == 60 * MICRO and not e.closed
        elif certified[1]:
            outcomes["refund"] += 1
            assert e.closed and e.paid == 0
        else:
            outcomes["neither"] += 1
            assert e.next_sequence == 1
    # both races happened across the seeds, and the escrow lock refused the loser somewhere
    assert outcomes["payout"] and outcomes["refund"], outcomes
    assert locked > 0
    print(dict(outcomes), "escrow-lock refusals:", locked)


@pytest.mark.parametrize("seed", range(8))
def test_an_equivocating_payee_is_paid_once(seed: int) -> None:
    """The payee signs two payouts for one escrow state (one sender sequence, two notes) and
    sends both everywhere; with the faulty validator voting for both, one at most is
    certified and the escrow pays exactly that note."""
    sim = opened(seed, {})
    a = sim.submit("p1", PROVIDER, lambda seq: payout(PROVIDER, CUSTOMER, E, 1, 30 * MICRO, seq), sequence=0)
    b = sim.submit("p2", PROVIDER, lambda seq: payout(PROVIDER, CUSTOMER, E, 1, 90 * MICRO, seq), sequence=0)
    sim.run_until_quiet()
    won = [s for s in (a, b) if s.outcome is Decision.CERTIFIED]
    assert len(won) <= 1
    settle(sim)
    paid = next(iter(sim.nodes.values())).state.escrows[E].paid
    assert paid == (won[0].so.order.note.due if won else 0)


@pytest.mark.parametrize("seed", range(8))
def test_both_parties_closing_late_close_once(seed: int) -> None:
    """After the grace period both parties may close the escrow, and both try at once (from
    different senders: only the escrow lock stands between them)."""
    sim = opened(seed, {})
    sim.now = DEADLINE + GRACE + 1
    a = sim.submit("c", CUSTOMER, lambda seq: refund(CUSTOMER, E, 1, seq))
    b = sim.submit("p", PROVIDER, lambda seq: refund(PROVIDER, E, 1, seq))
    sim.run_until_quiet()
    assert [a.outcome, b.outcome].count(Decision.CERTIFIED) <= 1
    settle(sim)
    st = next(iter(sim.nodes.values())).state
    if Decision.CERTIFIED in (a.outcome, b.outcome):
        assert st.escrows[E].closed
        assert st.account(pk(CUSTOMER)).balance == 1000 * MICRO - 2 * sim.genesis.fee \
            + (sim.genesis.fee if b.outcome is Decision.CERTIFIED else 0)
