"""Property tests (hypothesis) over the sans-IO cores, Sim-style: several validator cores and
replicas exchange messages in memory with drops, duplicates and any delivery order."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from fognode.ledger.actions import Commit
from fognode.ledger.amounts import MICRO
from fognode.ledger.messages import Certificate, MintOrder, SignedOrder, Vote
from fognode.ledger.pending import PendingPool
from fognode.ledger.receipts import Receipt, uptime_claim
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.state import LedgerState

from .helpers import CHAIN, Node, key, make_genesis, pk, transfer, validator_keys

V = validator_keys()
USERS = [key(i) for i in range(4)]   # 0..2 funded at genesis, 3 is not


def _build_history(steps: list[tuple[int, int, int, bool]]) -> tuple[list[Certificate], Node]:
    """Drive one honest committee through `steps` (sender, recipient, amount, mint?) and return
    the certificates in the order they were made, plus a node that applied them."""
    g = make_genesis(fee_destination="validators")
    nodes = [Node(v, g) for v in V]
    certs: list[Certificate] = []
    receipts = 0
    for s, rcp, amount, mint in steps:
        sender = USERS[s]
        seq = nodes[0].state.account(pk(sender)).next_sequence
        if mint:
            receipts += 1
            rc = Receipt.issue(V[receipts % 4], "uptime", pk(USERS[rcp]), 0, {"seconds": 1 + receipts,
                                                                                  "claim": uptime_claim(0)})
            if rc.issuer == rc.beneficiary:
                continue
            so = SignedOrder.sign(sender, MintOrder(chain=CHAIN, epoch=0, sender=pk(sender), sequence=seq,
                                                    fee=1000, recipient=pk(USERS[rcp]), amount=amount % 1000 + 1,
                                                    receipt=rc))
        else:
            so = transfer(sender, pk(USERS[rcp]), amount, seq)
        votes = [n.ask(so) for n in nodes]
        good = [v for v in votes if isinstance(v, Vote)]
        if len(good) < 3:
            continue
        cert = Certificate.from_votes(so, good[:3])
        for n in nodes:
            n.replica.receive("client", cert)
        certs.append(cert)
    return certs, nodes[0]


step = st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 400 * MICRO), st.booleans())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=14), st.data())
def test_any_delivery_order_and_duplication_gives_the_same_root(steps: list[tuple[int, int, int, bool]],
                                                               data: st.DataObject) -> None:
    certs, ref = _build_history(steps)
    delivery = data.draw(st.lists(st.sampled_from(certs), max_size=3 * len(certs)) if certs else st.just([]))
    delivery = data.draw(st.permutations(delivery + certs))
    r = Replica(LedgerState(ref.genesis), MemoryHistory(), PendingPool(max_entries=1000))
    for c in delivery:
        r.receive("gossip", c)
        assert r.state.invariant_problems() == []
    assert r.state.root() == ref.state.root()
    assert r.state.applied == len(certs) and len(r.pending) == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(step, min_size=1, max_size=14))
def test_supply_changes_only_by_mint_and_burn(steps: list[tuple[int, int, int, bool]]) -> None:
    certs, ref = _build_history(steps)
    r = Replica(LedgerState(ref.genesis), MemoryHistory())
    total = r.state.supply.total
    for c in certs:
        for act in r.receive("gossip", c):
            assert isinstance(act, Commit)
            o = act.delta.cert.order.order
            minted = o.amount if isinstance(o, MintOrder) else 0
            burned = 0  # fees go to validators in this genesis
            assert r.state.supply.total == total + minted - burned
            assert r.state.holdings() == r.state.supply.total
            total = r.state.supply.total
    g = make_genesis()   # and with burning fees
    r2 = Replica(LedgerState(g), MemoryHistory())
    for c in certs:
        before = r2.state.supply
        for act in r2.receive("gossip", c):
            assert isinstance(act, Commit)
        after = r2.state.supply
        o = c.order.order
        assert after.total - before.total == (o.amount if isinstance(o, MintOrder) else 0) - o.fee
        assert r2.state.holdings() == after.total


class FaultyValidator:
    """Signs anything it is asked, including conflicting orders."""

    def __init__(self, k: object) -> None:
        self.key = k

    def ask(self, so: SignedOrder) -> Vote:
        return Vote.sign(self.key, so.tx_id)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 4), st.integers(0, 3), st.data())
def test_no_two_certified_orders_for_one_sequence_with_f_faulty(n_orders: int, faulty_index: int,
                                                                data: st.DataObject) -> None:
    g = make_genesis()
    members: list[Node | FaultyValidator] = [
        FaultyValidator(v) if i == faulty_index else Node(v, g) for i, v in enumerate(V)]
    orders = [transfer(USERS[0], pk(USERS[1 + i % 3]), 1 + i, 0) for i in range(n_orders)]
    # the double-spending sender sends each order to any subset of validators, in any order,
    # some messages dropped, some duplicated
    deliveries = data.draw(st.lists(st.tuples(st.integers(0, n_orders - 1), st.integers(0, 3)),
                                    min_size=1, max_size=24))
    votes: dict[bytes, dict[bytes, Vote]] = {o.tx_id: {} for o in orders}
    for oi, vi in deliveries:
        res = members[vi].ask(orders[oi])
        if isinstance(res, Vote):
            votes[orders[oi].tx_id][res.validator] = res
    certified = [tx for tx, vs in votes.items() if len(vs) >= 3]
    assert len(certified) <= 1
    for m in members:
        if isinstance(m, Node):   # every honest validator signed at most one of them
            assert sum(1 for vs in votes.values() if pk(m.key) in vs) <= 1
