"""Property tests (hypothesis) of escrows as a state machine: any sequence of escrow orders an
honest committee certifies keeps the supply invariant (escrows count in it), never pays an
escrow more than it holds, and replicas that receive the certificates in any order (pending
until their escrow's previous order is there) end with the same state root."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from fognode.ledger.amounts import MICRO
from fognode.ledger.messages import Certificate, SignedOrder
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.state import LedgerState

from .escrow_helpers import breach, collateral, eid, open_order, payout, refund, slash
from .helpers import NOW, Node, certify, key, make_genesis, pk, validator_keys

V = validator_keys()
CUSTOMER, PROVIDER = key(0), key(1)
WITNESS = key(40)
DEADLINE = int(NOW) + 100
GRACE = 50
AGREEMENTS = [bytes([i]) * 32 for i in range(3)]

# (kind, escrow index, amount or due or window, time: 0 before the deadline, 1 in grace, 2 after);
# the history opens every escrow first and runs its steps in time order
step = st.tuples(st.sampled_from(["collateral", "payout", "payout", "refund_c", "refund_p", "slash", "open"]),
                 st.integers(0, 2), st.integers(1, 150), st.sampled_from([0, 0, 0, 1, 1, 2]))


def _order(kind: str, which: int, n: int, node: Node) -> tuple[object, SignedOrder] | None:
    ag = AGREEMENTS[which]
    e = eid(CUSTOMER, ag)
    rec = node.state.escrows.get(e)
    eseq = rec.next_sequence if rec is not None else 1
    cseq = node.state.account(pk(CUSTOMER)).next_sequence
    pseq = node.state.account(pk(PROVIDER)).next_sequence
    if kind == "open":
        o = open_order(CUSTOMER, pk(PROVIDER), n * MICRO, cseq, deadline=DEADLINE, grace=GRACE, agreement=ag,
                       uptime_ppm=900_000, penalty=n * MICRO // 3, witnesses=(pk(WITNESS),), threshold=1)
        return o, SignedOrder.sign(CUSTOMER, o)
    if kind == "collateral":
        return None, SignedOrder.sign(PROVIDER, collateral(PROVIDER, e, eseq, n * MICRO // 2, pseq))
    if kind == "payout":
        return None, SignedOrder.sign(PROVIDER, payout(PROVIDER, CUSTOMER, e, eseq, n * MICRO, pseq))
    if kind == "refund_c":
        return None, SignedOrder.sign(CUSTOMER, refund(CUSTOMER, e, eseq, cseq))
    if kind == "refund_p":
        return None, SignedOrder.sign(PROVIDER, refund(PROVIDER, e, eseq, pseq))
    report = breach(e, n, 10, 5, [WITNESS])
    return None, SignedOrder.sign(CUSTOMER, slash(CUSTOMER, e, eseq, report, cseq))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_escrow_histories_keep_the_books_and_replay_in_any_order(steps: list[tuple[str, int, int, int]],
                                                                  rnd: object) -> None:
    g = make_genesis()
    nodes = [Node(v, g) for v in V]
    certs: list[Certificate] = []
    opens = [("open", i, 60 + 40 * i, 0) for i in range(3)]
    for kind, which, n, phase in opens + sorted(steps, key=lambda x: x[3]):
        now = [NOW, DEADLINE + 1.0, DEADLINE + GRACE + 1.0][phase]
        _, so = _order(kind, which, n, nodes[0])    # type: ignore[misc]
        acts = [node.ask(so, now) for node in nodes[:3]]
        if not all(hasattr(a, "validator") for a in acts):
            continue                                 # refused (with a reason): nothing changes
        cert = certify(so, V[:3])
        certs.append(cert)
        for node in nodes:
            node.state.begin()
            node.replica.receive("x", cert)
            node.state.end()
        st_ = nodes[0].state
        assert st_.invariant_problems() == []
        for e in st_.escrows.values():
            assert 0 <= e.paid <= e.amount and 0 <= e.slashed <= e.collateral
    roots = {node.state.root() for node in nodes}
    assert len(roots) == 1
    shuffled = list(certs)
    rnd.shuffle(shuffled)                            # type: ignore[attr-defined]
    fresh = LedgerState(g)
    r = Replica(fresh, MemoryHistory())
    for c in shuffled:
        fresh.begin()
        r.receive("x", c)
        fresh.end()
    assert fresh.applied == len(certs) and not len(r.pending)
    assert fresh.root() in roots and fresh.escrows == nodes[0].state.escrows
