"""The wallet side of reward pools: fund one, pay receipts out of it, close it (each order driven
to a certificate by `OrderSubmitter.submit`, like a transfer), and read pools from this replica.

Clock margin: the phases (rewardpool.py) are judged by each validator's clock, so the wallet
signs a payout only while it is `margin` seconds before the deadline and a close only from
`margin` seconds after its opening by this node's clock (`PoolMarginError` otherwise, before
anything is signed).

A close states the payouts this replica applied (count, total, digest). Validators sign it
only when theirs are the same, so close from a replica that is in sync: `close` refuses
(POOL_UNSETTLED, before signing) while this replica still has certificates of the pool
pending, and callers wait a few seconds after the deadline for the last payouts to arrive
(rewardpool.py: a close built on a replica that missed a payout is refused by the validators
that applied it and may stay in flight).
"""
from __future__ import annotations

import logging
from typing import Callable

from fognode.ledger.address import encode_address
from fognode.ledger.errors import OrderRejected, Reason
from fognode.ledger.messages import Certificate, Order
from fognode.ledger.receipts import Receipt
from fognode.ledger.rewardpool import RewardPool, time_problem
from fognode.ledger.rewardpool_orders import PoolCloseOrder, PoolOpenOrder, PoolOrder, PoolPayOrder, pool_id
from fognode.ledger.rewards import Allocation
from fognode.ledger.state import LedgerState
from fognode.ledger.submit import OrderSubmitter

log = logging.getLogger("fognode.ledger")

CLOCK_MARGIN = 5.0       # seconds (see the module docstring)


class PoolMarginError(OrderRejected):
    """The order is too close to a phase boundary of its pool (by this node's clock, give or
    take the margin) for every validator to agree: wait (a close) or give up (a payout)."""


class PoolClient:
    def __init__(self, submitter: OrderSubmitter, state: LedgerState, clock: Callable[[], float],
                 pending: Callable[[bytes], bool] = lambda pool: False, margin: float = CLOCK_MARGIN) -> None:
        self.submitter = submitter
        self.state = state
        self.clock = clock
        self.pending = pending         # whether this replica holds certificates of the pool not applied yet
        self.margin = margin
        self.chain = submitter.genesis.chain_id
        self.fee = submitter.genesis.fee

    # -- reading --------------------------------------------------------------------------------

    def pool_id(self, funder: bytes, session: bytes) -> bytes:
        return pool_id(self.chain, funder, session)

    def pool(self, pool: bytes) -> RewardPool | None:
        """The pool as this replica holds it (None: not funded, or not here yet)."""
        return self.state.pools.get(pool)

    def pools_of(self, funder: bytes) -> list[tuple[bytes, RewardPool]]:
        return sorted((k, p) for k, p in self.state.pools.items() if p.funder == funder)

    # -- orders -----------------------------------------------------------------------------------

    def _check_margin(self, order: PoolOrder) -> None:
        p = self.pool(order.pool)
        if p is None and not isinstance(order, PoolOpenOrder):
            return                   # the submitter's state check names the unknown pool
        now = self.clock()
        for t in (now - self.margin, now + self.margin):
            problem = time_problem(p, order, t)
            if problem is not None:
                raise PoolMarginError(problem[0], f"{problem[1]} (with this wallet's clock margin of "
                                                  f"{self.margin:g} s)")

    async def _submit(self, wallet: bytes | None, build: Callable[[bytes, int, int], PoolOrder],
                      timeout: float) -> Certificate:
        key = await self.submitter.unlock_wallet(wallet or self.submitter.default_wallet())
        sender = bytes(key.verify_key)

        def make(seq: int, epoch: int) -> Order:
            order = build(sender, seq, epoch)
            self._check_margin(order)
            return order
        return await self.submitter.submit(key, make, timeout)

    async def open(self, session: bytes, receipt_kind: str, amount: int, deadline: int, grace: int, *,
                   wallet: bytes | None = None, timeout: float = 30.0) -> Certificate:
        """Lock `amount` of the wallet (the funder) into the pool of `session`; its id is
        `cert.order.order.pool`. Raises OrderRejected (OVERSPEND names what is missing;
        PoolMarginError), NotCertified, WalletError, LedgerStorageFailed (as every method here)."""
        return await self._submit(wallet, lambda s, q, ep: PoolOpenOrder(
            chain=self.chain, epoch=ep, sender=s, sequence=q, fee=self.fee, session=session,
            receipt_kind=receipt_kind, amount=amount, deadline=deadline, grace=grace), timeout)

    async def pay(self, pool: bytes, receipt: Receipt, amount: int, *, wallet: bytes | None = None,
                  timeout: float = 30.0) -> Certificate:
        """Pay `amount` of `pool` to the receipt's beneficiary (the wallet pays the fee)."""
        return await self._submit(wallet, lambda s, q, ep: PoolPayOrder(
            chain=self.chain, epoch=ep, sender=s, sequence=q, fee=self.fee, pool=pool, amount=amount,
            receipt=receipt), timeout)

    async def pay_all(self, pool: bytes, allocations: list[Allocation], *, timeout: float = 60.0) -> list[str]:
        """Pay each allocation from `pool`, one after the other; the transaction ids paid. A
        payout the validators refuse (a claim paid already, ...) is logged and skipped;
        NotCertified stops the round (the order stays in flight)."""
        txs = []
        for a in allocations:
            if a.amount <= 0:
                continue
            try:
                cert = await self.pay(pool, a.receipt, a.amount, timeout=timeout)
            except OrderRejected as e:
                log.warning("payout of %d from pool %s to %s refused: %s", a.amount, pool.hex()[:16],
                            encode_address(a.receipt.beneficiary), e)
                continue
            txs.append(cert.tx_id.hex())
        return txs

    async def close(self, pool: bytes, *, wallet: bytes | None = None, timeout: float = 30.0) -> Certificate:
        """Close `pool` on the payouts this replica applied: the rest goes to the funder. The
        wallet is the funder (from the deadline) or anyone (from the end of the grace period).
        Raises OrderRejected with POOL_UNSETTLED (nothing signed) while certificates of the
        pool wait here to apply."""
        p = self.pool(pool)
        if p is not None and self.pending(pool):
            raise OrderRejected(Reason.POOL_UNSETTLED, f"this replica holds certificates of pool {pool.hex()[:16]} "
                                                       f"that are not applied yet: close once they are")

        def build(s: bytes, q: int, ep: int) -> PoolOrder:
            cur = self.pool(pool)
            n, paid, digest = (cur.payouts, cur.paid, cur.digest) if cur is not None else (0, 0, bytes(64))
            return PoolCloseOrder(chain=self.chain, epoch=ep, sender=s, sequence=q, fee=self.fee, pool=pool,
                                  payouts=n, paid=paid, payouts_digest=digest)
        return await self._submit(wallet, build, timeout)
