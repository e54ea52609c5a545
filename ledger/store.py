"""The replica on disk: LevelDB (plyvel), one write batch with sync=True per commit.

A commit writes everything one or more applied certificates changed — accounts (balance,
sequence, stake), supply counters, minted per epoch, paid receipt claims, the state-root
accumulator, escrow and reward pool records, the apply log, the (sender, sequence) index, the per-account history index and
the certificate itself — in a single atomic batch, so a crash (even `kill -9`) leaves the old
state or the new one, never a mix. Validator locks are durable before the vote leaves (see
validator.py). The running ledger writes certificates, validator locks, in-flight orders and
sync cursors through its group-commit writer (writer.py), off the event loop: the `*_into`
methods fill its batches. The plain methods write one batch each on the caller's thread (rare
records: committees, handovers, fork proofs; tools and tests).

Keys (big-endian integers, so LevelDB's order is numeric order):
    m/chain                 chain id + genesis digest (refuse another chain's data dir)
    a/<pubkey>              account record
    s/supply s/acc s/applied  supply counters, root accumulator (64 bytes), apply count
    e/<epoch:8>             minted in that epoch
    r/<claim id>            receipt claim already paid (the receipt id for claimless receipts)
    E/<escrow id>           escrow record (escrow.py `Escrow.encode`: a versioned msgpack list)
    P/<pool id>             reward pool record (rewardpool.py `RewardPool.encode`: a versioned msgpack list)
    x/<sender><seq:8>       tx id applied at (sender, sequence)
    t/<tx id>               apply index (8 bytes) + the certificate's canonical msgpack
    o/<index:8>             tx id applied at that position of this replica's log (sync source)
    h/<pubkey><index:8>     tx id in that account's history
    L/<sender><seq:8>       order this validator signed for (sender, sequence)
    f/<sender><seq:8>       fork proof
    w/<sender>              this node's own order in flight for that sender
    p/<peer id>             position reached in that peer's apply log (sync cursor)
    k/<epoch:8><pubkey>     net stake bonded by that account with orders of that epoch
    c/<epoch:8>             certified committee of that epoch (committee.py)
    C/<epoch:8>             committee body this validator signed for that epoch (its lock)
    H/<epoch:8>             this validator holds the locks handed over at that committee change

Write failures (disk full, I/O error, read-only filesystem). Every write goes through
`_writing`: a plyvel error becomes `LedgerStorageFailed` (a node.errors.FatalStorageError)
whose message names the store's path, what was being written and the cause ("No space left
on device" is called out as a full disk). The first failure is sticky: `failure` is set, the
`on_failure` callback (the ledger service) is told once, and every later write raises at once
without touching LevelDB. A failed batch is not applied (LevelDB skips the memtable when its
log write fails), so reads keep returning the last committed state; the caller must undo its
own in-memory changes (service.py) and stop. Reads are not wrapped: a read error is raised as
plyvel raises it.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import plyvel

from fognode.ledger.committee import (CommitteeBody, CommitteeCertificate, decode_committee_body,
                                      decode_committee_certificate)
from fognode.ledger.errors import LedgerStorageFailed, StoreError
from fognode.ledger.escrow import Escrow
from fognode.ledger.rewardpool import RewardPool
from fognode.ledger.genesis import Genesis
from fognode.ledger.messages import (Certificate, ForkProof, SignedOrder, decode_certificate,
                                     decode_fork_proof, decode_signed_order)
from fognode.ledger.state import Account, Delta, LedgerState, Supply
from fognode.ledger.validator import LockTable
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import unpack
from fognode.node.wire import digest, pack

MAX_RECORD = 1 << 20


def _u8(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _cause(e: BaseException) -> str:
    """plyvel's message (it carries bytes) or an OSError's text."""
    arg = e.args[0] if e.args else e
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)


class LedgerStore:
    """Open (or initialise from `genesis`) the replica at `path`. Raises StoreError if the
    directory belongs to another chain; LedgerStorageFailed if it cannot be opened or
    initialised (no space, I/O error, another process holds it). `on_failure` is called once,
    with the error, at the first failed write (see the module docstring)."""

    def __init__(self, path: Path, genesis: Genesis,
                 on_failure: Callable[[LedgerStorageFailed], None] | None = None) -> None:
        self.path = Path(path)
        self.genesis = genesis
        self.failure: LedgerStorageFailed | None = None
        self._on_failure = on_failure
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.db = plyvel.DB(str(self.path), create_if_missing=True)
        except (OSError, plyvel.Error) as e:      # plyvel.IOError is an OSError
            raise self._failed("open", e) from e
        meta = pack({"chain": genesis.chain_id, "genesis": digest(pack(genesis.to_dict()))})
        have = self.db.get(b"m/chain")
        if have is None:
            try:
                self._init(genesis, meta)
            except LedgerStorageFailed:
                self.db.close()
                raise
        elif have != meta:
            chain = self._decode(have, "chain record").get("chain")
            self.db.close()
            raise StoreError(f"{self.path} holds the ledger of chain {chain!r} with another genesis; "
                             f"this node's genesis is chain {genesis.chain_id!r} (wrong data dir?)")

    def _failed(self, what: str, e: BaseException) -> LedgerStorageFailed:
        """The (sticky) failure for a write of `what` that raised `e`; tells `on_failure` once."""
        if self.failure is None:
            cause = _cause(e)
            hint = ("the disk is full: free space on it, then restart the node" if "No space left" in cause
                    else "check the disk, then restart the node")
            self.failure = LedgerStorageFailed(
                f"the ledger store at {self.path} could not be written ({what}): {cause}; {hint}",
                path=str(self.path), cause=cause)
            if self._on_failure is not None:
                self._on_failure(self.failure)
        f = self.failure
        return LedgerStorageFailed(str(f), path=f.path, cause=f.cause)

    def write_failed(self, what: str, e: BaseException) -> LedgerStorageFailed:
        """The (sticky) failure for a write of `what` that raised `e` outside `_writing`
        (writer.py writes its groups in a worker thread; call this on the trio thread)."""
        return self._failed(what, e)

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Run one write; a plyvel error (or any earlier failure) raises LedgerStorageFailed."""
        if self.failure is not None:
            raise self._failed(what, self.failure)
        try:
            yield
        except plyvel.Error as e:
            raise self._failed(what, e) from e

    def _init(self, genesis: Genesis, meta: bytes) -> None:
        s = LedgerState(genesis)
        with self._writing("genesis state"), self.db.write_batch(transaction=True, sync=True) as wb:
            for k, a in s.accounts.items():
                wb.put(b"a/" + k, a.encode())
            wb.put(b"s/supply", s.supply.encode())
            wb.put(b"s/acc", s.accumulator.to_bytes(64, "big"))
            wb.put(b"s/applied", pack(0))
            wb.put(b"m/chain", meta)

    def close(self) -> None:
        if not self.db.closed:
            self.db.close()

    @staticmethod
    def _decode(data: bytes, what: str) -> Any:
        try:
            return unpack(data, max_size=MAX_RECORD, what=what)
        except RemoteProtocolError as e:
            raise StoreError(f"corrupt {what} in the ledger store: {e}") from None

    # -- state ----------------------------------------------------------------------------

    def load_state(self, src: Any = None) -> LedgerState:
        """The replica state as stored (`src`: a plyvel snapshot to read from; default the db)."""
        db = self.db if src is None else src
        accounts = [(k[2:], Account.decode(v)) for k, v in db.iterator(prefix=b"a/")]
        minted = {int.from_bytes(k[2:], "big"): self._decode(v, "minted record")
                  for k, v in db.iterator(prefix=b"e/")}
        receipts = {k[2:] for k in db.iterator(prefix=b"r/", include_value=False)}
        supply = Supply.decode(self._need(b"s/supply", db))
        acc = int.from_bytes(self._need(b"s/acc", db), "big")
        applied = self._decode(self._need(b"s/applied", db), "apply count")
        stake: dict[int, dict[bytes, int]] = {}
        for k, v in db.iterator(prefix=b"k/"):
            stake.setdefault(int.from_bytes(k[2:10], "big"), {})[k[10:]] = self._decode(v, "stake record")
        escrows = []
        for k, v in db.iterator(prefix=b"E/"):
            try:
                escrows.append((k[2:], Escrow.decode(v)))
            except (RemoteProtocolError, ValueError, TypeError) as e:
                raise StoreError(f"corrupt escrow record {k[2:].hex()}: {e}") from None
        pools = []
        for k, v in db.iterator(prefix=b"P/"):
            try:
                pools.append((k[2:], RewardPool.decode(v)))
            except (RemoteProtocolError, ValueError, TypeError) as e:
                raise StoreError(f"corrupt reward pool record {k[2:].hex()}: {e}") from None
        state = LedgerState.restore(self.genesis, accounts, supply, minted, receipts, applied, acc, stake, escrows,
                                    pools)
        state.committees.load(self.committee_certificates(db))
        return state

    def _need(self, key: bytes, src: Any = None) -> bytes:
        v = (self.db if src is None else src).get(key)
        if v is None:
            raise StoreError(f"the ledger store at {self.path} lacks {key.decode()} (corrupt)")
        return v

    def commit(self, deltas: Sequence[Delta], applied_at: float | None = None) -> None:
        """Write the deltas (in apply order) in one atomic, synced batch; `applied_at` (this
        replica's clock, Unix seconds) is kept per transaction for wallet history: local
        bookkeeping, not part of the replicated state or its root."""
        if not deltas:
            return
        with self._writing(f"{len(deltas)} certificates"), self.db.write_batch(transaction=True, sync=True) as wb:
            self.commit_into(wb, deltas, applied_at)

    @staticmethod
    def commit_into(wb: Any, deltas: Sequence[Delta], applied_at: float | None = None) -> None:
        """Add what `commit` writes to the write batch `wb` (writer.py: group commit)."""
        if deltas:
            for d in deltas:
                for k, a in d.accounts:
                    if a.is_empty:
                        wb.delete(b"a/" + k)
                    else:
                        wb.put(b"a/" + k, a.encode())
                if d.minted_epoch is not None:
                    wb.put(b"e/" + _u8(d.minted_epoch[0]), pack(d.minted_epoch[1]))
                if d.claim_id is not None:
                    wb.put(b"r/" + d.claim_id, b"")
                if d.escrow is not None:
                    wb.put(b"E/" + d.escrow[0], d.escrow[1].encode())
                if d.pool is not None:
                    wb.put(b"P/" + d.pool[0], d.pool[1].encode())
                tx = d.cert.tx_id
                sender, seq = d.cert.order.key
                wb.put(b"x/" + sender + _u8(seq), tx)
                wb.put(b"t/" + tx, _u8(d.index) + d.cert.encoded())
                wb.put(b"o/" + _u8(d.index), tx)
                if applied_at is not None:
                    wb.put(b"T/" + tx, pack(float(applied_at)))
                for p in d.parties:
                    wb.put(b"h/" + p + _u8(d.index), tx)
                if d.stake_delta is not None:
                    epoch, staker, net = d.stake_delta
                    wb.put(b"k/" + _u8(epoch) + staker, pack(net))
            last = deltas[-1]
            wb.put(b"s/supply", last.supply.encode())
            wb.put(b"s/acc", last.accumulator.to_bytes(64, "big"))
            wb.put(b"s/applied", pack(last.index))

    # -- queries --------------------------------------------------------------------------

    def tx_at(self, sender: bytes, sequence: int) -> bytes | None:
        return self.db.get(b"x/" + sender + _u8(sequence))

    def certificate(self, tx_id: bytes) -> tuple[int, Certificate] | None:
        """(apply index, certificate) of an applied transaction, or None."""
        v = self.db.get(b"t/" + tx_id)
        if v is None:
            return None
        try:
            return int.from_bytes(v[:8], "big"), decode_certificate(self._decode(v[8:], "certificate record"))
        except RemoteProtocolError as e:
            raise StoreError(f"corrupt certificate record {tx_id.hex()}: {e}") from None

    def applied_at(self, tx_id: bytes) -> float | None:
        """When this replica applied the transaction (Unix seconds), if it recorded it."""
        v = self.db.get(b"T/" + tx_id)
        if v is None:
            return None
        t = self._decode(v, "apply time")
        return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None

    def certificate_bytes(self, tx_id: bytes) -> bytes | None:
        """The certificate's stored encoding (`Certificate.encoded()`, = pack(to_wire())), or
        None: for a message that carries it as it is, without a decode and a new pack."""
        v = self.db.get(b"t/" + tx_id)
        return None if v is None else v[8:]

    def log_length(self) -> int:
        return int(self._decode(self._need(b"s/applied"), "apply count"))

    def log_after(self, position: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` (position, certificate encoding as stored: `certificate_bytes`) of this
        replica's log after `position`."""
        out: list[tuple[int, bytes]] = []
        for k, tx in self.db.iterator(start=b"o/" + _u8(max(0, position) + 1), stop=b"o0"):
            cert = self.certificate_bytes(tx)
            if cert is None:
                raise StoreError(f"the apply log names transaction {tx.hex()}, which has no certificate record")
            out.append((int.from_bytes(k[2:], "big"), cert))
            if len(out) >= limit:
                break
        return out

    def history(self, account: bytes, limit: int = 50) -> list[tuple[int, Certificate]]:
        """The account's latest transactions, newest first."""
        out = []
        for _k, tx in self.db.iterator(prefix=b"h/" + account, reverse=True):
            c = self.certificate(tx)
            if c is not None:
                out.append(c)
            if len(out) >= limit:
                break
        return out

    # -- validator locks and fork proofs -----------------------------------------------------

    def persist_lock(self, order: SignedOrder) -> None:
        """Durably record the vote for `order` (sync) — call before sending the vote."""
        with self._writing("validator lock"):
            self.lock_into(self.db, order, sync=True)

    @staticmethod
    def lock_into(wb: Any, order: SignedOrder, **kw: Any) -> None:
        """Add the lock record of `order` to `wb` (a write batch, or the db with sync=True)."""
        sender, seq = order.key
        wb.put(b"L/" + sender + _u8(seq), order.encoded(), **kw)     # = pack(order.to_wire())

    def load_locks(self) -> LockTable:
        t = LockTable()
        for _k, v in self.db.iterator(prefix=b"L/"):
            try:
                t.add(decode_signed_order(self._decode(v, "lock record")))
            except RemoteProtocolError as e:
                raise StoreError(f"corrupt lock record: {e}") from None
        return t

    # -- committees (committee.py) ----------------------------------------------------------------

    def put_committees(self, certs: Sequence[CommitteeCertificate]) -> None:
        """Persist verified committee certificates in one synced batch."""
        if not certs:
            return
        with self._writing("committee certificates"), self.db.write_batch(transaction=True, sync=True) as wb:
            for c in certs:
                wb.put(b"c/" + _u8(c.epoch), pack(c.to_wire()))

    def committee_certificates(self, src: Any = None) -> list[CommitteeCertificate]:
        out = []
        for _k, v in (self.db if src is None else src).iterator(prefix=b"c/"):
            try:
                out.append(decode_committee_certificate(self._decode(v, "committee certificate")))
            except RemoteProtocolError as e:
                raise StoreError(f"corrupt committee certificate record: {e}") from None
        return out

    def persist_committee_lock(self, body: CommitteeBody) -> None:
        """Durably record the committee body this validator signs for its epoch (sync)."""
        with self._writing("committee lock"):
            self.db.put(b"C/" + _u8(body.epoch), pack(body.to_wire()), sync=True)

    def committee_locks(self) -> dict[int, CommitteeBody]:
        out = {}
        for k, v in self.db.iterator(prefix=b"C/"):
            try:
                out[int.from_bytes(k[2:], "big")] = decode_committee_body(self._decode(v, "committee lock"))
            except RemoteProtocolError as e:
                raise StoreError(f"corrupt committee lock record: {e}") from None
        return out

    def put_handover_done(self, epoch: int) -> None:
        """Record (sync) that the old committee's locks of the change at `epoch` are merged;
        call after the locks themselves were persisted."""
        with self._writing("handover record"):
            self.db.put(b"H/" + _u8(epoch), b"", sync=True)

    def handovers_done(self) -> set[int]:
        return {int.from_bytes(k[2:], "big") for k in self.db.iterator(prefix=b"H/", include_value=False)}

    # -- sync cursors (how far into each peer's apply log this replica has read) ---------------

    def cursor(self, peer: str) -> int:
        v = self.db.get(b"p/" + peer.encode())
        return 0 if v is None else int.from_bytes(v, "big")

    def set_cursor(self, peer: str, position: int) -> None:
        with self._writing("sync cursor"):
            self.cursor_into(self.db, peer, position)

    @staticmethod
    def cursor_into(wb: Any, peer: str, position: int) -> None:
        """Add the sync cursor of `peer` to `wb` (a write batch, or the db)."""
        wb.put(b"p/" + peer.encode(), _u8(position))

    # -- this node's own orders in flight (so a restart re-drives them, never replaces them) ----

    def put_inflight(self, order: SignedOrder) -> None:
        with self._writing("order in flight"):
            self.inflight_into(self.db, order, sync=True)

    @staticmethod
    def inflight_into(wb: Any, order: SignedOrder, **kw: Any) -> None:
        """Add the in-flight record of `order` to `wb` (a write batch, or the db with sync=True)."""
        wb.put(b"w/" + order.order.sender, order.encoded(), **kw)     # = pack(order.to_wire())

    def inflight(self, sender: bytes) -> SignedOrder | None:
        v = self.db.get(b"w/" + sender)
        if v is None:
            return None
        try:
            return decode_signed_order(self._decode(v, "in-flight order"))
        except RemoteProtocolError as e:
            raise StoreError(f"corrupt in-flight order record: {e}") from None

    def inflight_orders(self) -> list[SignedOrder]:
        """Every wallet's order in flight on this node (one per sender at most)."""
        out = []
        for _k, v in self.db.iterator(prefix=b"w/"):
            try:
                out.append(decode_signed_order(self._decode(v, "in-flight order")))
            except RemoteProtocolError as e:
                raise StoreError(f"corrupt in-flight order record: {e}") from None
        return out

    def clear_inflight(self, sender: bytes) -> None:
        with self._writing("order in flight"):
            self.clear_inflight_into(self.db, sender, sync=True)

    @staticmethod
    def clear_inflight_into(wb: Any, sender: bytes, **kw: Any) -> None:
        """Add the removal of `sender`'s in-flight record to `wb` (a write batch, or the db)."""
        wb.delete(b"w/" + sender, **kw)

    def put_fork(self, proof: ForkProof) -> bool:
        """Keep a fork proof (first one per (sender, sequence)); True if it is new."""
        sender, seq = proof.first.key
        key = b"f/" + sender + _u8(seq)
        if self.db.get(key) is not None:
            return False
        with self._writing("fork proof"):
            self.db.put(key, pack(proof.to_wire()), sync=True)
        return True

    def forks(self) -> list[ForkProof]:
        return [decode_fork_proof(self._decode(v, "fork proof")) for _k, v in self.db.iterator(prefix=b"f/")]

    def account_keys(self) -> Iterable[bytes]:
        return (k[2:] for k in self.db.iterator(prefix=b"a/", include_value=False))
