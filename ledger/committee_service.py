"""The trio adapter of committee rotation (rules in committee.py, cores in rotation.py).

Carried over the ledger's existing channels:
- order stream: {"v", "committee": body} -> {"v", "committee_vote": vote} or
  {"v", "committee_refusal": {"v", "epoch", "reason", "message"}}; the lock is written (sync)
  before the vote is returned.
- certificate topic: {"v", "certs": [], "committees": [certificate...]} when a node assembled
  a committee certificate;
- sync stream: a request may carry "committees_after" (an epoch); the reply then carries
  "committees", the certified committees after it, applied before the transaction certificates.

`run()` wakes at each signing time (committee.signing_time) and, when this node is in the
committee that certifies the next one and no certificate is held yet, proposes its body to the
other members, collects votes into a certificate, stores it and gossips it; a member answering
"not yet" is synced with (both ways, as it may be the one behind) and asked again after
3 x `retry_interval`. Any node may assemble: members do, and everyone stores what they receive.

It reaches the engine only through `RotationHost` (the ledger service satisfies it).

Storage failures (service.py): a committee lock that cannot be written is taken out of the
signer's table again and no vote is returned; committee certificates that cannot be written
are taken out of the state's book again (it is rebuilt from the store). Both raise
LedgerStorageFailed, which stops the ledger.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

import trio
from prometheus_client import Counter

from fognode.ledger.committee import (CommitteeBody, CommitteeBook, CommitteeCertificate,
                                      decode_committee_certificate, decode_committee_vote, signing_time)
from fognode.ledger.errors import CertificateRejected, LedgerStorageFailed, Reason
from fognode.ledger.rotation import (CommitteeCollector, CommitteeSigner, PersistCommitteeLock,
                                     SendCommitteeRefusal, SendCommitteeVote, proposal)
from fognode.ledger.ports import EngineView, Requester, SyncTrigger
from fognode.ledger.store import LedgerStore
from fognode.node.errors import FognodeError, RemoteProtocolError
from fognode.node.peerid import peer_id_from_pubkey
from fognode.node.wire import Fields, pack

log = logging.getLogger("fognode.ledger.committee")
MAX_COMMITTEES_PER_MESSAGE = 64


class RotationHost(EngineView, Requester, SyncTrigger, Protocol):
    """What committee rotation needs of the ledger engine (service.py)."""

    @property
    def store(self) -> LedgerStore: ...
    @property
    def m_refused(self) -> Counter: ...

    def retry_awaiting_committee(self) -> None:
        """Committee certificates were added: certificates waiting for them may apply now."""


class CommitteeRotation:
    def __init__(self, svc: RotationHost, topic: str) -> None:
        self.svc = svc
        self.topic = topic
        self.state = svc.state
        self.signer = CommitteeSigner(svc.ctx.identity, svc.state, svc.store.committee_locks())
        self.refused: dict[Reason, int] = {}

    # -- receiving certificates ---------------------------------------------------------------

    def add(self, peer: str, certs: list[CommitteeCertificate]) -> list[CommitteeCertificate]:
        """Verify, keep and persist (one synced batch) committee certificates; returns those
        added. Refused ones are logged and counted (the relayer's fault)."""
        added: list[CommitteeCertificate] = []
        for c in sorted(certs, key=lambda c: c.epoch):
            try:
                added.extend(self.state.committees.add(c))
            except CertificateRejected as e:
                self.refused[e.reason] = self.refused.get(e.reason, 0) + 1
                self.svc.m_refused.labels(e.reason.value).inc()
                log.warning("refused committee certificate of epoch %d from %s: %s", c.epoch, peer, e)
        if added:
            try:
                self.svc.store.put_committees(added)
            except LedgerStorageFailed:
                self._reload_book()
                raise
            for c in added:
                log.info("committee of epoch %d certified: %d members, %d votes", c.epoch, len(c.members),
                         len(c.votes))
            self.svc.retry_awaiting_committee()
        if self.state.committees.waiting:
            self.svc.sync_soon(peer)
        return added

    def _reload_book(self) -> None:
        """The state's committee book as stored (after a failed write of new certificates)."""
        book = CommitteeBook(self.state.genesis)
        book.load(self.svc.store.committee_certificates())
        book.waiting = self.state.committees.waiting
        self.state.committees = book

    def decode_list(self, raw: list[Any], peer: str) -> list[CommitteeCertificate]:
        if len(raw) > MAX_COMMITTEES_PER_MESSAGE:
            raise RemoteProtocolError(f"ledger: {len(raw)} committee certificates in one message", peer=peer)
        return [decode_committee_certificate(c, peer=peer) for c in raw]

    def serve(self, after: int) -> list[Any]:
        return [c.to_wire() for c in self.state.committees.after(after, MAX_COMMITTEES_PER_MESSAGE)]

    # -- signing (validator side) ---------------------------------------------------------------

    def sign(self, peer: str, body: CommitteeBody) -> dict[str, Any]:
        """Run the signer core; the lock is persisted before the reply exists."""
        reply: dict[str, Any] = {}
        for a in self.signer.receive(peer, body, self.svc.ctx.clock()):
            if isinstance(a, PersistCommitteeLock):
                try:
                    self.svc.store.persist_committee_lock(a.body)
                except LedgerStorageFailed:
                    self.signer.locks.pop(a.body.epoch, None)    # memory = disk; no vote leaves
                    raise
            elif isinstance(a, SendCommitteeVote):
                reply = {"v": 1, "committee_vote": a.vote.to_wire()}
            elif isinstance(a, SendCommitteeRefusal):
                if a.reason is Reason.NOT_YET and peer != self.svc.ctx.peer_id:
                    self.svc.sync_soon(peer)      # the proposer may know certificates we lack
                reply = {"v": 1, "committee_refusal": {"v": 1, "epoch": a.epoch, "reason": a.reason.value,
                                                       "message": a.message}}
        return reply

    # -- proposing (any member of the certifying committee) ----------------------------------------

    async def run(self) -> None:
        g = self.svc.genesis
        while True:
            now = self.svc.ctx.clock()
            body = proposal(self.state, now)
            if body is not None and self.svc.me in self.state.committee_for(body.epoch - 1):
                if await self.certify(body) is None:       # members behind sync meanwhile
                    await trio.sleep(self.svc.s.retry_interval * 3)
                continue
            nxt = signing_time(g, g.epoch_at(now) + 1)
            if nxt <= now:
                nxt = signing_time(g, g.epoch_at(now) + 2)
            await trio.sleep(max(0.05, min(nxt - now, self.svc.s.retry_interval * 5)))

    async def certify(self, body: CommitteeBody) -> CommitteeCertificate | None:
        """One round: ask every member of the old committee for its vote on `body`. Returns
        the certificate (stored and gossiped) or None (not enough votes yet)."""
        old = self.state.committee_for(body.epoch - 1)
        coll = CommitteeCollector(body, old)
        self._take(coll, self.svc.me, self.sign(self.svc.ctx.peer_id, body))
        request = {"v": 1, "committee": body.to_wire()}
        others = [v for v in old.members if v != self.svc.me]
        if coll.certificate is None and others:
            async with trio.open_nursery() as nursery:
                for v in others:
                    nursery.start_soon(self._ask, v, request, coll)
        cert = coll.certificate
        if cert is None:
            log.info("committee of epoch %d: %d of %d members signed so far; refusals: %s", body.epoch,
                     len(coll.votes), len(old.members),
                     {v.hex()[:16]: f"{r.value}: {m}" for v, (r, m) in coll.refusals.items()})
            return None
        self.add(self.svc.ctx.peer_id, [cert])
        try:
            await self.svc.ctx.overlay.publish(self.topic, pack({"v": 1, "certs": [], "committees": [cert.to_wire()]}))
        except FognodeError as e:
            log.warning("could not publish the committee certificate of epoch %d: %s (peers will sync it)",
                        cert.epoch, e)
        return cert

    def _take(self, coll: CommitteeCollector, validator: bytes, reply: dict[str, Any]) -> None:
        peer = peer_id_from_pubkey(validator)
        f = Fields(reply, "ledger.CommitteeReply", versions={1}, peer=peer)
        if f.has("committee_vote"):
            vote = decode_committee_vote(f.map("committee_vote"), peer=peer)
            f.done()
            if vote.validator != validator:
                raise RemoteProtocolError("ledger.CommitteeReply: vote signed by another validator", peer=peer)
            coll.add_vote(vote)
            return
        r = Fields(f.map("committee_refusal"), "ledger.CommitteeRefusal", versions={1}, peer=peer)
        r.int("epoch", lo=0, hi=2**40)
        reason_s = r.str("reason", max_len=32)
        message = r.str("message", max_len=1024)
        r.done()
        f.done()
        try:
            reason = Reason(reason_s)
        except ValueError:
            raise RemoteProtocolError(f"ledger.CommitteeRefusal: unknown reason {reason_s!r}", peer=peer) from None
        coll.add_refusal(validator, reason, message)
        if reason is Reason.NOT_YET and validator != self.svc.me:
            self.svc.sync_soon(peer)      # we may be the one behind; the member syncs from us too

    async def _ask(self, validator: bytes, request: dict[str, Any], coll: CommitteeCollector) -> None:
        peer = peer_id_from_pubkey(validator)
        try:
            raw = await self.svc.request(validator, peer, request)
            self._take(coll, validator, raw)
        except (FognodeError, trio.TooSlowError) as e:
            log.debug("member %s did not answer the committee proposal: %s", peer, e)
