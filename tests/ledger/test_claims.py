"""Receipt claims: two receipts claiming the same thing for the same beneficiary pay once — at
the validator (claim-id locks, also after a restart), at the replica (applied claim ids, in
LevelDB and after reload), in any delivery order. A receipt without a claim is paid once by
its receipt id."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st
from nacl.signing import SigningKey

from fognode.ledger.actions import CertificateRefused, Commit
from fognode.ledger.errors import Reason
from fognode.ledger.messages import Certificate, MintOrder, SignedOrder, Vote
from fognode.ledger.pending import PendingPool
from fognode.ledger.receipts import EvidenceError, Receipt, VerifyContext, claim_id_of
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.state import LedgerState
from fognode.ledger.store import LedgerStore
from fognode.ledger.validator import Validator
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields

from .helpers import CHAIN, Node, certify, key, make_genesis, pk, validator_keys

V = validator_keys()
USERS = [key(i) for i in range(3)]          # funded at genesis: they send the mint orders
ISSUERS = [SigningKey(bytes([90 + i]) * 32) for i in range(3)]
BENEFICIARIES = [pk(SigningKey(bytes([80 + i]) * 32)) for i in range(3)]
KIND = "test_claim"


class ClaimVerifier:
    """A receipt kind for these tests: {"claim": 32 bytes, "worth": int}, worth `worth`."""

    kind = KIND

    def max_reward(self, receipt: Receipt, ctx: VerifyContext) -> int:
        try:
            f = Fields(receipt.body, "test.ClaimReceipt")
            f.bytes("claim", size=32)
            worth = f.int("worth", lo=1, hi=10**9)
            f.done()
        except RemoteProtocolError as e:
            raise EvidenceError(str(e)) from None
        return worth


def node(v: SigningKey) -> Node:
    n = Node(v, make_genesis())
    n.validator.receipts.register(ClaimVerifier())
    return n


def receipt(issuer: int, beneficiary: int, claim: int, worth: int = 1000) -> Receipt:
    return Receipt.issue(ISSUERS[issuer], KIND, BENEFICIARIES[beneficiary], 0,
                         {"claim": bytes([claim]) * 32, "worth": worth})


def mint(sender: int, seq: int, r: Receipt) -> SignedOrder:
    u = USERS[sender]
    return SignedOrder.sign(u, MintOrder(chain=CHAIN, epoch=0, sender=pk(u), sequence=seq, fee=1000,
                                         recipient=r.beneficiary, amount=int(r.body.get("worth", 1)), receipt=r))


def test_claim_id_names_kind_beneficiary_and_claim() -> None:
    a, b = receipt(0, 0, 1), receipt(1, 0, 1, worth=7)
    assert a.receipt_id != b.receipt_id and a.claim_id == b.claim_id
    assert a.claim_id == claim_id_of(KIND, BENEFICIARIES[0], bytes([1]) * 32)
    assert receipt(0, 1, 1).claim_id != a.claim_id and receipt(0, 0, 2).claim_id != a.claim_id
    claimless = Receipt.issue(V[0], KIND, BENEFICIARIES[0], 0, {"worth": 60})
    assert claimless.claim_id == claimless.receipt_id


def test_validator_signs_one_mint_per_claim(tmp_path: Path) -> None:
    n = node(V[0])
    first = mint(0, 0, receipt(0, 0, 1))
    assert isinstance(n.ask(first), Vote)
    # another issuer (a fallback aggregator), another sender, another amount: same claim
    second = mint(1, 0, receipt(1, 0, 1, worth=900))
    rej = n.ask(second)
    assert not isinstance(rej, Vote) and rej.rejection.reason == Reason.RECEIPT_USED
    assert "claim" in rej.rejection.message
    # the same claim for another beneficiary is another claim
    assert isinstance(n.ask(mint(1, 0, receipt(1, 1, 1))), Vote)
    # a malformed claim is bad evidence
    bad = Receipt.issue(ISSUERS[0], KIND, BENEFICIARIES[2], 0, {"claim": b"x" * 16, "worth": 5})
    rej = n.ask(mint(2, 0, bad))
    assert not isinstance(rej, Vote) and rej.rejection.reason == Reason.BAD_EVIDENCE
    assert "32 bytes" in rej.rejection.message
    # the claim lock survives a restart: it is rebuilt from the persisted vote locks
    g = make_genesis()
    store = LedgerStore(tmp_path / "db", g)
    for so in n.persisted:
        store.persist_lock(so)
    store.close()
    store = LedgerStore(tmp_path / "db", g)
    locks = store.load_locks()
    assert first.order.receipt.claim_id in locks.receipts
    v = Validator(g, V[0], store.load_state(), locks, n.validator.receipts)
    acts = v.receive("client", mint(2, 0, receipt(2, 0, 1)), 1_800_000_010.0)
    assert [a.rejection.reason for a in acts if hasattr(a, "rejection")] == [Reason.RECEIPT_USED]
    store.close()


def _two_claims() -> tuple[Certificate, Certificate]:
    """Two certificates for one claim from two senders, as only a faulty quorum could make."""
    a = certify(mint(0, 0, receipt(0, 0, 1, worth=1000)), V[:3])
    b = certify(mint(1, 0, receipt(1, 0, 1, worth=900)), V[:3])
    return a, b


def _apply(store: LedgerStore, r: Replica, certs: list[Certificate]) -> list[Any]:
    out: list[Any] = []
    for c in certs:
        acts = r.receive("t", c)
        store.commit([a.delta for a in acts if isinstance(a, Commit)])
        r.committed()
        out += acts
    return out


def test_replica_pays_a_claim_once_in_either_order_and_after_reload(tmp_path: Path) -> None:
    g = make_genesis()
    a, b = _two_claims()
    for name, order in (("ab", [a, b]), ("ba", [b, a])):
        store = LedgerStore(tmp_path / name, g)
        r = Replica(store.load_state(), store)
        acts = _apply(store, r, order)
        refused = [x for x in acts if isinstance(x, CertificateRefused)]
        assert [x.tx_id for x in refused] == [order[1].tx_id]
        first = order[0].order.order
        assert isinstance(first, MintOrder)
        assert r.state.supply.minted == first.amount
        assert r.state.account(BENEFICIARIES[0]).balance == first.amount
        assert r.state.invariant_problems() == []
        root = r.state.root()
        store.close()
        store = LedgerStore(tmp_path / name, g)
        s = store.load_state()
        assert s.root() == root and a.order.order.receipt.claim_id in s.used_receipts
        r2 = Replica(s, store)
        again = r2.receive("t", order[1])
        assert [type(x) for x in again] == [CertificateRefused] and s.supply.minted == first.amount
        store.close()


step = st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=10), st.data())
def test_claims_pay_once_and_any_delivery_order_gives_the_same_root(
        steps: list[tuple[int, int, int, int]], data: st.DataObject) -> None:
    """(sender, issuer, beneficiary, claim) mints through an honest committee: colliding claims
    are refused by the validators, and any delivery order and duplication of the certificates
    that were made gives the same root, with each claim paid at most once."""
    nodes = [node(v) for v in V]
    certs: list[Certificate] = []
    for i, (s, iss, ben, claim) in enumerate(steps):
        seq = nodes[0].state.account(pk(USERS[s])).next_sequence
        so = mint(s, seq, receipt(iss, ben, claim, worth=100 + i))
        votes = [v for v in (n.ask(so) for n in nodes) if isinstance(v, Vote)]
        if len(votes) < 3:
            continue
        cert = Certificate.from_votes(so, votes[:3])
        for n in nodes:
            n.replica.receive("client", cert)
        certs.append(cert)
    claims = [c.order.order.receipt.claim_id for c in certs]
    assert len(claims) == len(set(claims)) == len({(b, c) for _, _, b, c in steps})
    ref = nodes[0]
    delivery = data.draw(st.lists(st.sampled_from(certs), max_size=2 * len(certs)) if certs else st.just([]))
    delivery = data.draw(st.permutations(delivery + certs))
    r = Replica(LedgerState(ref.genesis), MemoryHistory(), PendingPool(max_entries=1000))
    for c in delivery:
        r.receive("gossip", c)
    assert r.state.root() == ref.state.root() and r.state.applied == len(certs)
    assert r.state.used_receipts == set(claims) and r.state.invariant_problems() == []
