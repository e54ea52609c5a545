"""Escrow orders against the validator and state cores (escrow.py, no network): each order
type's rules, what each does to the balances, the refusals with their reasons, the escrow
lock with a faulty validator, and replay."""
from __future__ import annotations

import dataclasses

import pytest
from nacl.signing import SigningKey

from fognode.ledger.actions import SendRejection
from fognode.ledger.amounts import MICRO
from fognode.ledger.errors import RPC_CODE_OF_REASON, Reason
from fognode.ledger.escrow import Escrow, state_problem
from fognode.ledger.escrow_orders import DebitNote
from fognode.ledger.messages import Certificate, SignedOrder, Vote, decode_signed_order
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.state import LedgerState
from fognode.node.wire import pack, unpack

from .escrow_helpers import AGREEMENT, FEE, breach, collateral, eid, open_order, payout, refund, signed, slash
from .helpers import NOW, Node, certify, key, make_genesis, pk, validator_keys

CUSTOMER, PROVIDER, STRANGER = key(0), key(1), key(2)       # funded with 1000 MICRO each
DEADLINE = int(NOW) + 1000
GRACE = 600
BEFORE, AFTER, LATE = NOW, DEADLINE + 1.0, DEADLINE + GRACE + 1.0
E = eid(CUSTOMER)
WITNESSES = [key(50), key(51), key(52)]


class Cluster:
    """Four validators each with its replica; `faulty` names the ones that vote for anything."""

    def __init__(self, faulty: tuple[int, ...] = ()) -> None:
        self.genesis = make_genesis()
        self.keys = validator_keys()
        self.nodes = [Node(k, self.genesis) for k in self.keys]
        self.faulty = set(faulty)

    def ask(self, so: SignedOrder, now: float, who: tuple[int, ...] = (0, 1, 2, 3)) -> tuple[list[Vote], list[Reason]]:
        votes, reasons = [], []
        for i in who:
            if i in self.faulty:
                votes.append(Vote.sign(self.keys[i], so.tx_id))
                continue
            r = self.nodes[i].ask(so, now)
            if isinstance(r, Vote):
                votes.append(r)
            else:
                reasons.append(r.rejection.reason)
        return votes, reasons

    def certify(self, so: SignedOrder, now: float) -> Certificate:
        votes, reasons = self.ask(so, now)
        assert len(votes) >= 3, reasons
        cert = Certificate.from_votes(so, votes[:3])
        self.apply(cert)
        return cert

    def apply(self, cert: Certificate, who: tuple[int, ...] = (0, 1, 2, 3)) -> None:
        for i in who:
            n = self.nodes[i]
            n.state.begin()
            n.replica.receive("gossip", cert)
            n.state.end()

    @property
    def state(self) -> LedgerState:
        return self.nodes[1].state

    def balance(self, k: SigningKey) -> int:
        return self.state.account(pk(k)).balance


def opened(c: Cluster, amount: int = 100 * MICRO, **kw: object) -> Certificate:
    return c.certify(signed(CUSTOMER, open_order(CUSTOMER, pk(PROVIDER), amount, 0, deadline=DEADLINE,
                                                 grace=GRACE, **kw)), BEFORE)   # type: ignore[arg-type]


def test_open_payouts_refund_leave_balances_exact() -> None:
    c = Cluster()
    cust0, prov0 = c.balance(CUSTOMER), c.balance(PROVIDER)
    opened(c)
    assert c.balance(CUSTOMER) == cust0 - 100 * MICRO - FEE
    c.certify(signed(PROVIDER, collateral(PROVIDER, E, 1, 20 * MICRO, 0)), BEFORE)
    c.certify(signed(PROVIDER, payout(PROVIDER, CUSTOMER, E, 2, 30 * MICRO, 1)), BEFORE)
    c.certify(signed(PROVIDER, payout(PROVIDER, CUSTOMER, E, 3, 45 * MICRO, 2)), BEFORE)   # cumulative: +15
    e = c.state.escrows[E]
    assert (e.paid, e.collateral, e.next_sequence, e.held) == (45 * MICRO, 20 * MICRO, 4, 75 * MICRO)
    assert c.balance(PROVIDER) == prov0 - 20 * MICRO + 45 * MICRO - 3 * FEE
    c.certify(signed(CUSTOMER, refund(CUSTOMER, E, 4, 1)), AFTER)
    assert c.balance(CUSTOMER) == cust0 - 45 * MICRO - 2 * FEE
    assert c.balance(PROVIDER) == prov0 + 45 * MICRO - 3 * FEE
    assert c.state.escrows[E].closed and c.state.escrows[E].held == 0
    for n in c.nodes:
        assert n.state.invariant_problems() == []
        assert n.state.root() == c.state.root()
    assert c.state.supply.burned == 5 * FEE
    # the escrow record round-trips (store encoding) and nothing reopens its id
    assert Escrow.decode(e.encode()) == e
    votes, reasons = c.ask(signed(CUSTOMER, open_order(CUSTOMER, pk(PROVIDER), 5, 2, deadline=DEADLINE)), BEFORE)
    assert not votes and set(reasons) == {Reason.CONFLICT}


def test_slash_on_a_witnessed_breach() -> None:
    c = Cluster()
    opened(c, uptime_ppm=990_000, penalty=8 * MICRO, witnesses=tuple(pk(w) for w in WITNESSES), threshold=2)
    c.certify(signed(PROVIDER, collateral(PROVIDER, E, 1, 10 * MICRO, 0)), BEFORE)
    cust = c.balance(CUSTOMER)
    bad = breach(E, 0, 100, 5, WITNESSES[:2])            # 95 % < 99 %
    # before the deadline the phase is the provider's
    _, reasons = c.ask(signed(CUSTOMER, slash(CUSTOMER, E, 2, bad, 1)), BEFORE)
    assert set(reasons) == {Reason.ESCROW_TOO_EARLY}
    c.certify(signed(CUSTOMER, slash(CUSTOMER, E, 2, bad, 1)), AFTER)
    assert c.balance(CUSTOMER) == cust + 8 * MICRO - FEE
    # the same window again, a report within the guarantee, one witness short, a stranger's
    # signatures, after the grace period: refused with the reason, nothing locked
    for report, reason in [(bad, Reason.BAD_EVIDENCE), (breach(E, 1, 100, 1, WITNESSES), Reason.BAD_EVIDENCE),
                           (breach(E, 1, 100, 50, WITNESSES[:1]), Reason.BAD_EVIDENCE),
                           (breach(E, 1, 100, 50, [key(60), key(61)]), Reason.BAD_EVIDENCE)]:
        _, reasons = c.ask(signed(CUSTOMER, slash(CUSTOMER, E, 3, report, 2)), AFTER)
        assert set(reasons) == {reason}
    _, reasons = c.ask(signed(CUSTOMER, slash(CUSTOMER, E, 3, breach(E, 1, 10, 9, WITNESSES), 2)), LATE)
    assert set(reasons) == {Reason.ESCROW_TOO_LATE}
    # the second window takes what is left (2 of the penalty's 8), then the payee closes late
    c.certify(signed(CUSTOMER, slash(CUSTOMER, E, 3, breach(E, 1, 10, 9, WITNESSES[1:]), 2)), AFTER)
    assert c.state.escrows[E].slashed == 10 * MICRO
    _, reasons = c.ask(signed(CUSTOMER, slash(CUSTOMER, E, 4, breach(E, 2, 10, 9, WITNESSES), 3)), AFTER)
    assert set(reasons) == {Reason.BAD_EVIDENCE}         # no collateral left
    _, reasons = c.ask(signed(PROVIDER, refund(PROVIDER, E, 4, 1)), AFTER)
    assert set(reasons) == {Reason.ESCROW_TOO_EARLY}     # the payee waits for the grace period
    prov = c.balance(PROVIDER)
    c.certify(signed(PROVIDER, refund(PROVIDER, E, 4, 1)), LATE)
    assert c.balance(PROVIDER) == prov - FEE              # its collateral is all slashed
    assert c.balance(CUSTOMER) == cust + 10 * MICRO + 100 * MICRO - 2 * FEE
    assert c.state.invariant_problems() == []


def test_bad_escrow_orders_are_refused_with_their_reason() -> None:
    c = Cluster()
    o = open_order(CUSTOMER, pk(PROVIDER), 10 * MICRO, 0, deadline=DEADLINE)
    bad_opens = [
        (dataclasses.replace(o, agreement=b"short"), Reason.BAD_ESCROW),
        (dataclasses.replace(o, payee=pk(CUSTOMER)), Reason.BAD_ESCROW),
        (dataclasses.replace(o, payee=b"x" * 31), Reason.BAD_ADDRESS),
        (dataclasses.replace(o, amount=0), Reason.BAD_AMOUNT),
        (dataclasses.replace(o, amount=2000 * MICRO), Reason.OVERSPEND),
        (dataclasses.replace(o, deadline=int(NOW) - 1), Reason.ESCROW_TOO_LATE),
        (dataclasses.replace(o, grace=0), Reason.BAD_ESCROW),
        (dataclasses.replace(o, uptime_ppm=1_000_001), Reason.BAD_ESCROW),
        (dataclasses.replace(o, witnesses=(pk(key(9)), pk(key(9))), threshold=1), Reason.BAD_ESCROW),
        (dataclasses.replace(o, witnesses=(pk(key(9)),), threshold=2), Reason.BAD_ESCROW),
    ]
    for order, reason in bad_opens:
        votes, reasons = c.ask(signed(CUSTOMER, order), BEFORE)
        assert not votes and set(reasons) == {reason}, (order, reasons)
    assert all(len(n.locks) == 0 for n in c.nodes)
    opened(c)
    other = eid(STRANGER)
    bad_spends = [
        (PROVIDER, collateral(PROVIDER, other, 1, 5, 0), BEFORE, Reason.ESCROW_UNKNOWN),
        (PROVIDER, collateral(PROVIDER, E, 2, 5, 0), BEFORE, Reason.WRONG_SEQUENCE),
        (STRANGER, collateral(STRANGER, E, 1, 5, 0), BEFORE, Reason.NOT_ESCROW_PARTY),
        (PROVIDER, collateral(PROVIDER, E, 1, 5, 0), AFTER, Reason.ESCROW_TOO_LATE),
        (STRANGER, payout(STRANGER, CUSTOMER, E, 1, 5, 0), BEFORE, Reason.NOT_ESCROW_PARTY),
        (PROVIDER, payout(PROVIDER, STRANGER, E, 1, 5, 0), BEFORE, Reason.BAD_DEBIT_NOTE),   # not the customer's
        (PROVIDER, payout(PROVIDER, CUSTOMER, E, 1, 101 * MICRO, 0), BEFORE, Reason.BAD_DEBIT_NOTE),
        (PROVIDER, payout(PROVIDER, CUSTOMER, E, 1, 5, 0), AFTER, Reason.ESCROW_TOO_LATE),
        (CUSTOMER, refund(CUSTOMER, E, 1, 1), BEFORE, Reason.ESCROW_TOO_EARLY),
        (PROVIDER, refund(PROVIDER, E, 1, 0), AFTER, Reason.ESCROW_TOO_EARLY),
        (STRANGER, refund(STRANGER, E, 1, 0), LATE, Reason.NOT_ESCROW_PARTY),
    ]
    for sender, order, now, reason in bad_spends:
        votes, reasons = c.ask(signed(sender, order), now)
        assert not votes and set(reasons) == {reason}, (order, reasons)
    # a note for another escrow inside a payout: the order itself is malformed
    p = payout(PROVIDER, CUSTOMER, E, 1, 5, 0)
    wrong = dataclasses.replace(p, note=DebitNote.sign(CUSTOMER, eid(STRANGER), 5))
    assert set(c.ask(signed(PROVIDER, wrong), BEFORE)[1]) == {Reason.BAD_DEBIT_NOTE}
    # a paid note is idempotent: asking again for it pays nothing more
    c.certify(signed(PROVIDER, payout(PROVIDER, CUSTOMER, E, 1, 40, 0)), BEFORE)
    assert set(c.ask(signed(PROVIDER, payout(PROVIDER, CUSTOMER, E, 2, 40, 1)), BEFORE)[1]) == {Reason.BAD_DEBIT_NOTE}
    assert set(c.ask(signed(PROVIDER, payout(PROVIDER, CUSTOMER, E, 2, 39, 1)), BEFORE)[1]) == {Reason.BAD_DEBIT_NOTE}
    assert RPC_CODE_OF_REASON[Reason.BAD_DEBIT_NOTE] == 217 and RPC_CODE_OF_REASON[Reason.ESCROW_TOO_LATE] == 215
    # the refusals' words give amounts in tokens, as the CLI does (they were micro-units)
    e = c.state.escrows[E]
    assert state_problem(e, payout(PROVIDER, CUSTOMER, E, 2, 101 * MICRO, 1)) == (
        Reason.BAD_DEBIT_NOTE, "the note's 101 due exceeds the escrowed 100")
    assert state_problem(e, payout(PROVIDER, CUSTOMER, E, 2, 40, 1)) == (
        Reason.BAD_DEBIT_NOTE, "the note's 0.00004 due is paid already (0.00004 paid)")


def test_payout_then_refund_with_one_faulty_validator_never_both() -> None:
    """The crux: the payee's payout and the customer's refund spend the same escrow state from
    different senders. Validator 0 is faulty (votes for anything). The payout gathers votes
    before the deadline but its certificate reaches nobody; after the deadline the customer
    asks for the refund at the same escrow sequence: the honest validators that voted for
    the payout refuse (escrow lock), so the refund gets only two votes of four."""
    c = Cluster(faulty=(0,))
    opened(c)
    pay = signed(PROVIDER, payout(PROVIDER, CUSTOMER, E, 1, 60 * MICRO, 0))
    votes, _ = c.ask(pay, BEFORE, who=(0, 1, 2))
    pay_cert = Certificate.from_votes(pay, votes)           # certified, not yet delivered
    back = signed(CUSTOMER, refund(CUSTOMER, E, 1, 1))
    votes, reasons = c.ask(back, AFTER)
    assert len(votes) == 2 and reasons == [Reason.CONFLICT, Reason.CONFLICT]
    # without the escrow lock the refund would have had the honest validators' votes: the
    # state alone does not stop it (the payout is not applied anywhere yet)
    assert all(n.state.order_problem(back.order) is None for n in c.nodes)
    # the payout's certificate applies everywhere; the refund of the next state then works
    c.apply(pay_cert)
    cust = c.balance(CUSTOMER)
    c.certify(signed(CUSTOMER, refund(CUSTOMER, E, 2, 1)), AFTER)
    assert c.balance(CUSTOMER) == cust + 40 * MICRO - FEE
    assert c.state.invariant_problems() == []


def test_a_certificate_for_a_used_escrow_sequence_never_applies() -> None:
    """Had more than f validators been faulty and certified both, replicas apply the first
    and refuse the other (it can never apply): nothing is paid twice."""
    c = Cluster()
    opened(c)
    faulty = c.keys[:3]
    a = certify(signed(PROVIDER, payout(PROVIDER, CUSTOMER, E, 1, 60 * MICRO, 0)), faulty)
    b = certify(signed(CUSTOMER, refund(CUSTOMER, E, 1, 1)), faulty)
    n = c.nodes[3]
    n.replica.receive("x", a)
    acts = n.replica.receive("x", b)
    assert [type(x).__name__ for x in acts] == ["CertificateRefused"]
    assert n.state.escrows[E].paid == 60 * MICRO and not n.state.escrows[E].closed
    assert n.state.invariant_problems() == []


def test_reordered_certificates_wait_for_their_escrow_sequence() -> None:
    """A replica that gets an escrow's certificates in any order applies them in escrow
    sequence order (pending until the escrow's previous order is there) and ends with the
    same root."""
    c = Cluster()
    certs = [opened(c)]
    certs.append(c.certify(signed(PROVIDER, payout(PROVIDER, CUSTOMER, E, 1, 10, 0)), BEFORE))
    certs.append(c.certify(signed(PROVIDER, payout(PROVIDER, CUSTOMER, E, 2, 25, 1)), BEFORE))
    certs.append(c.certify(signed(CUSTOMER, refund(CUSTOMER, E, 3, 1)), AFTER))
    fresh = LedgerState(c.genesis)
    r = Replica(fresh, MemoryHistory())
    for cert in reversed(certs):
        fresh.begin()
        r.receive("x", cert)
        fresh.end()
    assert fresh.applied == 4 and fresh.root() == c.state.root() and not len(r.pending)


def test_escrow_orders_survive_the_wire() -> None:
    orders = [(CUSTOMER, open_order(CUSTOMER, pk(PROVIDER), 5, 0, deadline=DEADLINE, uptime_ppm=1,
                                    penalty=2, witnesses=(pk(key(9)),), threshold=1)),
              (PROVIDER, collateral(PROVIDER, E, 1, 5, 0)), (PROVIDER, payout(PROVIDER, CUSTOMER, E, 1, 5, 0)),
              (CUSTOMER, refund(CUSTOMER, E, 1, 0)),
              (CUSTOMER, slash(CUSTOMER, E, 1, breach(E, 3, 10, 2, WITNESSES), 0))]
    for k, o in orders:
        so = signed(k, o)
        back = decode_signed_order(unpack(pack(so.to_wire())))
        assert back == so and back.tx_id == so.tx_id and back.signature_ok()
        assert so.encoded() == pack(so.to_wire())
    assert AGREEMENT != E and len(E) == 32


@pytest.mark.parametrize("mutate", [
    lambda w: w["order"].__setitem__("escrow", b"x"),
    lambda w: w["order"]["note"].__setitem__("sig", b"s"),
    lambda w: w["order"]["note"].__setitem__("extra", 1),
    lambda w: w["order"].__setitem__("escrow_sequence", "1"),
    lambda w: w["order"].pop("note"),
])
def test_malformed_escrow_orders_are_refused_by_the_decoder(mutate: object) -> None:
    from fognode.node.errors import RemoteProtocolError
    w = signed(PROVIDER, payout(PROVIDER, CUSTOMER, E, 1, 5, 0)).to_wire()
    mutate(w)  # type: ignore[operator]
    with pytest.raises(RemoteProtocolError):
        decode_signed_order(w)


def test_the_escrow_lock_is_rebuilt_from_persisted_locks() -> None:
    c = Cluster()
    opened(c)
    n = c.nodes[1]
    pay = signed(PROVIDER, payout(PROVIDER, CUSTOMER, E, 1, 5, 0))
    assert isinstance(n.ask(pay, BEFORE), Vote)
    from fognode.ledger.validator import LockTable
    reloaded = LockTable()
    for so in n.persisted:
        reloaded.add(so)
    assert reloaded.escrows[(E, 1)] == pay
    reloaded.discard(pay)
    assert (E, 1) not in reloaded.escrows
    rej = n.validator.receive("c", signed(CUSTOMER, refund(CUSTOMER, E, 1, 1)), AFTER)
    assert isinstance(rej[0], SendRejection) and rej[0].rejection.reason is Reason.CONFLICT


def test_inherited_locks_that_split_an_escrow_sequence_freeze_it() -> None:
    """A new validator that inherits (handover) the payout's lock from one old member and the
    refund's from another signs neither, not even as a re-ask of an order whose sender lock it
    holds: either may have been certified by the old committee."""
    c = Cluster()
    opened(c)
    n = c.nodes[2]
    pay = signed(PROVIDER, payout(PROVIDER, CUSTOMER, E, 1, 5, 0))
    back = signed(CUSTOMER, refund(CUSTOMER, E, 1, 1))
    for so in (pay, back):       # as handover.merge adds them
        n.locks.add(so)
    for so, now in ((pay, BEFORE), (back, AFTER)):
        acts = n.validator.receive("c", so, now)
        assert [type(a) for a in acts] == [SendRejection] and acts[0].rejection.reason is Reason.CONFLICT
        assert "frozen" in acts[0].rejection.message
    # the order they were merged in does not matter
    again = Node(c.keys[3], c.genesis)
    again.state = n.state
    for so in (back, pay):
        again.locks.add(so)
    assert again.locks.frozen_escrows == n.locks.frozen_escrows == {(E, 1)}
