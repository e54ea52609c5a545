"""Path selection and the persisted guard set (path-spec "Path selection", guard-spec).

A path is `hops` distinct relays. The first is a guard: one of a small set of relays chosen
once and kept for months (`GuardSet`), so an adversary running a few relays is either the
client's guard for a long time or never, instead of eventually being the first hop of some
circuit (the reason Tor has entry guards). The others are drawn at random with weight
bandwidth x reputation (measured bandwidth from the registry's probe; reputation the
EigenTrust score in [0, 1], both floored so a new relay still gets some traffic; divided by
1 + RTT / 100 ms when this node has measured its ping round trip to the relay), never the
same relay twice nor this node itself, preferring relays in regions the path does not use yet
(distinct regions make it less likely that one operator or one jurisdiction sees two hops;
when there are too few regions the rule is relaxed, never the distinct-relay rule). A caller
may fix the last hop (a rendezvous or introduction point); it is excluded from earlier hops,
and may be this node itself (the only place this node appears in its own path).

The guard set keeps `num_guards` entries in order (the first usable one is used: Tor's
primary guards); a guard that fails is retried after an exponential backoff, one that is not
in the current candidate list is skipped but kept (a guard that vanishes briefly must not
make us rotate), and each expires after a randomised lifetime. It persists as msgpack
(`to_bytes`/`from_bytes`, a strict decoder: OnionStateError).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import msgpack

from fognode.protocols.onion.errors import OnionStateError, PathError

MIN_BANDWIDTH = 100_000.0     # bytes/s assumed for a relay not measured yet
MIN_REPUTATION = 0.05
LATENCY_SCALE = 0.1           # s: a relay this far away (ping round trip) gets half the weight
MAX_GUARDS_STORED = 64


@dataclass(frozen=True)
class RelayInfo:
    """A relay as path selection sees it (from its registry record)."""

    peer_id: str
    identity: bytes          # Ed25519 public key (32)
    onion_key: bytes         # X25519 public key (32)
    region: str = ""
    reputation: float = 0.5  # EigenTrust score, 0..1
    bandwidth: float = 0.0   # measured bytes/s, 0 if unknown
    latency: float | None = None   # ping round trip from this node, s (None: not measured)

    @property
    def weight(self) -> float:
        bw = self.bandwidth if math.isfinite(self.bandwidth) else 0.0
        rep = self.reputation if math.isfinite(self.reputation) else 0.0
        w = max(bw, MIN_BANDWIDTH) * max(min(rep, 1.0), MIN_REPUTATION)
        if self.latency is not None and math.isfinite(self.latency) and self.latency > 0:
            w /= 1.0 + self.latency / LATENCY_SCALE
        return w


def weighted_choice(pool: Sequence[RelayInfo], rng: random.Random) -> RelayInfo:
    total = sum(r.weight for r in pool)
    x = rng.random() * total
    for r in pool:
        x -= r.weight
        if x < 0:
            return r
    return pool[-1]


def _pick(pool: list[RelayInfo], used_regions: set[str], rng: random.Random) -> RelayInfo:
    fresh = [r for r in pool if not r.region or r.region not in used_regions]
    return weighted_choice(fresh or pool, rng)


def select_path(candidates: Iterable[RelayInfo], hops: int, guard: RelayInfo, rng: random.Random, *,
                self_peer: str = "", last: RelayInfo | None = None,
                exclude: Iterable[str] = ()) -> list[RelayInfo]:
    """`hops` distinct relays starting with `guard` (and ending with `last` if given);
    PathError if there are not enough."""
    if hops < 1:
        raise PathError("a path needs at least one hop")
    banned = set(exclude) | {self_peer}
    # the fixed last hop may be this node itself (a client chose the service's own node as its
    # rendezvous point, not knowing it): the circuit leaves and comes back through other relays
    if guard.peer_id in banned or (last is not None and last.peer_id in (banned - {self_peer}) | {guard.peer_id}):
        raise PathError("the guard or the fixed last hop is excluded or repeated")
    path = [guard]
    used_regions = {guard.region} if guard.region else set()
    if last is not None and last.region:
        used_regions.add(last.region)
    taken = {guard.peer_id} | ({last.peer_id} if last is not None else set())
    pool = {r.peer_id: r for r in candidates if r.peer_id not in banned | taken}
    middle = hops - 1 - (1 if last is not None and hops > 1 else 0)
    if last is not None and hops == 1:
        raise PathError("a one-hop path cannot have both a guard and a fixed last hop")
    for _ in range(middle):
        if not pool:
            raise PathError(f"only {len(path)} distinct relays available for a {hops}-hop path")
        r = _pick(sorted(pool.values(), key=lambda x: x.peer_id), used_regions, rng)
        path.append(r)
        del pool[r.peer_id]
        if r.region:
            used_regions.add(r.region)
    if last is not None:
        path.append(last)
    return path


@dataclass
class GuardEntry:
    peer_id: str
    added_at: float
    expires_at: float
    failures: int = 0
    retry_at: float = 0.0


class GuardSet:
    def __init__(self, num_guards: int = 3, lifetime: float = 60 * 86400.0, retry_base: float = 60.0) -> None:
        self.num_guards = num_guards
        self.lifetime = lifetime
        self.retry_base = retry_base
        self.entries: list[GuardEntry] = []

    def refresh(self, candidates: Iterable[RelayInfo], now: float, rng: random.Random,
                self_peer: str = "") -> bool:
        """Drop expired guards and fill up to `num_guards` from `candidates` (weighted,
        distinct regions preferred). True if the set changed (persist it)."""
        before = [e.peer_id for e in self.entries]
        self.entries = [e for e in self.entries if e.expires_at > now]
        have = {e.peer_id for e in self.entries}
        listed = {r.peer_id: r for r in candidates if r.peer_id != self_peer}
        regions = {listed[e.peer_id].region for e in self.entries if e.peer_id in listed} - {""}
        pool = [r for pid, r in sorted(listed.items()) if pid not in have]
        while len(self.entries) < self.num_guards and pool:
            r = _pick(pool, regions, rng)
            pool.remove(r)
            if r.region:
                regions.add(r.region)
            life = self.lifetime * (0.75 + 0.25 * rng.random())
            self.entries.append(GuardEntry(r.peer_id, now, now + life))
        return [e.peer_id for e in self.entries] != before

    def choose(self, candidates: Iterable[RelayInfo], now: float) -> RelayInfo:
        """The first guard in order that is listed and not backing off; when every listed
        guard is backing off, the one whose retry comes first (guard-spec: once all primary
        guards are marked unreachable they are all retried; waiting out the backoff left a
        small network's node with no circuit at all for minutes after a few failures while
        the network formed). PathError if no guard is listed."""
        listed = {r.peer_id: r for r in candidates}
        usable = [e for e in self.entries if e.peer_id in listed]
        for e in usable:
            if e.retry_at <= now:
                return listed[e.peer_id]
        if usable:
            return listed[min(usable, key=lambda e: e.retry_at).peer_id]
        raise PathError(f"none of the {len(self.entries)} guards is listed now")

    def mark_failed(self, peer_id: str, now: float) -> None:
        for e in self.entries:
            if e.peer_id == peer_id:
                e.failures += 1
                e.retry_at = now + self.retry_base * 2 ** min(e.failures - 1, 8)

    def mark_ok(self, peer_id: str) -> None:
        for e in self.entries:
            if e.peer_id == peer_id:
                e.failures, e.retry_at = 0, 0.0

    @property
    def peers(self) -> list[str]:
        return [e.peer_id for e in self.entries]

    def to_bytes(self) -> bytes:
        return msgpack.packb({"v": 1, "guards": [[e.peer_id, e.added_at, e.expires_at, e.failures, e.retry_at]
                                                  for e in self.entries]})

    def load(self, data: bytes) -> None:
        """Replace the entries with a persisted set (OnionStateError if it does not decode)."""
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as e:
            raise OnionStateError(f"guard state: not msgpack ({e})") from None
        if not isinstance(obj, dict) or obj.get("v") != 1 or not isinstance(obj.get("guards"), list):
            raise OnionStateError("guard state: want {'v': 1, 'guards': [...]}")
        if len(obj["guards"]) > MAX_GUARDS_STORED:
            raise OnionStateError(f"guard state: more than {MAX_GUARDS_STORED} guards")
        entries = []
        for i, g in enumerate(obj["guards"]):
            ok = (isinstance(g, list) and len(g) == 5 and isinstance(g[0], str) and 0 < len(g[0]) <= 128
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                          for v in (g[1], g[2], g[4]))
                  and isinstance(g[3], int) and not isinstance(g[3], bool) and g[3] >= 0)
            if not ok:
                raise OnionStateError(f"guard state: guards[{i}] is not [peer, added, expires, failures, retry_at]")
            entries.append(GuardEntry(g[0], float(g[1]), float(g[2]), g[3], float(g[4])))
        self.entries = entries
