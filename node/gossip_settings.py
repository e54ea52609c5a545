"""The gossip layer's settings (node/gossip.py): rates, queue and cache sizes, pull timing and
the sequence tracker's caps, each with its default; `limits()` hands the tracker its part.
node/host.py builds them from the `[overlay] gossip_*` keys."""
from __future__ import annotations

from dataclasses import dataclass

from fognode.node.gossip_tracker import TrackerLimits


@dataclass(frozen=True)
class GossipSettings:
    max_message_size: int = 1048576
    max_rate: float = 500.0          # messages/s this node sends at most
    publish_queue: int = 256         # publish() waits when this many are queued
    handler_queue: int = 256         # arrived messages queued per topic (gossip_inbox.py)
    ring_size: int = 1024            # own recent messages per topic kept for pulls
    relay_cache: int = 4096          # others' recent messages kept for pulls
    pull_delay: float = 0.3          # seconds a gap may heal by itself before we pull
    pull_timeout: float = 5.0        # per source
    pull_attempts: int = 5           # failed pulls in a row before an origin is dropped
    backfill: int = 64               # seqs before the first one seen from an origin we pull
    head_interval: float = 1.0       # announce our latest seq this long after publishing
    window: int = 256                # seqs an origin may have open; a longer jump resyncs
    max_origins: int = 8192          # (topic, origin) pairs tracked, in total / per relayer
    max_origins_per_peer: int = 1024
    max_missing: int = 16384         # missing seqs tracked, in total / charged to one relayer
    max_missing_per_peer: int = 2048
    max_pulls: int = 64              # pulls in flight, in total / charged to one relayer
    max_pulls_per_peer: int = 16
    drop_backoff: float = 30.0       # a dropped origin is not pulled for this long (doubles)
    warn_interval: float = 10.0      # at most one refusal and one loss warning per interval

    def limits(self) -> TrackerLimits:
        return TrackerLimits(
            window=self.window, backfill=self.backfill, max_origins=self.max_origins,
            max_origins_per_peer=self.max_origins_per_peer, max_missing=self.max_missing,
            max_missing_per_peer=self.max_missing_per_peer, max_pulls=self.max_pulls,
            max_pulls_per_peer=self.max_pulls_per_peer, pull_delay=self.pull_delay,
            max_attempts=self.pull_attempts, drop_backoff=self.drop_backoff)
