"""Observation batches the gossip check decoded, kept for the handler (sans-IO).

The observations topic's content check (gossip_check.py `GossipChecks.observations`) decodes
and verifies every batch before it is relayed; the role's handler (protocol.py
`RegistryRole._on_observation`) then needs the same observations. `CheckedBatches` keeps what
the check returned, keyed by the digest of the message bytes (node/wire.py `digest`), with the
origin it was checked against, so the handler takes it instead of verifying every signature a
second time (`take`: the entry is dropped; a miss, or an entry checked against another origin,
returns None and the handler checks the message as if nothing had been kept).

A message the check passed may never reach the handler (a duplicate, our own message coming
back, an inbox overflow, a fault filter). So the map is bounded in entries and in message
bytes, whoever sent them, and evicts oldest-first (`OrderedDict.popitem`, constant time per
entry): a peer that floods the topic can only push others' entries out early, which costs the
handler a second check, as before batches were kept.
"""
from __future__ import annotations

from collections import OrderedDict

from fognode.node.wire import digest
from fognode.protocols.registry.observation import Observation

MAX_ENTRIES = 256              # the gossip layer's default inbox (handler_queue) per topic
MAX_BYTES = 1 << 20            # message bytes kept, in total (a batch is at most ~33 KB)


class CheckedBatches:
    """Checked observation messages waiting for their handler: digest -> (origin, size, obs)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._kept: OrderedDict[bytes, tuple[str, int, list[Observation]]] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def bytes_kept(self) -> int:
        return self._bytes

    def put(self, data: bytes, origin: str, obs: list[Observation]) -> None:
        """Keep what the check returned for the message `data` from `origin`."""
        if len(data) > self.max_bytes:
            return
        key = digest(data)
        old = self._kept.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._kept[key] = (origin, len(data), obs)
        self._bytes += len(data)
        while len(self._kept) > self.max_entries or self._bytes > self.max_bytes:
            self._bytes -= self._kept.popitem(last=False)[1][1]

    def take(self, data: bytes, origin: str) -> list[Observation] | None:
        """What the check returned for `data` from `origin`, dropped from the map; None when
        nothing (or a check against another origin) is kept."""
        got = self._kept.pop(digest(data), None)
        if got is not None:
            self._bytes -= got[1]
            if got[0] == origin:
                self.hits += 1
                return got[2]
        self.misses += 1
        return None
