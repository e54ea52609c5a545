"""The relays this node knows, as path selection sees them (`pathsel.RelayInfo`).

Built from what the registry role offers (protocols/registry/api.py, through `ctx.services`):
every unexpired device record that carries an onion-key certificate (`onion`, onionkey.py)
whose signature checks against the record's own peer id and which is valid now, and whose
device the registry thinks online or this node is connected to; its region from the record's profile; its reputation from
the reputation service (a relative EigenTrust score, 1.0 = an average peer, mapped to [0, 1)
as s / (1 + s) so an average relay gets 0.5); its latency from this node's pings
(Overlay.latency). Bandwidth is not measured by anyone yet, so it stays 0 (pathsel floors
it). A certificate that fails verification is counted by reason and the record's relay left
out; decoded certificates are cached by their bytes (one verification per certificate).

`refresh()` (the role runs it every few seconds) asks the registry to fetch, straight from the
peer, the record of each connected peer it has no relay record of (at most once per
`REFETCH` seconds per peer): on a loaded network gossip may not bring a republished record
(ours adds the onion key just after start) for a long time.
"""
from __future__ import annotations

import logging
import math
from collections import Counter, OrderedDict
from typing import Any, Callable

from fognode.node.overlay import Overlay
from fognode.protocols.onion.hs_errors import OnionCertRejected
from fognode.protocols.onion.onionkey import OnionKeyCert, decode_onion_cert
from fognode.protocols.onion.pathsel import RelayInfo

log = logging.getLogger("fognode.onion")

CACHE = 4096
REFETCH = 15.0


class RelayDirectory:
    def __init__(self, services: Any, overlay: Overlay, clock: Callable[[], float], *,
                 max_skew: float = 300.0) -> None:
        self.services = services          # node.role.Services
        self.overlay = overlay
        self.clock = clock
        self.max_skew = max_skew
        self.rejected: Counter[str] = Counter()
        self._certs: OrderedDict[bytes, OnionKeyCert | None] = OrderedDict()
        self._asked: dict[str, float] = {}

    async def refresh(self) -> None:
        """Fetch missing relay records of connected peers (see the module docstring)."""
        registry = self.services.get("registry")
        if registry is None:
            return
        now = self.clock()
        for p in self.overlay.peers():
            if not p.connected or now - self._asked.get(p.peer_id, -REFETCH) < REFETCH:
                continue
            rec = registry.get(p.peer_id)
            if rec is not None and rec.onion and not rec.is_expired(now):
                continue
            self._asked[p.peer_id] = now
            try:
                await registry.fetch(p.peer_id)
            except Exception as e:    # a registry look-up never takes the onion role down
                log.debug("fetching %s's record failed: %r", p.peer_id, e)

    def _cert(self, peer: str, data: bytes, now: float) -> OnionKeyCert | None:
        if data in self._certs:
            held = self._certs[data]
            self._certs.move_to_end(data)
            return held if held is not None and held.valid_at(now) else None
        cert: OnionKeyCert | None
        try:
            cert = decode_onion_cert(data, now=now, peer_id=peer, max_skew=self.max_skew)
        except OnionCertRejected as e:
            self.rejected[e.reason.value] += 1
            cert = None
        self._certs[data] = cert
        while len(self._certs) > CACHE:
            self._certs.popitem(last=False)
        return cert

    def relays(self) -> list[RelayInfo]:
        """Every usable relay now (empty while the registry role is not running)."""
        registry = self.services.get("registry")
        if registry is None:
            return []
        reputation = self.services.get("reputation")
        now = self.clock()
        connected = {p.peer_id for p in self.overlay.peers() if p.connected}
        out = []
        for rec in registry.devices():
            if not rec.onion or rec.is_expired(now):
                continue
            if rec.peer_id not in connected and not registry.is_online(rec.peer_id):
                continue
            cert = self._cert(rec.peer_id, rec.onion, now)
            if cert is None:
                continue
            score = reputation.score(rec.peer_id) if reputation is not None else 1.0
            rep = score / (1.0 + score) if math.isfinite(score) and score > 0 else 0.0
            out.append(RelayInfo(rec.peer_id, cert.identity, cert.onion_key, rec.profile.region, rep, 0.0,
                                 self.overlay.latency(rec.peer_id)))
        return out

    def get(self, peer: str) -> RelayInfo | None:
        for r in self.relays():
            if r.peer_id == peer:
                return r
        return None
