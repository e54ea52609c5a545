"""The trio adapter of node-uptime rewards (rules in uptime.py).

Carried over the order stream:
    {"v", "uptime": epoch} -> {"v", "uptime_receipt": receipt} or
                              {"v", "uptime_refusal": {"v", "message"}}

`run()` samples the connected peers every `uptime_interval` seconds (validators attest what
they measured) and, once per epoch, claims the previous epoch's reward for this node: it asks
the validators, keeps the median receipt and submits the mint order from the node's wallet
(which pays the fee; the reward goes to the node's identity address). It reaches the engine
only through `UptimeHost` (the ledger service satisfies it).
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

import trio

from fognode.ledger.amounts import format_amount
from fognode.ledger.committee import seal_time
from fognode.ledger.errors import OrderRejected
from fognode.ledger.messages import Certificate
from fognode.ledger.receipts import Receipt, claim_id_of, decode_receipt, uptime_claim
from fognode.ledger.ports import EngineView, Requester
from fognode.ledger.uptime import KIND, UptimeTracker, median_receipt
from fognode.node.errors import FognodeError, RemoteProtocolError
from fognode.node.peerid import peer_id_from_pubkey, pubkey_from_peer_id
from fognode.node.wire import Fields

log = logging.getLogger("fognode.ledger.uptime")
CLAIM_TRIES = 3


class UptimeHost(EngineView, Requester, Protocol):
    """What uptime rewards need of the ledger engine (service.py)."""

    def connected_peers(self) -> list[str]: ...

    async def submit_reward(self, receipt: Receipt, amount: int, *, timeout: float = 30.0) -> Certificate:
        """Mint `amount` to the receipt's beneficiary (submit.py)."""


class UptimeRewards:
    def __init__(self, svc: UptimeHost, interval: float, claims: bool) -> None:
        self.svc = svc
        self.tracker = UptimeTracker(svc.genesis, interval)
        self.claims = claims
        self.tries: dict[int, int] = {}          # epoch -> claim attempts made
        self.claimed: dict[int, str] = {}        # epoch -> outcome, for ledger.info

    # -- validator: attest ---------------------------------------------------------------------

    def serve(self, peer: str, f: Fields) -> dict[str, Any]:
        """An uptime receipt for `peer` in the requested (ended, claimable) epoch, or a refusal."""
        svc = self.svc
        epoch = f.int("uptime", lo=0, hi=2**40)
        g = svc.genesis
        current = g.epoch_at(svc.ctx.clock())

        def refuse(message: str) -> dict[str, Any]:
            return {"v": 1, "uptime_refusal": {"v": 1, "message": message}}

        if epoch != current - 1:
            return refuse(f"uptime receipts are issued for the epoch that just ended ({current - 1}), not {epoch}")
        if svc.me not in svc.state.committee_for(epoch) or svc.me not in svc.state.committee_for(current):
            return refuse(f"this node is not a validator of epochs {epoch} and {current}")
        members = svc.state.committee_for(current).members
        if peer == svc.ctx.peer_id and len(members) > 1:
            return refuse("a validator does not attest its own uptime")
        seconds = self.tracker.observed(peer, epoch)
        if seconds < 1:
            return refuse(f"this validator did not see {peer} in epoch {epoch}")
        receipt = Receipt.issue(svc.ctx.identity, KIND, pubkey_from_peer_id(peer), epoch,
                                {"seconds": seconds, "claim": uptime_claim(epoch)})
        return {"v": 1, "uptime_receipt": receipt.to_wire()}

    # -- every node: sample and claim -------------------------------------------------------------

    async def run(self) -> None:
        svc = self.svc
        while True:
            now = svc.ctx.clock()
            self.tracker.sample(now, [svc.ctx.peer_id, *svc.connected_peers()])
            if self.claims:
                await self._maybe_claim(now)
            await trio.sleep(self.tracker.interval)

    async def _maybe_claim(self, now: float) -> None:
        svc = self.svc
        g = svc.genesis
        epoch = g.epoch_at(now) - 1
        if epoch < 0 or now < seal_time(g, epoch + 1) or self.tries.get(epoch, 0) >= CLAIM_TRIES:
            return
        if claim_id_of(KIND, svc.me, uptime_claim(epoch)) in svc.state.used_receipts:
            self.claimed.setdefault(epoch, "paid")
            return
        self.tries[epoch] = self.tries.get(epoch, 0) + 1
        try:
            outcome = await self.claim(epoch)
        except (FognodeError, trio.TooSlowError) as e:
            outcome = f"failed: {e}"
        self.claimed[epoch] = outcome
        for old in [x for x in self.claimed if x < epoch - 3]:
            del self.claimed[old]
        log.info("uptime reward for epoch %d: %s", epoch, outcome)

    async def claim(self, epoch: int) -> str:
        """Ask the validators for receipts of `epoch`, submit the median one. Returns what
        happened. Raises OrderRejected, NotCertified, WalletError."""
        svc = self.svc
        current = svc.state.committee_for(epoch + 1)
        asked = [v for v in svc.state.committee_for(epoch).members if v in current]
        if len(current.members) > 1:
            asked = [v for v in asked if v != svc.me]
        receipts: list[Receipt] = []
        async with trio.open_nursery() as nursery:
            for v in asked:
                nursery.start_soon(self._ask, v, epoch, receipts)
        chosen = median_receipt(receipts)
        if chosen is None:
            return f"no validator attested this node's uptime ({len(asked)} asked)"
        worth = chosen.body["seconds"] * svc.genesis.uptime_reward_per_hour // 3600
        if worth <= svc.genesis.fee:
            return f"{chosen.body['seconds']} s is worth {format_amount(worth)}, not more than the fee {format_amount(svc.genesis.fee)}"
        try:
            cert = await svc.submit_reward(chosen, worth, timeout=svc.s.request_timeout * 6)
        except OrderRejected as e:
            return f"refused: {e}"
        return f"paid {format_amount(worth)} for {chosen.body['seconds']} s (tx {cert.tx_id.hex()[:16]})"

    async def _ask(self, validator: bytes, epoch: int, out: list[Receipt]) -> None:
        svc = self.svc
        peer = peer_id_from_pubkey(validator)
        try:
            if validator == svc.me:
                raw = self.serve(svc.ctx.peer_id, Fields({"v": 1, "uptime": epoch}, "ledger.UptimeRequest"))
            else:
                with trio.fail_after(svc.s.request_timeout):
                    raw = await svc.request(validator, peer, {"v": 1, "uptime": epoch})
            f = Fields(raw, "ledger.UptimeReply", versions={1}, peer=peer)
            if f.has("uptime_refusal"):
                log.debug("validator %s gave no uptime receipt for epoch %d: %s", peer, epoch,
                          f.map("uptime_refusal").get("message"))
                return
            r = decode_receipt(f.map("uptime_receipt", max_len=8), peer=peer)
            f.done()
            seconds = r.body.get("seconds")
            if (r.kind != KIND or r.issuer != validator or r.beneficiary != svc.me or r.epoch != epoch
                    or r.body.get("claim") != uptime_claim(epoch) or not isinstance(seconds, int)
                    or not 1 <= seconds <= svc.genesis.epoch_length or not r.signature_ok()):
                raise RemoteProtocolError("ledger.UptimeReply: the receipt is not an uptime receipt of that epoch "
                                          "for this node signed by the validator asked", peer=peer)
            out.append(r)
        except (FognodeError, trio.TooSlowError) as e:
            log.debug("validator %s did not attest uptime: %s", peer, e)
