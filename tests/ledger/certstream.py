"""A deterministic stream of valid certificates (same bytes in every process: Ed25519
signatures are deterministic), for store, crash and benchmark tests."""
from __future__ import annotations

from fognode.ledger.genesis import Genesis
from fognode.ledger.messages import Certificate
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.state import LedgerState

from .helpers import certify, key, make_genesis, pk, transfer, validator_keys


def make_stream(n: int, *, users: int = 8) -> list[Certificate]:
    """n transfers among `users` accounts (all funded at genesis: STREAM_GENESIS), 3-of-4 votes."""
    vals = validator_keys()
    ks = [key(i) for i in range(users)]
    seq = [0] * users
    out = []
    for i in range(n):
        s = i % users
        r = (s + 1 + i // users) % users
        if r == s:
            r = (r + 1) % users
        so = transfer(ks[s], pk(ks[r]), 1000 + i % 97, seq[s])
        seq[s] += 1
        out.append(certify(so, (vals[i % 4:] + vals[:i % 4])[:3]))
    return out


def stream_genesis(users: int = 8) -> Genesis:
    return make_genesis(funded=users)


def reference_root(certs: list[Certificate]) -> tuple[bytes, LedgerState]:
    r = Replica(LedgerState(stream_genesis()), MemoryHistory())
    for c in certs:
        r.receive("ref", c)
    return r.state.root(), r.state
