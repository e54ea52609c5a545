"""Which peers are known to hold which recent pubsub messages, so no copy is sent to them (sans-IO).

A peer that sent us a copy of a message has it; so has a peer that told us IDONTWANT for it
(GossipSub v1.2). Forwarding the message to such a peer only makes a duplicate that it pays
to decrypt, parse and drop (and we pay to encode, encrypt and send). py-libp2p 0.8.1 leaves
out of a forward the forwarder, the origin and peers whose IDONTWANT arrived before the
forward; the copies that arrive from other peers before the forward are not used. In a full
mesh of 4 (a ledger committee) each node gets every message from the origin and from the two
other receivers, and a copy read while the first one waits for its task, or while our forward
waits in the peer's outbound queue, is exactly such a copy. nim-libp2p does the same
(`validationSeen` in gossipsub.nim: peers that sent a message during its validation are left
out of the relay; heDontWants are checked at relay time).

`PeerCopies` keeps, per peer, the ids of the last `per_peer` messages the peer sent us
(insertion order; the oldest forgotten first, in constant time: an OrderedDict, since deleting
the first key of a plain dict leaves a hole that every later eviction walks over again), so its
memory is bounded per connected peer whatever a peer sends. `note` records a copy, `has` answers the forwarding question, `forget`
drops a peer that left, `without_holders` filters a forward's peers. node/p2pfix_copies.py
asks it when a message is forwarded and again when the forward is written. Leaving a peer out
never loses a message for it: the peer has the message already.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Iterable

PER_PEER = 512      # message ids remembered per peer (about 4 s of a 100 msgs/s stream)


class PeerCopies:
    """Per peer, the ids of recent messages it sent us (module doc)."""

    def __init__(self, per_peer: int = PER_PEER) -> None:
        if per_peer < 1:
            raise ValueError(f"per_peer must be at least 1, got {per_peer}")
        self.per_peer = per_peer
        self._held: dict[Hashable, OrderedDict[bytes, None]] = {}
        self.left_out = 0       # copies not sent because the peer held the message

    def note(self, peer: Hashable, msg_id: bytes) -> None:
        """`peer` sent us a copy of `msg_id`."""
        held = self._held.get(peer)
        if held is None:
            held = self._held[peer] = OrderedDict()
        elif msg_id in held:
            return
        held[msg_id] = None
        if len(held) > self.per_peer:
            held.popitem(last=False)

    def has(self, peer: Hashable, msg_id: bytes) -> bool:
        held = self._held.get(peer)
        return held is not None and msg_id in held

    def forget(self, peer: Hashable) -> None:
        self._held.pop(peer, None)

    def without_holders(self, peers: Iterable[Hashable], msg_id: bytes) -> list[Hashable]:
        """`peers` less those that sent us `msg_id` (counted in `left_out`)."""
        out = []
        for p in peers:
            if self.has(p, msg_id):
                self.left_out += 1
            else:
                out.append(p)
        return out
