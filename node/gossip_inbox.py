"""Fair queueing of arrived gossip per relaying peer, and early drop before any signature check.

Why. py-libp2p 0.8.1 hands every validated message to one 32-slot subscription channel per
topic and drops what does not fit (`Pubsub.notify_subscriptions`, WARNING "fail to deliver
message to subscription"). One peer that floods a topic keeps that channel full, so the other
peers' messages are dropped there too, before our gap tracker sees them: a gap bomb from one
peer starved an honest peer's gossip for the whole attack (tests/node/test_gossip_attack.py,
4 runs out of 4 once the transport got faster), and the tracker charged the attacker only for
the few of its messages that got through. So the gossip layer takes each message in its topic
validator (which py-libp2p runs before that channel) and queues it here, per relaying peer.

`FairInbox` (sans-IO) holds the messages that arrived and are not yet given to the tracker,
one FIFO per relaying peer, served round robin (`pop`): a message of a quiet peer waits behind
at most one message of each busy peer, not behind a flood. The inbox holds at most `limit`
messages and `limit_bytes` bytes in all; when full, an arrival evicts the oldest message of the
longest queue (longest-queue drop, as fq_codel does), or is itself refused when its own peer's
queue is the longest: the flooder loses its own messages, a peer with a shorter queue always
gets in. Nothing in the inbox has been tracked yet, so a dropped message is only a gap: it stays
in the relay cache and is pulled (from ourselves first) when the tracker notices the gap.

`admits(peer)` says, before any work, whether a message of `peer` would be dropped at once
(inbox full and `peer`'s queue the longest). The gossip layer asks it, and the tracker whether
the peer may sponsor another origin, from `ScoredPubsub.push_msg` before py-libp2p checks the
message's signature (node/scored_pubsub.py): a flood over a peer's share then costs a few dict
look-ups per message instead of two Ed25519 verifications, it is not relayed to our other
peers (they would charge us for it), and it is not marked seen, so the same message relayed by
another peer is still taken (go-libp2p's ValidationIgnore, decided before the signature).

Invariants (`check`): counts and bytes are the sums over the queues; no queue is empty; the
round-robin order holds each non-empty queue exactly once.
"""
from __future__ import annotations

from collections import deque
from typing import Generic, Hashable, TypeVar

T = TypeVar("T")


class FairInbox(Generic[T]):
    """Per-key FIFOs served round robin, bounded in count and bytes with longest-queue drop."""

    def __init__(self, limit: int, limit_bytes: int) -> None:
        if limit < 1 or limit_bytes < 1:
            raise ValueError(f"inbox limits must be at least 1, got {limit} and {limit_bytes}")
        self.limit = limit
        self.limit_bytes = limit_bytes
        self._queues: dict[Hashable, deque[tuple[T, int]]] = {}
        self._order: deque[Hashable] = deque()      # keys with a non-empty queue, next first
        self._bytes: dict[Hashable, int] = {}
        self.count = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.count

    def queued(self, key: Hashable) -> int:
        q = self._queues.get(key)
        return 0 if q is None else len(q)

    def _plan(self, key: Hashable, size: int) -> list[Hashable] | None:
        """The queues whose oldest messages `put(key, ..., size)` would evict, in order, or
        None when the message itself would be refused (key's queue is the longest; by count,
        then bytes). O(keys) per eviction: only when the inbox is full."""
        if size > self.limit_bytes:
            return None
        count, nbytes = self.count, self.bytes
        taken: dict[Hashable, int] = {}          # queue -> messages evicted from its head
        victims: list[Hashable] = []

        def length(k: Hashable) -> tuple[int, int]:
            q, n = self._queues.get(k), taken.get(k, 0)
            if q is None:
                return 0, 0
            if not n:
                return len(q), self._bytes[k]
            return len(q) - n, self._bytes[k] - sum(q[i][1] for i in range(n))

        while count + 1 > self.limit or nbytes + size > self.limit_bytes:
            top = max(self._queues, key=length, default=None)
            if top is None or top == key or length(top) <= length(key):
                return None
            evicted = self._queues[top][taken.get(top, 0)][1]
            taken[top] = taken.get(top, 0) + 1
            victims.append(top)
            count, nbytes = count - 1, nbytes - evicted
        return victims

    def admits(self, key: Hashable, size: int = 0) -> bool:
        """False when a message of `key` would be refused at once (module doc)."""
        return self._plan(key, size) is not None

    def put(self, key: Hashable, item: T, size: int) -> list[tuple[Hashable, T]]:
        """Queue `item` (of `size` bytes) for `key`; returns what was dropped to make room,
        as (key, item) pairs: the oldest messages of the longest queues, or `item` itself
        when `key`'s queue is the longest (or the item alone is over `limit_bytes`)."""
        victims = self._plan(key, size)
        if victims is None:
            return [(key, item)]
        dropped = [(top, self._take(top)) for top in victims]
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = deque()
            self._bytes[key] = 0
            self._order.append(key)
        q.append((item, size))
        self._bytes[key] += size
        self.count += 1
        self.bytes += size
        return dropped

    def pop(self) -> tuple[Hashable, T] | None:
        """The next message, round robin over the keys (None when empty)."""
        if not self._order:
            return None
        key = self._order.popleft()
        item = self._take(key)
        if key in self._queues:
            self._order.append(key)          # still has messages: back of the round
        return key, item

    def _take(self, key: Hashable) -> T:
        q = self._queues[key]
        item, size = q.popleft()
        self._bytes[key] -= size
        self.count -= 1
        self.bytes -= size
        if not q:
            del self._queues[key], self._bytes[key]
            try:
                self._order.remove(key)
            except ValueError:               # popped by `pop` already
                pass
        return item

    def check(self) -> None:
        """Assert the invariants of the module docstring (for tests)."""
        assert self.count == sum(len(q) for q in self._queues.values())
        assert self.bytes == sum(self._bytes.values())
        assert all(self._queues.values())
        assert sorted(map(repr, self._order)) == sorted(map(repr, self._queues))
        for k, q in self._queues.items():
            assert self._bytes[k] == sum(s for _, s in q)
        assert self.count <= self.limit and self.bytes <= self.limit_bytes
