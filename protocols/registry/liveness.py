"""Online/offline tracking from heartbeats and pings (sans-IO; time is an argument).

`seen(peer, now)` records a sign of life (a heartbeat or record on gossip, an answered
ping); `mark_offline(peer, now)` is a graceful goodbye. `tick(now)` returns
the transitions since the last tick: a peer silent for `offline_after` seconds goes OFFLINE
once, and a sign of life from an offline peer brings it back ONLINE at once (returned by
`seen`).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Liveness(enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True)
class LivenessChange:
    peer_id: str
    state: Liveness
    last_seen: float
    reason: str            # "silent" | "goodbye" | "seen"


class LivenessTracker:
    def __init__(self, offline_after: float = 30.0, *, max_peers: int = 100_000) -> None:
        if offline_after <= 0:
            raise ValueError("offline_after must be positive")
        self.offline_after = offline_after
        self.max_peers = max_peers
        self._last: dict[str, float] = {}
        self._state: dict[str, Liveness] = {}
        self._gone: set[str] = set()      # said goodbye; only a heartbeat brings them back
        # bumped by every change of a peer's state (or its removal): who is online changed
        # only if it moved (the registry's online count is memoised on it)
        self.version = 0

    def seen(self, peer: str, now: float, *, at: float | None = None,
             direct: bool = True) -> LivenessChange | None:
        """Record a sign of life given at time `at` (default `now`); returns the change when
        the peer was offline or unknown. A sign older than `offline_after` counts for nothing
        (a heartbeat delivered late, or pulled from a relay after the peer died).

        `direct=False` (a ping) does not revive a peer that said goodbye: its role may
        answer for a moment after its goodbye. Its next heartbeat does.
        """
        t = now if at is None else min(at, now)
        if now - t >= self.offline_after:
            return None
        if not direct and peer in self._gone:
            return None
        self._gone.discard(peer)
        prev = self._last.get(peer)
        if prev is None and len(self._last) >= self.max_peers:
            self._evict_oldest_offline()
        self._last[peer] = max(t, prev if prev is not None else t)
        if self._state.get(peer) is not Liveness.ONLINE:
            self._state[peer] = Liveness.ONLINE
            self.version += 1
            return LivenessChange(peer, Liveness.ONLINE, now, "seen")
        return None

    def mark_offline(self, peer: str, now: float) -> LivenessChange | None:
        """A graceful goodbye (or an operator's `registry.mark_offline`)."""
        self._gone.add(peer)
        if self._state.get(peer) is Liveness.OFFLINE:
            return None
        self._state[peer] = Liveness.OFFLINE
        self.version += 1
        self._last.setdefault(peer, now)
        return LivenessChange(peer, Liveness.OFFLINE, self._last[peer], "goodbye")

    def tick(self, now: float) -> list[LivenessChange]:
        """Peers that have been silent for `offline_after` seconds, each reported once."""
        out = []
        for peer, last in self._last.items():
            if self._state.get(peer) is Liveness.ONLINE and now - last >= self.offline_after:
                self._state[peer] = Liveness.OFFLINE
                self.version += 1
                out.append(LivenessChange(peer, Liveness.OFFLINE, last, "silent"))
        return out

    def quiet(self, now: float, after: float) -> list[str]:
        """Online peers silent for at least `after` seconds (worth a direct ping)."""
        return [p for p, last in self._last.items()
                if self._state.get(p) is Liveness.ONLINE and now - last >= after]

    def silent_offline(self) -> list[str]:
        """Offline peers that did not say goodbye (worth a ping if we are connected)."""
        return [p for p, st in self._state.items() if st is Liveness.OFFLINE and p not in self._gone]

    def state(self, peer: str) -> Liveness | None:
        return self._state.get(peer)

    def is_online(self, peer: str) -> bool:
        return self._state.get(peer) is Liveness.ONLINE

    def last_seen(self, peer: str) -> float | None:
        return self._last.get(peer)

    def online_count(self) -> int:
        return sum(1 for s in self._state.values() if s is Liveness.ONLINE)

    def forget(self, peer: str) -> None:
        self._last.pop(peer, None)
        if self._state.pop(peer, None) is not None:
            self.version += 1
        self._gone.discard(peer)

    def _evict_oldest_offline(self) -> None:
        offline = [p for p, s in self._state.items() if s is Liveness.OFFLINE]
        victims = offline or list(self._last)
        oldest = min(victims, key=lambda p: self._last.get(p, 0.0))
        self.forget(oldest)
