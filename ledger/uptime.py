"""Node-uptime rewards, the first real receipt kind (sans-IO; the adapter is uptime_service.py).

Measuring. Every validator samples, every `interval` seconds, which peers it is connected to
(`UptimeTracker.sample`) and adds the time since the previous sample (at most two intervals,
so a daemon that was itself stopped does not credit the gap) to each connected peer's tally
for the epoch. A node counts itself as connected: a single-node network attests its own uptime.

Claiming. After epoch E ends, each node asks the validators of E (that are validators now as
well, since the verifier checks the issuer against the mint order's committee) for an uptime
receipt of E. A validator answers with a receipt signed by its identity: beneficiary = the
asking peer's identity key (authenticated by the stream), body {"seconds", "claim"} with
claim = `uptime_claim(E)`. The node keeps the *median* answer (with three answers or more, one
lying validator can neither inflate nor deflate it) and submits one mint order worth seconds x the genesis
`uptime_reward_per_hour` / 3600, if that is worth more than the fee.

Paid once. The claim makes the receipt's claim id (receipts.py) depend only on (uptime,
beneficiary, E), whoever issued it, so a node is paid at most once per epoch; the verifier
(`receipts.UptimeVerifier`) requires that claim. The beneficiary is the node's identity key,
not a wallet it names: a node naming several wallets would make several claims.
"""
from __future__ import annotations

from typing import Iterable

from fognode.ledger.genesis import Genesis
from fognode.ledger.receipts import Receipt

KIND = "uptime"
EPOCHS_KEPT = 3
MAX_PEERS_PER_EPOCH = 10_000


class UptimeTracker:
    """Seconds each peer was seen connected, per epoch (the last EPOCHS_KEPT epochs)."""

    def __init__(self, genesis: Genesis, interval: float) -> None:
        self.genesis = genesis
        self.interval = interval
        self.seconds: dict[int, dict[str, float]] = {}
        self._last: float | None = None

    def sample(self, now: float, connected: Iterable[str]) -> None:
        """Credit the time since the previous sample (capped at two intervals) to every peer
        in `connected`, split at an epoch boundary it straddles."""
        last, self._last = self._last, now
        if last is None or now <= last:
            return
        start = max(last, now - 2 * self.interval)
        peers = list(connected)
        g = self.genesis
        t = start
        while t < now:
            epoch = g.epoch_at(t)
            end = min(now, g.epoch_start(epoch + 1))
            tally = self.seconds.setdefault(epoch, {})
            for p in peers:
                if p in tally or len(tally) < MAX_PEERS_PER_EPOCH:
                    tally[p] = tally.get(p, 0.0) + (end - t)
            t = end
        newest = g.epoch_at(now)
        for e in [e for e in self.seconds if e <= newest - EPOCHS_KEPT]:
            del self.seconds[e]

    def observed(self, peer: str, epoch: int) -> int:
        """Whole seconds `peer` was seen connected in `epoch` (at most the epoch's length)."""
        return min(int(self.seconds.get(epoch, {}).get(peer, 0.0)), self.genesis.epoch_length)


def median_receipt(receipts: list[Receipt]) -> Receipt | None:
    """The receipt with the median attested seconds (the lower one of an even count)."""
    ok = sorted((r for r in receipts if isinstance(r.body.get("seconds"), int)),
                key=lambda r: (r.body["seconds"], r.issuer))
    return ok[(len(ok) - 1) // 2] if ok else None
