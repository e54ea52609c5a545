"""FL's use of the ledger, when one runs on this node: teach it to price "fl_update"
receipts, opt in with the node's default wallet as the reward address, and mint each accepted
participant's share of a round's reward (`PayRewards`)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from fognode.ledger.api import LedgerApi, ledger_api
from fognode.protocols.fl.actions import PayRewards
from fognode.protocols.fl.metrics import FlMetrics
from fognode.protocols.fl.rewards.receipts import VERIFIER, issue_ledger_receipts, reward_of
from fognode.protocols.fl.session.core import FlCore

log = logging.getLogger("fognode.fl")


class LedgerLink:
    def __init__(self, ctx: Any, core: FlCore, metrics: FlMetrics) -> None:
        self.ctx = ctx
        self.core = core
        self.metrics = metrics
        self._verifier_registered = False

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
        from fognode.ledger.errors import WalletError

        try:
            wallet = ledger.default_wallet()
        except WalletError as e:
            log.info("fl: rewards go to this node's identity key: %s", e)
            return
        self.core.facts = dataclasses.replace(self.core.facts, wallet=wallet)

    async def pay(self, a: PayRewards) -> None:
        """Mint each accepted participant's share of the round reward (ledger mint orders
        carrying the "fl_update" receipts as evidence; this node's wallet pays the fees)."""
        ledger = ledger_api(self.ctx.services)
        if ledger is None:
            log.info("fl: no ledger on this node: round %d of %s is not paid", a.receipt.round,
                     a.receipt.session_id.hex()[:16])
            return
        self.register_verifier()
        from fognode.ledger.rewards import Allocation

        receipts = issue_ledger_receipts(self.ctx.identity, a.receipt, a.announcement, a.plan,
                                         ledger.epoch_at(self._now()))
        allocations = [Allocation(r, reward_of(r)) for r in receipts]
        try:
            txs = await ledger.distribute_rewards(allocations)
        except Exception as e:   # not certified, no wallet, rejected evidence: log, keep going
            log.warning("fl: rewards of round %d not paid: %s", a.receipt.round, e)
            return
        self.metrics.rewards.inc(sum(x.amount for x in allocations))
        log.info("fl: round %d rewards paid in %d mint orders", a.receipt.round, len(txs))
