"""Aggregator election: one aggregator per round and its fallbacks, with no extra messages.

Every participant knows the round plan (participants with the reputation the coordinator
used, and the round seed), so each computes the same order locally: a reputation-weighted
random permutation (Efraimidis-Spirakis): peer p gets the key log(u_p) / w_p with u_p uniform
in (0, 1) from BLAKE2b(seed || p) and w_p its reputation (floored at 0.01); highest key first.
A peer with twice the reputation is about twice as likely to aggregate. Position 0 aggregates;
if no result is out at the deadline of try slot k, position k + 1 takes over with the same base
model (the last completed round).
"""
from __future__ import annotations

import math
from typing import Sequence

from fognode.node.wire import digest

MIN_WEIGHT = 0.01


def _key(seed: bytes, peer: str, reputation: float) -> float:
    h = digest(b"fl-aggregator" + seed + peer.encode())
    u = (int.from_bytes(h[:8], "big") + 1) / (2**64 + 1)
    return math.log(u) / max(reputation, MIN_WEIGHT)


def aggregator_order(seed: bytes, participants: Sequence[tuple[str, float]], count: int) -> tuple[str, ...]:
    """The first `count` peers of the election order (aggregator, then fallbacks)."""
    ranked = sorted(participants, key=lambda pr: (-_key(seed, pr[0], pr[1]), pr[0]))
    return tuple(p for p, _ in ranked[:max(count, 0)])


def regional_orders(seed: bytes, participants: Sequence[tuple[str, float]],
                    regions: Sequence[str], count: int) -> dict[str, tuple[str, ...]]:
    """Hierarchical rounds: per region, the first `count` peers of the same election restricted
    to that region's participants, with a seed of its own (BLAKE2b(seed || region))."""
    by_region: dict[str, list[tuple[str, float]]] = {}
    for pr, region in zip(participants, regions):
        by_region.setdefault(region, []).append(pr)
    return {region: aggregator_order(digest(seed + b"/region/" + region.encode()), parts, count)
            for region, parts in sorted(by_region.items())}
