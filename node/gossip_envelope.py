"""Gossip envelopes and the store of messages kept for pulls (sans-IO).

- Envelope: each gossip message is `{"b": body, "sig": sig}` with body
  `{"v": 1, "k": "m"|"h", "o": origin Ed25519 key, "e": epoch, "t": topic, "s": seq, "d": data}`
  signed by the origin over pack(body). `seq` counts per (origin, topic) from 1 within an
  `epoch` (the publisher's start time in ms, so a restarted publisher's epoch is larger).
  `"h"` (head) messages carry no data: they announce the latest seq so a lost LAST message is
  noticed too. `seal` makes one, `open_envelope` decodes and verifies one.
- MessageStore: our own recent messages per topic (a ring, for pulls of what we published)
  and a bounded cache of others' messages we relayed (for pulls by our peers).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields, pack, sign, unpack, verify

KIND_MESSAGE = "m"
KIND_HEAD = "h"

# ---------------------------------------------------------------------------------------------
# Envelope (sans-IO)

@dataclass(frozen=True)
class Envelope:
    kind: str
    origin: bytes      # 32-byte Ed25519 public key
    epoch: int
    topic: str
    seq: int
    data: bytes
    raw: bytes         # the encoded envelope, as sent


def seal(key: SigningKey, kind: str, epoch: int, topic: str, seq: int, data: bytes) -> Envelope:
    body = {"v": 1, "k": kind, "o": bytes(key.verify_key), "e": epoch, "t": topic, "s": seq,
            "d": data}
    raw = pack({"b": body, "sig": sign(key, body)})
    return Envelope(kind, bytes(key.verify_key), epoch, topic, seq, data, raw)


def open_envelope(raw: bytes, *, max_size: int, peer: str | None = None) -> Envelope:
    """Decode and verify one envelope. Raises RemoteProtocolError naming what was wrong."""
    outer = Fields(unpack(raw, max_size=max_size, what="gossip envelope"), "gossip envelope",
                   peer=peer)
    sig = outer.bytes("sig", size=64)
    body_raw = outer.map("b", max_len=16)
    outer.done()
    f = Fields(body_raw, "gossip envelope body", versions={1}, peer=peer)
    kind = f.str("k", max_len=1)
    if kind not in (KIND_MESSAGE, KIND_HEAD):
        raise RemoteProtocolError(f"gossip envelope: unknown kind {kind!r}", peer=peer)
    origin = f.bytes("o", size=32)
    epoch = f.int("e", lo=0, hi=2**63 - 1)
    topic = f.str("t", max_len=256)
    seq = f.int("s", lo=1, hi=2**63 - 1)
    data = f.bytes("d", max_len=max_size)
    f.done()
    if not verify(origin, body_raw, sig):
        raise RemoteProtocolError("gossip envelope: bad signature", peer=peer)
    return Envelope(kind, origin, epoch, topic, seq, data, raw)




# ---------------------------------------------------------------------------------------------
# Message store: our own ring per topic, plus a cache of what we relayed (sans-IO)

class MessageStore:
    def __init__(self, *, ring_size: int = 1024, relay_cache: int = 4096) -> None:
        self.ring_size = ring_size
        self.relay_cache = relay_cache
        self._own: dict[str, OrderedDict[int, bytes]] = {}
        self._lowest_forgotten: dict[str, int] = {}
        self._relayed: OrderedDict[tuple[str, bytes, int, int], bytes] = OrderedDict()

    def add_own(self, topic: str, seq: int, raw: bytes) -> None:
        ring = self._own.setdefault(topic, OrderedDict())
        ring[seq] = raw
        while len(ring) > self.ring_size:
            s, _ = ring.popitem(last=False)
            self._lowest_forgotten[topic] = s

    def own_gone(self, topic: str, seq: int) -> bool:
        return seq <= self._lowest_forgotten.get(topic, 0)

    def get_own(self, topic: str, seq: int) -> bytes | None:
        ring = self._own.get(topic)
        return None if ring is None else ring.get(seq)

    def add_relayed(self, env: Envelope) -> None:
        if env.kind != KIND_MESSAGE:
            return
        self._relayed[(env.topic, env.origin, env.epoch, env.seq)] = env.raw
        while len(self._relayed) > self.relay_cache:
            self._relayed.popitem(last=False)

    def get_relayed(self, topic: str, origin: bytes, epoch: int, seq: int) -> bytes | None:
        return self._relayed.get((topic, origin, epoch, seq))


