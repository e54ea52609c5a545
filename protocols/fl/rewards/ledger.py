"""FL's use of the ledger, when one runs on this node: teach it to price "fl_update"
receipts, opt in with the node's default wallet as the reward address, fund a paid session's
reward pool from that wallet when this node starts it (`fund`), pay each accepted
participant's share of a round's reward from the pool (`pay`, on `PayRewards`), and close the
pools this node must close once their time comes (`settle_pools`; funding.py says who and
when)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import trio
from nacl.signing import SigningKey

from fognode.ledger.address import encode_address
from fognode.ledger.amounts import format_amount
from fognode.ledger.api import LedgerApi, ledger_api
from fognode.ledger.errors import LEDGER_INSUFFICIENT_FUNDS, OrderRejected, WalletError
from fognode.ledger.rpc_params import order_errors
from fognode.ledger.submit import NotCertified
from fognode.node.errors import FognodeError, RpcError
from fognode.node.faults import LogRateLimiter
from fognode.protocols.fl.actions import PayRewards
from fognode.protocols.fl.errors import FL_BAD_REQUEST
from fognode.protocols.fl.messages import SessionAnnouncement
from fognode.protocols.fl.metrics import FlMetrics
from fognode.protocols.fl.rewards.funding import POOL_GRACE, close_due, pool_deadline
from fognode.protocols.fl.rewards.receipts import LEDGER_KIND, VERIFIER, issue_ledger_receipts, reward_of
from fognode.protocols.fl.session.core import FlCore

log = logging.getLogger("fognode.fl")

SETTLE_INTERVAL = 2.0      # seconds between looks for pools to close
CLOSE_RETRY = 15.0         # seconds before a pool whose close failed is tried again


class LedgerLink:
    def __init__(self, ctx: Any, core: FlCore, metrics: FlMetrics) -> None:
        self.ctx = ctx
        self.core = core
        self.metrics = metrics
        self._verifier_registered = False
        self._close_after: dict[bytes, float] = {}     # pool -> no close attempt before (trio time)
        self._close_log = LogRateLimiter(interval=60.0)

    @property
    def verifier_registered(self) -> bool:
        return self._verifier_registered

    def _now(self) -> float:
        return float(self.ctx.clock())

    def register_verifier(self) -> bool:
        """Teach the ledger (if it runs here) to price "fl_update" receipts."""
        ledger = ledger_api(self.ctx.services)
        if ledger is None or self._verifier_registered:
            return self._verifier_registered
        ledger.register_receipt_verifier(VERIFIER)
        self._verifier_registered = True
        self._use_wallet(ledger)
        return True

    def _use_wallet(self, ledger: LedgerApi) -> None:
        """Opt in with the node's default ledger wallet as the address FL rewards go to (the
        identity key stays the payee if the node has no wallet)."""
        try:
            wallet = ledger.default_wallet()
        except WalletError as e:
            log.info("fl: rewards go to this node's identity key: %s", e)
            return
        self.core.facts = dataclasses.replace(self.core.facts, wallet=wallet)

    async def fund(self, ann: SessionAnnouncement, key: SigningKey) -> SessionAnnouncement:
        """The announcement of a session this node starts, funded: for a reward budget, name
        this node's default wallet as the funder, re-sign, and lock the budget into the
        session's reward pool (funding.py). A session without a budget is returned as is.
        Raises RpcError: no ledger here or no wallet (500), the wallet short of the budget plus
        the fee (202, naming the shortfall), the pool order refused or not certified (2xx)."""
        budget = ann.spec.reward_budget
        if budget <= 0:
            return ann
        ledger = ledger_api(self.ctx.services)
        if ledger is None:
            raise RpcError(FL_BAD_REQUEST, "a session with a reward budget is funded from this node's ledger "
                                           "wallet, and no ledger runs on this node")
        try:
            wallet = ledger.default_wallet()
        except WalletError as e:
            raise RpcError(FL_BAD_REQUEST, f"a session with a reward budget is funded from this node's "
                                           f"default wallet: {e}") from None
        need, have = budget + ledger.fee, ledger.balance(wallet)
        if have < need:
            raise RpcError(LEDGER_INSUFFICIENT_FUNDS,
                           f"the reward budget is funded from wallet {encode_address(wallet)} when the session "
                           f"starts: it needs {format_amount(need)} tokens (budget {format_amount(budget)} plus "
                           f"the fee) and holds {format_amount(have)}: {format_amount(need - have)} short",
                           {"needed": need, "balance": have, "short": need - have})
        funded = dataclasses.replace(ann, funder=wallet).signed(key)
        with order_errors():
            cert = await ledger.open_pool(funded.session_id, LEDGER_KIND, budget, pool_deadline(funded), POOL_GRACE)
        log.info("fl: session %s funded: %s tokens locked in reward pool %s until %d", funded.session_id.hex()[:16],
                 format_amount(budget), cert.order.order.pool.hex()[:16], pool_deadline(funded))
        return funded

    async def pay(self, a: PayRewards) -> None:
        """Pay each accepted participant's share of the round reward from the session's
        reward pool (pool payouts carrying the "fl_update" receipts as evidence; this node's
        wallet pays the fees). A session that names no funder pays nothing."""
        ledger = ledger_api(self.ctx.services)
        rnd, sid = a.receipt.round, a.receipt.session_id
        if ledger is None:
            log.info("fl: no ledger on this node: round %d of %s is not paid", rnd, sid.hex()[:16])
            return
        if not a.announcement.funder:
            log.info("fl: session %s was not funded: round %d is not paid", sid.hex()[:16], rnd)
            return
        self.register_verifier()
        from fognode.ledger.rewards import Allocation

        receipts = issue_ledger_receipts(self.ctx.identity, a.receipt, a.announcement, a.plan,
                                         ledger.epoch_at(self._now()))
        allocations = [Allocation(r, reward_of(r)) for r in receipts]
        pool = ledger.pool_id(a.announcement.funder, sid)
        try:
            txs = await ledger.pay_from_pool(pool, allocations)
        except FognodeError as e:   # not certified, no wallet, storage: log, keep going
            log.warning("fl: rewards of round %d not paid: %s", rnd, e)
            return
        self.metrics.rewards.inc(sum(x.amount for x in allocations))
        log.info("fl: round %d rewards paid in %d pool payouts", rnd, len(txs))

    async def settle_pools(self) -> None:
        """Forever: every SETTLE_INTERVAL seconds, close the reward pools this node must close
        now (funding.py `close_due`); a failed close is logged and tried again later."""
        while True:
            await trio.sleep(SETTLE_INTERVAL)
            ledger = ledger_api(self.ctx.services)
            if ledger is not None:
                for pool in self._due(ledger):
                    await self._close(ledger, pool)

    def _due(self, ledger: LedgerApi) -> list[bytes]:
        try:
            wallet: bytes | None = ledger.default_wallet()
        except WalletError:
            wallet = None
        anns = {s.ann.session_id: s.ann for s in self.core.sessions.values() if s.ann.funder}
        candidates = dict(ledger.pools_of(wallet)) if wallet is not None else {}
        for ann in anns.values():
            pid = ledger.pool_id(ann.funder, ann.session_id)
            p = ledger.pool(pid)
            if p is not None:
                candidates[pid] = p
        now, t = self._now(), trio.current_time()
        return [pid for pid, p in sorted(candidates.items())
                if self._close_after.get(pid, 0.0) <= t
                and close_due(funder=p.funder, deadline=p.deadline, grace=p.grace, closed=p.closed, my_wallet=wallet,
                              me=self.ctx.peer_id, ann=anns.get(p.session), now=now)]

    async def _close(self, ledger: LedgerApi, pool: bytes) -> None:
        self._close_after[pool] = trio.current_time() + CLOSE_RETRY
        try:
            cert = await ledger.close_pool(pool)
        except (OrderRejected, NotCertified, WalletError) as e:
            if self._close_log.admit(pool, trio.current_time()) is not None:
                log.warning("fl: closing reward pool %s failed (tried again in %g s): %s", pool.hex()[:16],
                            CLOSE_RETRY, e)
            return
        o = cert.order.order
        p = ledger.pool(pool)
        log.info("fl: reward pool %s closed: %d payouts of %s paid, %s back to the funder", pool.hex()[:16],
                 o.payouts, format_amount(o.paid),
                 format_amount(p.amount - p.paid) if p is not None else "?")
