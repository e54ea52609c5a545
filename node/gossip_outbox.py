"""The publisher's outbox: sealed envelopes waiting to be sent, taken as batches (sans-IO).

node/gossip.py's publisher task moves what `publish()` queued into an `Outbox` (at most
`limit` envelopes) and sends, at each pacing tick, `take()`: the oldest envelope's topic and
every envelope of that topic behind it in the outbox, in order, up to `max_count` envelopes
and `max_bytes` bytes of batch (gossip_envelope.batch_size). One envelope goes out alone;
more go out as one batch (gossip_envelope.pack_batch), one libp2p message. Nothing waits to
fill a batch: a batch holds what queued up while the previous message was being sent, so a
node that publishes now and then sends single envelopes with no added delay, and one that
publishes a burst sends it in a few messages.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from fognode.node.gossip_envelope import batch_size


@dataclass(frozen=True)
class Outgoing:
    topic: str
    raw: bytes          # one sealed envelope
    counted: bool       # a message (counted as published), not a head announcement


class Outbox:
    """Queued envelopes, oldest first; see the module docstring."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"outbox limit must be at least 1, got {limit}")
        self.limit = limit
        self._items: deque[Outgoing] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def room(self) -> int:
        return self.limit - len(self._items)

    def add(self, item: Outgoing) -> None:
        if len(self._items) >= self.limit:
            raise ValueError("outbox full: check room() before add()")
        self._items.append(item)

    def take(self, max_count: int, max_bytes: int) -> list[Outgoing]:
        """The next batch (module doc): at least one envelope, even one over `max_bytes`
        (publish() refuses those before they get here); [] when the outbox is empty."""
        if not self._items:
            return []
        first = self._items.popleft()
        batch = [first]
        size = batch_size([len(first.raw)])
        rest: deque[Outgoing] = deque()
        while self._items and len(batch) < max_count:
            item = self._items.popleft()
            grown = size + batch_size([len(item.raw)]) - batch_size([])
            if item.topic == first.topic and grown <= max_bytes:
                batch.append(item)
                size = grown
            elif item.topic == first.topic:
                rest.append(item)           # over the byte budget: it and its topic's later
                break                       # envelopes wait for the next batch, in order
            else:
                rest.append(item)
        rest.extend(self._items)
        self._items = rest
        return batch
