"""Receipt scopes: validators sign mints whose receipts share a scope only with one commit (the
first they signed), also after a restart from LevelDB and after a committee handover; sizes
are validated; two commits of one scope are never both certified, in any delivery order."""
from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st
from nacl.signing import SigningKey

from fognode.ledger.actions import SendRejection
from fognode.ledger.errors import Reason
from fognode.ledger.messages import Certificate, MintOrder, SignedOrder, Vote
from fognode.ledger.receipts import EvidenceError, Receipt, VerifyContext, scope_id_of
from fognode.ledger.store import LedgerStore
from fognode.ledger.validator import LockTable, Validator
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields

from .helpers import CHAIN, NOW, Node, key, make_genesis, pk, validator_keys

V = validator_keys()
USERS = [key(i) for i in range(6)]          # funded at genesis: they send the mint orders
ISSUER = SigningKey(bytes([91]) * 32)
BENEFICIARIES = [pk(SigningKey(bytes([70 + i]) * 32)) for i in range(6)]
KIND = "test_split"
SCOPE, OTHER_SCOPE = b"s" * 32, b"t" * 32
A, B = b"A" * 32, b"B" * 32


class SplitVerifier:
    """A receipt kind for these tests: {"claim", "scope", "commit": 32 bytes, "worth": int}."""

    kind = KIND

    def max_reward(self, receipt: Receipt, ctx: VerifyContext) -> int:
        try:
            f = Fields(receipt.body, "test.SplitReceipt")
            f.bytes("claim", size=32)
            f.bytes("scope", size=32)
            f.bytes("commit", size=32)
            worth = f.int("worth", lo=1, hi=10**9)
            f.done()
        except RemoteProtocolError as e:
            raise EvidenceError(str(e)) from None
        return worth


class OtherKind(SplitVerifier):
    kind = "test_other"


def node(v: SigningKey, genesis_kw: dict[str, int] | None = None) -> Node:
    n = Node(v, make_genesis(funded=len(USERS), **(genesis_kw or {})))
    n.validator.receipts.register(SplitVerifier())
    n.validator.receipts.register(OtherKind())
    return n


def receipt(ben: int, commit: bytes, scope: bytes = SCOPE, kind: str = KIND, **body: object) -> Receipt:
    return Receipt.issue(ISSUER, kind, BENEFICIARIES[ben], 0,
                         {"claim": bytes([ben]) * 32, "scope": scope, "commit": commit, "worth": 100,
                          **body})


def mint(sender: int, seq: int, r: Receipt) -> SignedOrder:
    u = USERS[sender]
    return SignedOrder.sign(u, MintOrder(chain=CHAIN, epoch=0, sender=pk(u), sequence=seq, fee=1000,
                                         recipient=r.beneficiary, amount=100, receipt=r))


def refusal(got: Vote | SendRejection) -> tuple[Reason, str]:
    assert isinstance(got, SendRejection), got
    return got.rejection.reason, got.rejection.message


def test_scope_id_names_the_kind_and_the_scope() -> None:
    r = receipt(0, A)
    assert r.scope_id == scope_id_of(KIND, SCOPE) and r.commit == A
    assert receipt(0, A, kind="test_other").scope_id != r.scope_id
    assert receipt(0, A, scope=OTHER_SCOPE).scope_id != r.scope_id
    plain = Receipt.issue(ISSUER, KIND, BENEFICIARIES[0], 0, {"claim": b"c" * 32, "worth": 1})
    assert plain.scope_id is None and plain.commit is None


def test_one_commit_per_scope_and_the_first_one_wins() -> None:
    n = node(V[0])
    assert isinstance(n.ask(mint(0, 0, receipt(0, A))), Vote)
    assert isinstance(n.ask(mint(1, 0, receipt(1, A))), Vote)       # the same split: fine
    reason, msg = refusal(n.ask(mint(2, 0, receipt(2, B))))
    assert reason is Reason.BAD_EVIDENCE
    assert f"scope {SCOPE.hex()[:16]}" in msg and A.hex()[:16] in msg and B.hex()[:16] in msg
    # the refusal held no lock: the sender's sequence is still free for the right split
    assert isinstance(n.ask(mint(2, 0, receipt(2, A))), Vote)
    # another scope, or the same scope bytes under another kind, is another lock
    assert isinstance(n.ask(mint(3, 0, receipt(3, B, scope=OTHER_SCOPE))), Vote)
    assert isinstance(n.ask(mint(4, 0, receipt(4, B, kind="test_other"))), Vote)
    assert n.locks.commits == {scope_id_of(KIND, SCOPE): {A}, scope_id_of(KIND, OTHER_SCOPE): {B},
                               scope_id_of("test_other", SCOPE): {B}}


def test_scope_and_commit_sizes_are_validated() -> None:
    n = node(V[0])
    cases = [
        (receipt(0, b"A" * 16), "32 bytes each"),
        (receipt(0, A, scope=b"s" * 33), "32 bytes each"),
        (receipt(0, A, scope="text"), "32 bytes each"),                 # type: ignore[arg-type]
    ]
    lone = Receipt.issue(ISSUER, KIND, BENEFICIARIES[1], 0, {"claim": b"c" * 32, "scope": SCOPE, "worth": 1})
    cases.append((lone, "come together"))
    for i, (r, words) in enumerate(cases):
        reason, msg = refusal(n.ask(mint(i, 0, r)))
        assert reason is Reason.BAD_EVIDENCE and words in msg, msg
    assert n.locks.commits == {} and len(n.locks) == 0


def test_the_scope_lock_survives_a_restart_from_leveldb(tmp_path: Path) -> None:
    n = node(V[0])
    assert isinstance(n.ask(mint(0, 0, receipt(0, A))), Vote)
    g = n.genesis
    store = LedgerStore(tmp_path / "db", g)
    for so in n.persisted:
        store.persist_lock(so)
    store.close()
    store = LedgerStore(tmp_path / "db", g)
    try:
        locks = store.load_locks()
        assert locks.commits == {scope_id_of(KIND, SCOPE): {A}}
        v = Validator(g, V[0], store.load_state(), locks, n.validator.receipts)
        acts = v.receive("client", mint(1, 0, receipt(1, B)), NOW)
        assert [(a.rejection.reason, "another split" in a.rejection.message)
                for a in acts if isinstance(a, SendRejection)] == [(Reason.BAD_EVIDENCE, True)]
        acts = v.receive("client", mint(1, 0, receipt(1, A)), NOW)
        assert [type(a).__name__ for a in acts] == ["PersistLock", "SendVote"]
    finally:
        store.close()


def test_inherited_locks_with_two_commits_freeze_the_scope_in_any_merge_order() -> None:
    """Old members that split their votes hand over locks of two commits: whatever the order
    in which they are merged (or reloaded), the scope takes no further mint."""
    a, b = mint(0, 0, receipt(0, A)), mint(1, 0, receipt(1, B))
    tables = []
    for order in ([a, b], [b, a]):
        t = LockTable()
        for so in order:
            t.add(so)
        tables.append(t.commits)
    assert tables[0] == tables[1] == {scope_id_of(KIND, SCOPE): {A, B}}
    n = node(V[0])
    n.locks.add(a)
    n.locks.add(b)
    for commit in (A, B):
        reason, msg = refusal(n.ask(mint(2, 0, receipt(2, commit))))
        assert reason is Reason.BAD_EVIDENCE and "frozen" in msg
    assert isinstance(n.ask(mint(2, 0, receipt(2, A, scope=OTHER_SCOPE))), Vote)


def test_a_withheld_split_of_the_old_committee_blocks_another_split_after_the_handover() -> None:
    """A split certified by the old committee and withheld (its mints unapplied) reaches the
    new members as handed-over locks: they refuse another split of the same scope."""
    from .test_handover import NEW, at, hand_over, intake_for, setup, votes_of

    g, old, new, _ = setup()
    for n in old + new:
        n.validator.receipts.register(SplitVerifier())
    r1 = Receipt.issue(ISSUER, KIND, BENEFICIARIES[0], 1, {"claim": b"\0" * 32, "scope": SCOPE,
                                                            "commit": A, "worth": 100})
    x = SignedOrder.sign(key(3), MintOrder(chain=CHAIN, epoch=1, sender=pk(key(3)), sequence=0, fee=1000,
                                           recipient=r1.beneficiary, amount=100, receipt=r1))
    assert len(votes_of(old[:3], x, at(1, 0.9))) == 3        # certified, then withheld
    r2 = Receipt.issue(ISSUER, KIND, BENEFICIARIES[1], 2, {"claim": b"\1" * 32, "scope": SCOPE,
                                                            "commit": B, "worth": 100})
    seq = new[0].state.account(pk(NEW[0])).next_sequence
    y = SignedOrder.sign(NEW[0], MintOrder(chain=CHAIN, epoch=2, sender=pk(NEW[0]), sequence=seq, fee=1000,
                                           recipient=r2.beneficiary, amount=100, receipt=r2))
    for n in new:
        intake = intake_for(n)
        for giver in old[:3]:
            hand_over(giver, n, intake, at(2, 0.2))
        assert intake.complete()
        n.validator.handovers.add(2)
        assert n.locks.commits == {scope_id_of(KIND, SCOPE): {A}}
        reason, msg = refusal(n.ask(y, at(2, 0.2)))
        assert reason is Reason.BAD_EVIDENCE and "another split" in msg
    assert votes_of(new, y, at(2, 0.3)) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([A, B]), st.permutations(range(4))),
                min_size=1, max_size=len(USERS)))
def test_two_commits_of_one_scope_are_never_both_certified(
        asks: list[tuple[bytes, list[int]]]) -> None:
    """A faulty issuer sends mints of two splits of one scope to the validators in any order;
    every certificate that can be formed carries one commit."""
    nodes = [node(v) for v in V]
    certified: set[bytes] = set()
    for i, (commit, who) in enumerate(asks):
        so = mint(i, 0, receipt(i, commit))
        votes = [v for v in (nodes[j].ask(so) for j in who) if isinstance(v, Vote)]
        if len(votes) >= 3:
            Certificate.from_votes(so, votes[:3])
            certified.add(commit)
    assert len(certified) <= 1
