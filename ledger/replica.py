"""The replica: verifies certificates, applies them in per-sender order, keeps the rest pending.

`Replica.receive(peer, cert)` returns `Commit` actions (one per certificate applied, in
order; applying one may release pending ones), or `Queued`, or `CertificateRefused`, or
`ConflictingCertificates` (two certificates for one sequence: more than f faulty validators).
Duplicates of applied certificates are recognised by (sender, sequence, tx id) before any
signature is checked, so gossip echoes and overlapping sync batches cost no verification.

A certificate of an epoch this replica holds no committee certificate for, whose signers are
not a quorum of the committee it would inherit, may be signed by a rotated committee whose
certificate has not arrived yet (committee.py): it waits (`Queued(..., "committee")`, bounded)
and `committees_changed()` checks it again once committee certificates were added.
"""
from __future__ import annotations

from typing import Iterable, Protocol as TypingProtocol

from fognode.ledger.actions import (CertificateRefused, Commit, ConflictingCertificates, Queued,
                                    ReplicaAction)
from fognode.ledger.committee import FIRST_ROTATED_EPOCH
from fognode.ledger.errors import CertificateRejected, Reason
from fognode.ledger.genesis import FeeDestination
from fognode.ledger.messages import Certificate, MintOrder, TransferOrder
from fognode.ledger.pending import PendingPool
from fognode.ledger.rewardpool_orders import POOL_ORDERS
from fognode.ledger.certcheck import verify_certificate
from fognode.ledger.state import LedgerState


AWAIT_COMMITTEE_MAX = 1000


class History(TypingProtocol):
    def tx_at(self, sender: bytes, sequence: int) -> bytes | None: ...


class MemoryHistory:
    """(sender, sequence) -> tx id, in memory (tests, simulations)."""

    def __init__(self) -> None:
        self.txs: dict[tuple[bytes, int], bytes] = {}

    def tx_at(self, sender: bytes, sequence: int) -> bytes | None:
        return self.txs.get((sender, sequence))


class Replica:
    def __init__(self, state: LedgerState, history: History, pending: PendingPool | None = None,
                 *, verify_sender: bool = True) -> None:
        self.state = state
        self.genesis = state.genesis
        self.history = history
        self.pending = pending if pending is not None else PendingPool()
        self.verify_sender = verify_sender
        self._recent: dict[tuple[bytes, int], bytes] = {}   # applied, maybe not yet committed
        self.refused: dict[Reason, int] = {}
        self.duplicates = 0
        self.awaiting: dict[bytes, tuple[str, Certificate]] = {}   # tx id -> (peer, cert): committee unknown
        self.awaiting_max = AWAIT_COMMITTEE_MAX

    def tx_at(self, sender: bytes, sequence: int) -> bytes | None:
        return self._recent.get((sender, sequence)) or self.history.tx_at(sender, sequence)

    def committed(self, keys: Iterable[tuple[bytes, int]] | None = None) -> None:
        """The adapter wrote the Commits of these (sender, sequence) keys (default: every
        Commit so far); forget them from the uncommitted index (the store has them now)."""
        if keys is None:
            self._recent.clear()
        else:
            for k in keys:
                self._recent.pop(k, None)

    def rolled_back(self, keep: Iterable[tuple[bytes, int]] | None = None) -> None:
        """The adapter could not write the Commits since the last `committed()` (or those not
        in `keep`, the uncommitted keys before the failed call) and rolled the state back
        (service.py): forget them. Pending certificates they had released are gone from the
        pool too; sync brings them again."""
        if keep is None:
            self._recent.clear()
        else:
            kept = set(keep)
            for k in [k for k in self._recent if k not in kept]:
                del self._recent[k]

    def uncommitted(self) -> list[tuple[bytes, int]]:
        """The (sender, sequence) keys applied but not yet `committed()`."""
        return list(self._recent)

    def receive(self, peer: str, cert: Certificate) -> list[ReplicaAction]:
        o = cert.order.order
        if o.chain != self.genesis.chain_id:
            return self._refuse(peer, cert, Reason.WRONG_CHAIN, f"certificate is for chain {o.chain!r}")
        acct = self.state.account(o.sender)
        if o.sequence < acct.next_sequence:
            known = self.tx_at(o.sender, o.sequence)
            if known == cert.tx_id:
                self.duplicates += 1
                return []
            try:
                verify_certificate(cert, self.state.committee_for(o.epoch), verify_sender=True)
            except CertificateRejected as e:
                return self._refuse(peer, cert, e.reason, e.message)
            return [ConflictingCertificates(known or b"", cert)]
        waiting = self.pending.get(o.sender, o.sequence)
        if waiting is not None and waiting.tx_id == cert.tx_id:
            self.duplicates += 1
            return []
        try:
            verify_certificate(cert, self.state.committee_for(o.epoch), verify_sender=self.verify_sender)
        except CertificateRejected as e:
            if (e.reason in (Reason.NON_COMMITTEE_SIGNER, Reason.NO_QUORUM) and o.epoch >= FIRST_ROTATED_EPOCH
                    and self.state.committees.certified(o.epoch) is None
                    and (cert.tx_id in self.awaiting or len(self.awaiting) < self.awaiting_max)):
                self.awaiting[cert.tx_id] = (peer, cert)
                return [Queued(cert.tx_id, "committee")]
            return self._refuse(peer, cert, e.reason, e.message)
        if waiting is not None:   # two valid certificates for one pending sequence
            return [ConflictingCertificates(waiting.tx_id, cert)]
        why = self.state.blocked(cert)
        if why is None:
            return self._apply_and_drain(cert)   # blocked() was just None
        if why == "invalid":
            return self._refuse(peer, cert, Reason.MALFORMED,
                                "certificate can never apply (its quorum signed an invalid order)")
        self.pending.add(cert, acct.next_sequence)
        return [Queued(cert.tx_id, why)]

    def committees_changed(self) -> list[ReplicaAction]:
        """Check the certificates waiting for a committee again (call after committee
        certificates were added to the state's book)."""
        waiting = list(self.awaiting.values())
        self.awaiting.clear()
        out: list[ReplicaAction] = []
        for peer, cert in waiting:
            out.extend(self.receive(peer, cert))
        return out

    def _refuse(self, peer: str, cert: Certificate, reason: Reason, message: str) -> list[ReplicaAction]:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return [CertificateRefused(cert.tx_id, reason, message, peer)]

    def waiting_on_pool(self, pool: bytes) -> list[bytes]:
        """Senders whose next pending certificate is an order of reward pool `pool`."""
        out = []
        for k in self.pending.senders():
            p = self.pending.get(k, self.state.account(k).next_sequence)
            if p is not None and isinstance(p.order.order, POOL_ORDERS) and p.order.order.pool == pool:
                out.append(k)
        return out

    def _apply_and_drain(self, cert: Certificate) -> list[ReplicaAction]:
        out: list[ReplicaAction] = []
        work = [cert]          # each entry has just passed blocked() is None
        while work:
            c = work.pop()
            delta = self.state.apply_unblocked(c)
            self._recent[c.order.key] = c.tx_id
            out.append(Commit(delta))
            o = c.order.order
            # who might now be able to apply a pending certificate: the sender (next
            # sequence), the recipient (funds), the escrow's parties (escrow sequence, funds),
            # fee-receiving validators (funds)
            candidates = [o.sender]
            if isinstance(o, (TransferOrder, MintOrder)):
                candidates.append(o.recipient)
            if delta.escrow is not None:     # the next order of the escrow may be the other party's
                candidates.extend((delta.escrow[1].customer, delta.escrow[1].payee))
            if delta.pool is not None:       # payouts waiting for the pool, a close for its payouts
                candidates.extend(self.waiting_on_pool(delta.pool[0]))
            if o.fee and self.genesis.fee_destination is FeeDestination.VALIDATORS:
                candidates.extend(self.state.committee_for(o.epoch).members)
            if not len(self.pending):
                continue
            for k in candidates:
                nxt = self.state.account(k).next_sequence
                self.pending.drop_below(k, nxt)
                p = self.pending.get(k, nxt)
                if p is not None and self.state.blocked(p) is None:
                    self.pending.pop(k, nxt)
                    work.append(p)
        return out
