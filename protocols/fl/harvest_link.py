"""FL's use of the harvest role, when one runs on this node (protocols/harvest/api.py).

- Gate: this node's own candidate carries the harvest role's suspension reason, so a suspended
  node opts into no new session and is left out of plans it could be selected for
  (selection.py); other devices' reasons come from their registry records.
- Training pauses with the device: while it trains, FL lends its task process to the harvest
  session of the FL session (`training`); the harvest role stops it with SIGSTOP while the
  policy suspends work and continues it with SIGCONT (the training request simply waits), and
  meters its CPU and memory into the session.
- Credit: the signed round receipt of each round this node trained for goes to the
  contribution ledger; the harvest session ends when the FL session does (`ended`, which
  credits what is still held first). Credits and the session's end are written through the
  harvest role's group commit (`record_credit`, `end_harvest_session`: the fsync is off the
  event loop, each returns once durable). A credit still costs the loop its verification and
  the batch, and a receipt arrives with the round's result, just when the coordinator fetches
  the new model and the participants get the next plan: `judged` holds the receipt and
  `credit_held` writes it later, when the executor's round work leaves the loop free (while
  the task process trains; at the latest CREDIT_DELAY seconds later; at once when MAX_HELD
  are held, `full`).
Without a harvest role every method is a no-op and training runs as before.
"""
from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, Callable

from fognode.node.wire import pack
from fognode.protocols.fl.rewards.receipts import RoundReceipt
from fognode.protocols.harvest.api import harvest_api
from fognode.protocols.harvest.receipts import FL_ROUND, ReceiptRefused

log = logging.getLogger("fognode.fl")

HARVEST_KIND = "fl"
CREDIT_DELAY = 1.0      # seconds a held receipt waits at most for a quieter moment
MAX_HELD = 64           # receipts held before they are credited at once


class HarvestLink:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.held: list[RoundReceipt] = []      # judged, not credited yet

    def suspension(self) -> str:
        """Why the harvest role suspends this device's work ("": it may work, or no role)."""
        api = harvest_api(self.ctx.services)
        return (api.suspension() or "") if api is not None else ""

    def training(self, session_id: bytes, pid_of: Callable[[], int | None]) -> AbstractAsyncContextManager[Any]:
        """`async with link.training(sid, lambda: tasks.pid):` around one local training."""
        api = harvest_api(self.ctx.services)
        if api is None:
            return nullcontext()
        return api.adopt(HARVEST_KIND, session_id.hex(), "fl task process", pid_of)

    def judged(self, receipt: RoundReceipt) -> bool:
        """Hold the receipt of a round this node trained for; True when the caller must see
        that `credit_held` runs (at once when `full`, else within CREDIT_DELAY), False when
        there is nothing to credit (no harvest role)."""
        if harvest_api(self.ctx.services) is None:
            return False
        self.held.append(receipt)
        return True

    @property
    def full(self) -> bool:
        """MAX_HELD receipts are held: credit them now."""
        return len(self.held) >= MAX_HELD

    async def credit_held(self) -> None:
        """Credit every held receipt to the contribution ledger, oldest first; returns once
        they are durable (the harvest role's group commit, off the event loop)."""
        held, self.held = self.held, []
        for receipt in held:
            await self._credit(receipt)

    async def _credit(self, receipt: RoundReceipt) -> None:
        api = harvest_api(self.ctx.services)
        if api is None:
            return
        try:
            c = await api.record_credit(FL_ROUND, pack(receipt.to_wire()), peer=receipt.aggregator)
        except ReceiptRefused as e:   # self-aggregated rounds, sessions without local work
            log.debug("fl: round %d receipt not credited: %s", receipt.round, e)
            return
        log.info("fl: round %d of %s credited by %s: %s, %d micro-units", receipt.round,
                 c.ref[:16], receipt.aggregator, c.outcome.value, c.tokens)

    async def ended(self, session_id: str, state: str, reason: str) -> None:
        """The FL session `session_id` (hex) ended: end its harvest session (completed when
        the FL session completed, else abandoned with the reason), durable on return."""
        await self.credit_held()      # its receipts first, while its harvest session still runs
        api = harvest_api(self.ctx.services)
        if api is None:
            return
        for s in api.running_sessions(HARVEST_KIND, session_id):
            await api.end_harvest_session(s.session_id, completed=state == "completed",
                                          reason=reason or f"the FL session {state}")
