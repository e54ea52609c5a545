"""How many devices of the local view are online, memoised on what changes it (sans-IO).

`OnlineCount()(view, liveness)` is the number of peers held in `view` whose liveness is ONLINE:
what node.info's `devices_online` and the `devices_online` gauge show. It is recounted
(O(devices)) only when the set of peers held (`LocalView.members_version`) or some peer's
liveness state (`LivenessTracker.version`) changed since the last call, or when either object
is another one; otherwise the last count is returned in O(1). Both versions are bumped by
every mutation that can change the answer, so the count is never stale (tests/registry/
test_online.py checks it against a recount after every kind of change).
"""
from __future__ import annotations

from fognode.protocols.registry.liveness import LivenessTracker
from fognode.protocols.registry.view import LocalView


class OnlineCount:
    def __init__(self) -> None:
        self._key: tuple[LocalView, int, LivenessTracker, int] | None = None
        self._count = 0

    def __call__(self, view: LocalView, liveness: LivenessTracker) -> int:
        key = (view, view.members_version, liveness, liveness.version)
        if key != self._key:
            self._count = sum(1 for p in view.peers() if liveness.is_online(p))
            self._key = key
        return self._count
