"""The trio adapter of the lock handover at committee changes (rules and cores in handover.py).

Carried over the order stream, like committee proposals:
    {"v", "handover": epoch, "after"?: [sender, sequence]}
 -> {"v", "handover": page} or {"v", "handover_refusal": {"v", "reason", "message"}}

`run()` watches for a committee change this node is a new member of: once the old committee
has sealed (`committee.seal_time`), it asks every old member for its pages, merges them (the
inherited locks are persisted like its own votes), syncs each answering member's apply log up
to the page's position, and when members with more than 2/3 of the old stake are covered it
records the handover as done (persisted; the validator then signs orders of the new
committee). Members that do not answer are asked again every 2 x `retry_interval`.
It reaches the engine only through `HandoverHost` (the ledger service satisfies it).
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

import trio

from fognode.ledger.actions import PersistLock, ReportFork
from fognode.ledger.committee import seal_time
from fognode.ledger.errors import LedgerStorageFailed, Reason
from fognode.ledger.handover import HandoverIntake, HandoverPage, HandoverRefused, handover_page
from fognode.ledger.messages import ForkProof
from fognode.ledger.ports import EngineView, Requester, SyncTrigger
from fognode.ledger.store import LedgerStore
from fognode.ledger.validator import Validator
from fognode.node.errors import FognodeError, RemoteProtocolError
from fognode.node.peerid import peer_id_from_pubkey
from fognode.node.wire import Fields

log = logging.getLogger("fognode.ledger.handover")
MAX_PAGE_FRAME = 1 << 20


class HandoverHost(EngineView, Requester, SyncTrigger, Protocol):
    """What the lock handover needs of the ledger engine (service.py)."""

    @property
    def store(self) -> LedgerStore: ...
    @property
    def validator(self) -> Validator: ...

    async def sync_with(self, peer: str) -> int:
        """Pull `peer`'s apply log now (sync.py); certificates applied."""

    def cursor(self, peer: str) -> int:
        """How far this replica has read `peer`'s apply log."""

    def report_fork(self, proof: ForkProof, peer: str, *, certified: bool) -> None:
        """Store, count, log and publish a fork proof."""


class LockHandover:
    def __init__(self, svc: HandoverHost) -> None:
        self.svc = svc
        self.intakes: dict[int, HandoverIntake] = {}

    # -- old member: answer requests -----------------------------------------------------------

    def serve(self, peer: str, f: Fields) -> dict[str, Any]:
        """One page of this validator's unresolved locks for the requested change (sealing the
        epochs before it), or a refusal."""
        epoch = f.int("handover", lo=1, hi=2**40)
        after: tuple[bytes, int] | None = None
        if f.has("after"):
            raw_after = f.list("after", max_len=2)
            if (len(raw_after) != 2 or not isinstance(raw_after[0], bytes) or len(raw_after[0]) != 32
                    or isinstance(raw_after[1], bool) or not isinstance(raw_after[1], int) or raw_after[1] < 0):
                raise RemoteProtocolError("ledger.HandoverRequest: after must be [32-byte sender, sequence]",
                                          peer=peer)
            after = (raw_after[0], raw_after[1])
        try:
            page = handover_page(self.svc.validator, epoch, after, self.svc.ctx.clock(), self.svc.store.log_length())
        except HandoverRefused as e:
            if e.reason is Reason.NOT_YET and peer != self.svc.ctx.peer_id:
                self.svc.sync_soon(peer)       # it may hold the committee certificate we lack
            return {"v": 1, "handover_refusal": {"v": 1, "reason": e.reason.value, "message": e.message}}
        return {"v": 1, "handover": page.to_wire()}

    # -- new member: collect ---------------------------------------------------------------------

    def due(self, now: float) -> int | None:
        """The committee change whose locks this node still needs, once the old committee
        has sealed; None if there is none."""
        svc = self.svc
        g, st, v = svc.genesis, svc.state, svc.validator
        current = g.epoch_at(now)
        era = st.committees.era_start(current)
        if era == 0 or era in v.handovers or svc.me not in st.committee_for(current) or now < seal_time(g, era):
            return None
        return era

    def status(self) -> dict[str, Any] | None:
        """For ledger.info: the handover this node is waiting for, if any."""
        era = self.due(self.svc.ctx.clock())
        if era is None:
            return None
        intake = self.intakes.get(era)
        old = self.svc.state.committee_for(era - 1)
        return {"epoch": era, "stake": intake.stake() if intake else old.stake_of(self.svc.me),
                "needed": old.quorum_stake, "missing": len(intake.missing()) if intake else len(old.members)}

    async def run(self) -> None:
        while True:
            era = self.due(self.svc.ctx.clock())
            if era is not None and await self.collect(era):
                continue
            await trio.sleep(self.svc.s.retry_interval * 2)

    async def collect(self, era: int) -> bool:
        """One attempt at the handover of the change at `era`; True once it is complete."""
        svc = self.svc
        old = svc.state.committee_for(era - 1)
        intake = self.intakes.setdefault(era, HandoverIntake(era, old, svc.me))
        if svc.me in old:
            svc.validator.seal(era)     # its own locks count: it signs no earlier order any more
        missing = intake.missing()
        if missing and not intake.complete():
            with trio.move_on_after(max(10.0, svc.s.request_timeout * 4)):
                async with trio.open_nursery() as nursery:
                    for w in missing:
                        nursery.start_soon(self._from, intake, w)
        if not intake.complete():
            log.info("lock handover into epoch %d: %d of the %d stake needed from the old committee so far",
                     era, intake.stake(), old.quorum_stake)
            return False
        svc.store.put_handover_done(era)          # the merged locks were persisted first
        svc.validator.handovers.add(era)
        self.intakes.pop(era, None)
        log.info("lock handover into epoch %d complete: %d inherited locks from %d old members", era,
                 intake.merged, len(intake.synced))
        return True

    async def _from(self, intake: HandoverIntake, giver: bytes) -> None:
        svc = self.svc
        peer = peer_id_from_pubkey(giver)
        try:
            if giver not in intake.positions:
                after: tuple[bytes, int] | None = None
                while True:
                    request: dict[str, Any] = {"v": 1, "handover": intake.epoch}
                    if after is not None:
                        request["after"] = [after[0], after[1]]
                    raw = await svc.request(giver, peer, request, max_reply=MAX_PAGE_FRAME)
                    f = Fields(raw, "ledger.HandoverReply", versions={1}, peer=peer)
                    if f.has("handover_refusal"):
                        r = Fields(f.map("handover_refusal"), "ledger.HandoverRefusal", versions={1}, peer=peer)
                        reason, message = r.str("reason", max_len=32), r.str("message", max_len=1024)
                        r.done()
                        f.done()
                        log.debug("old member %s refused the handover into epoch %d: %s: %s", peer, intake.epoch,
                                  reason, message)
                        if reason == Reason.NOT_YET.value:
                            svc.sync_soon(peer)
                        return
                    page = HandoverPage.decode(f.map("handover", max_len=8), epoch=intake.epoch, after=after,
                                               peer=peer)
                    f.done()
                    acts = intake.merge(svc.validator, giver, page, peer)
                    for i, a in enumerate(acts):
                        if isinstance(a, PersistLock):
                            try:
                                svc.store.persist_lock(a.order)
                            except LedgerStorageFailed:
                                # merge() put the page's locks in the table; those not written leave it
                                for b in acts[i:]:
                                    if isinstance(b, PersistLock):
                                        svc.validator.locks.discard(b.order)
                                raise
                        elif isinstance(a, ReportFork):
                            svc.report_fork(a.proof, peer, certified=False)
                    if not page.more:
                        intake.pages_done(giver, page.position)
                        break
                    after = page.locks[-1].key
            await svc.sync_with(peer)
            cursor = svc.cursor(peer)
            if not intake.log_synced(giver, cursor):
                log.debug("handover into epoch %d: %s's log read to %d of %d", intake.epoch, peer, cursor,
                          intake.positions.get(giver, -1))
        except (FognodeError, trio.TooSlowError) as e:
            log.debug("old member %s did not hand its locks over: %s", peer, e)
