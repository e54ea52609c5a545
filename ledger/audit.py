"""`ledger.verify`'s deep check: does the stored state follow from the stored history?

`audit_store(store)` replays this replica's apply log (o/<position> -> t/<tx id>, in position
order) from genesis into a fresh `LedgerState` (with the stored committee certificates) and
compares the result with what the store holds: every account record, supply, minted per
epoch, paid claims, stake per epoch, escrow and reward pool records, apply count and root accumulator. It also checks the
log itself: positions 1..n without gaps, each certificate record present and naming its
position, the (sender, sequence) index pointing at it, and each certificate applicable when
its turn comes. Each disagreement is one line naming the key and both values (at most
`MAX_PROBLEMS`, then a count of the rest).

What it does not check: signatures (they were verified when the certificates were applied;
re-verifying every quorum would cost a signature check per vote), and the history index h/
beyond the certificates it lists. Replaying applies the certificates in the replica's own
order, which is how they were applied, so a healthy store replays to byte-identical state.
It reads one consistent view of the store (`src`: a plyvel snapshot, so the service can run it
in a worker thread while the replica keeps applying) and costs one decode and one apply per
certificate of the log: about 0.25 ms each (20,000 certificates: 5 s).
"""
from __future__ import annotations

from typing import Any

from fognode.ledger.address import encode_address
from fognode.ledger.errors import StoreError
from fognode.ledger.messages import decode_certificate
from fognode.ledger.state import Account, LedgerState
from fognode.ledger.store import LedgerStore
from fognode.node.errors import RemoteProtocolError

MAX_PROBLEMS = 50


def _describe(a: Account | None) -> str:
    if a is None:
        return "no record"
    return (f"balance {a.balance}, next sequence {a.next_sequence}, bonded {a.bonded}, "
            f"unbonding {list(a.unbonding)}, head {a.head.hex()[:16]}")


def replay(store: LedgerStore, problems: list[str], src: Any = None) -> LedgerState:
    """The state the stored apply log gives from genesis; log problems are appended."""
    db: Any = store.db if src is None else src
    fresh = LedgerState(store.genesis)
    fresh.committees.load(store.committee_certificates(db))
    expected = 1
    for k, tx in db.iterator(prefix=b"o/"):
        pos = int.from_bytes(k[2:], "big")
        if pos != expected:
            problems.append(f"apply log: positions {expected}..{pos - 1} are missing (o/ records)")
        expected = pos + 1
        rec = db.get(b"t/" + tx)
        if rec is None:
            problems.append(f"apply log position {pos}: the certificate of tx {tx.hex()} is missing (t/ record)")
            continue
        if int.from_bytes(rec[:8], "big") != pos:
            problems.append(f"apply log position {pos}: the certificate record of tx {tx.hex()} says position "
                            f"{int.from_bytes(rec[:8], 'big')}")
        try:
            cert = decode_certificate(store._decode(rec[8:], "certificate record"))
        except (RemoteProtocolError, StoreError) as e:
            problems.append(f"apply log position {pos}: the certificate of tx {tx.hex()} is corrupt: {e}")
            continue
        if cert.tx_id != tx:
            problems.append(f"apply log position {pos}: the record under tx {tx.hex()} holds tx {cert.tx_id.hex()}")
        o = cert.order.order
        indexed = db.get(b"x/" + o.sender + o.sequence.to_bytes(8, "big"))
        if indexed != tx:
            problems.append(f"apply log position {pos}: the index x/ of ({encode_address(o.sender)}, {o.sequence}) "
                            f"holds {indexed.hex() if indexed else 'nothing'}, not tx {tx.hex()}")
        why = fresh.blocked(cert)
        if why is not None:
            problems.append(f"apply log position {pos}: tx {tx.hex()} ({encode_address(o.sender)} sequence "
                            f"{o.sequence}) does not apply on the replayed state ({why})")
            continue
        fresh.apply_unblocked(cert)
    return fresh


def compare(stored: LedgerState, fresh: LedgerState, log_length: int, what: str,
            other: str = "the history gives") -> list[str]:
    """Where `stored` (described as `what`) differs from `fresh` (described as `other`)."""
    out: list[str] = []
    for key in sorted(set(stored.accounts) | set(fresh.accounts)):
        a, b = stored.accounts.get(key), fresh.accounts.get(key)
        if a != b:
            out.append(f"account {encode_address(key)}: {what} {_describe(a)}; {other} {_describe(b)}")
    if stored.supply != fresh.supply:
        out.append(f"supply: {what} {stored.supply}; {other} {fresh.supply}")
    if stored.minted_by_epoch != fresh.minted_by_epoch:
        out.append(f"minted per epoch: {what} {stored.minted_by_epoch}; {other} {fresh.minted_by_epoch}")
    for claim in sorted(stored.used_receipts ^ fresh.used_receipts):
        out.append(f"receipt claim {claim.hex()}: paid in {'the first' if claim in stored.used_receipts else 'the second'} "
                   f"of ({what}; {other})")
    if {e: d for e, d in stored.stake_deltas.items() if d} != {e: d for e, d in fresh.stake_deltas.items() if d}:
        out.append(f"stake per epoch: {what} {stored.stake_deltas}; {other} {fresh.stake_deltas}")
    for key in sorted(set(stored.escrows) | set(fresh.escrows)):
        e, f = stored.escrows.get(key), fresh.escrows.get(key)
        if e != f:
            out.append(f"escrow {key.hex()}: {what} {e.view() if e else 'no record'}; "
                       f"{other} {f.view() if f else 'no record'}")
    for key in sorted(set(stored.pools) | set(fresh.pools)):
        p, q = stored.pools.get(key), fresh.pools.get(key)
        if p != q:
            out.append(f"reward pool {key.hex()}: {what} {p.view() if p else 'no record'}; "
                       f"{other} {q.view() if q else 'no record'}")
    if stored.applied != log_length:
        out.append(f"apply count: {what} {stored.applied}; the apply log has {log_length} entries")
    if stored.applied != fresh.applied:
        out.append(f"apply count: {what} {stored.applied}; {other} {fresh.applied}")
    if stored.accumulator != fresh.accumulator:
        out.append(f"state root: {what} {stored.root().hex()}; {other} {fresh.root().hex()}")
    return out


def audit_store(store: LedgerStore, src: Any = None) -> list[str]:
    """Every disagreement between the stored state and the replayed stored history (read
    from `src`, a snapshot of the store's db, or the db itself)."""
    db: Any = store.db if src is None else src
    problems: list[str] = []
    stored = store.load_state(db)
    fresh = replay(store, problems, db)
    log_length = sum(1 for _ in db.iterator(prefix=b"o/", include_value=False))
    problems += compare(stored, fresh, log_length, "the store holds")
    if len(problems) > MAX_PROBLEMS:
        problems = problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more"]
    return problems
