"""Privacy levels of hosted data: how many hosts, how many may be lost, how many hops.

Every level keeps these promises (they follow from how shards are reached, not from the level):
hosts are reached only through their hosting `.fog` service, by rendezvous, so a host never
learns which node fetches a shard, and an accessor learns the hosts' `.fog` addresses, never
their peer ids or network addresses; the manifest is in the DHT sealed under a blinded key,
readable only by those who know the service's address; hosts keep ciphertext and know only
the service id (the blinded key), so they cannot read what they keep unless given the address.

What the level changes:

| level | code (k of n) | hosts that may be lost | accessor's hops | circuits per access |
|---|---|---|---|---|
| 1 | 2 of 3 | 1 | 2 | reused: a host can link repeated accesses of one accessor |
| 2 | 3 of 5 | 2 | 3 (Tor's default) | reused, as level 1 |
| 3 | 2 of 5 | 3 | 4 | fresh: closed after each access, accesses cannot be linked by circuit |

With 2 hops the accessor's guard sees its peer id and, next to it, the introduction or
rendezvous relay (not what it fetches nor from whom: the host is beyond the rendezvous
point); with 3 or more, no single relay knows both the accessor and the rendezvous point.
(One hop is not offered: the first hop of every circuit is a guard, and an introduction
circuit must end at the introduction relay, so it needs two relays.) The hosts' own
circuits use the hosts' `protocols.onion.hops`. Higher replication costs more: each of the n
hosts is paid for a shard of 1/k of the (encrypted) content.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrivacyLevel:
    level: int
    k: int
    n: int
    hops: int
    fresh_circuits: bool

    @property
    def tolerates(self) -> int:
        return self.n - self.k

    def to_json(self) -> dict[str, object]:
        return {"level": self.level, "k": self.k, "n": self.n, "hosts_may_be_lost": self.tolerates,
                "hops": self.hops, "fresh_circuits": self.fresh_circuits}


LEVELS: dict[int, PrivacyLevel] = {
    1: PrivacyLevel(1, k=2, n=3, hops=2, fresh_circuits=False),
    2: PrivacyLevel(2, k=3, n=5, hops=3, fresh_circuits=False),
    3: PrivacyLevel(3, k=2, n=5, hops=4, fresh_circuits=True),
}


def privacy_level(level: int) -> PrivacyLevel:
    """The level's parameters; ValueError naming the levels there are."""
    p = LEVELS.get(level)
    if p is None:
        raise ValueError(f"privacy_level must be one of {', '.join(map(str, LEVELS))}, got {level!r}")
    return p
