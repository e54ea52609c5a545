"""LedgerState.root() is memoised per accumulator value (node.info asks for it on every call):
after every kind of change (a certificate applied in place, a staging copy installed, a
journaled apply rolled back, a restored copy) the memoised root equals the root recomputed
from scratch (the accumulator summed again over the whole state, hashed by a copy with no memo)."""
from __future__ import annotations

import hashlib

from hypothesis import given, settings, strategies as st

from fognode.ledger.amounts import MICRO
from fognode.ledger.messages import Certificate, Vote
from fognode.ledger.state import LedgerState

from .helpers import Node, key, make_genesis, pk, transfer, validator_keys

V = validator_keys()
USERS = [key(i) for i in range(4)]


def _recomputed_root(s: LedgerState) -> bytes:
    """The root from scratch: the accumulator summed again, hashed by a fresh copy (no memo)."""
    assert s.recompute_accumulator() == s.accumulator
    fresh = s.staging()
    assert fresh._root_memo is None
    return fresh.root()


def _check(s: LedgerState) -> None:
    assert s.root() == _recomputed_root(s)
    assert s.root() is s.root()        # memoised: the same object until the accumulator moves


step = st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 300 * MICRO), st.sampled_from(
    ["apply", "install", "rollback"]))


def _run(steps: list[tuple[int, int, int, str]]) -> set[str]:
    """Apply the transfers of `steps` each its way, checking the root after each; returns the
    kinds of change that applied a certificate."""
    done: set[str] = set()
    g = make_genesis()
    nodes = [Node(v, g) for v in V]
    s = LedgerState(g)
    _check(s)
    for sender, recipient, amount, how in steps:
        so = transfer(USERS[sender], pk(USERS[recipient]), amount, s.account(pk(USERS[sender])).next_sequence)
        votes = [v for v in (n.ask(so) for n in nodes) if isinstance(v, Vote)]
        if len(votes) < 3:
            continue
        cert = Certificate.from_votes(so, votes[:3])
        if s.blocked(cert) is not None:
            continue
        before = s.root()
        if how == "apply":
            s.apply(cert)
        elif how == "install":
            staged = s.staging()
            s.install(staged.apply(cert))
        else:                                       # applied under a journal, then undone
            s.begin()
            s.apply(cert)
            _check(s)
            s.rollback()
            assert s.root() == before
        _check(s)
        if how != "rollback":
            for n in nodes:                          # keep the validators' replicas in step
                n.replica.receive("client", cert)
        done.add(how)
    restored = LedgerState.restore(g, s.accounts.items(), s.supply, s.minted_by_epoch, s.used_receipts,
                                   s.applied, s.accumulator, s.stake_deltas, s.escrows.items(), s.pools.items())
    assert restored.root() == s.root()
    # the root is what it always was: BLAKE2b-256 of the chain's prefix and the accumulator
    assert s.root() == hashlib.blake2b(b"fognode-ledger-root/1" + g.chain_id.encode()
                                       + s.accumulator.to_bytes(64, "big"), digest_size=32).digest()
    return done


@settings(max_examples=30, deadline=None)
@given(st.lists(step, min_size=1, max_size=10))
def test_memoised_root_equals_the_recomputed_root_after_every_change(
        steps: list[tuple[int, int, int, str]]) -> None:
    _run(steps)


def test_each_kind_of_change_applies_and_keeps_the_root_exact() -> None:
    steps = [(0, 1, 5 * MICRO, "apply"), (1, 2, 3 * MICRO, "install"), (2, 0, MICRO, "rollback"),
             (0, 2, 2 * MICRO, "install"), (1, 0, MICRO, "apply")]
    assert _run(steps) == {"apply", "install", "rollback"}
