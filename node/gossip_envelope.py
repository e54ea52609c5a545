"""Gossip envelopes and the store of messages kept for pulls (sans-IO).

- Envelope: each gossip message is `{"b": body, "sig": sig}` with body
  `{"v": 1, "k": "m"|"h", "o": origin Ed25519 key, "e": epoch, "t": topic, "s": seq, "d": data}`
  signed by the origin over pack(body). `seq` counts per (origin, topic) from 1 within an
  `epoch` (the publisher's start time in ms, so a restarted publisher's epoch is larger).
  `"h"` (head) messages carry no data: they announce the latest seq so a lost LAST message is
  noticed too. `seal` makes one, `open_envelope` decodes and verifies one.
- Batch: the data of one libp2p gossip message is one envelope, or, when its origin had
  several queued for a topic, a batch `{"v": 1, "n": [envelope, ...]}` of 2 to BATCH_MAX
  envelopes, each packed and signed as above (so each can be stored, pulled and served on
  its own). `pack_batch` makes one; `open_gossip` decodes either form into its envelopes. A
  batch costs one libp2p message, signature check and relay for all its envelopes: with 256-byte
  messages py-libp2p's per-message work (framing, Noise, yamux, the per-message task, one
  Ed25519 check) is about 20 times our own per-envelope work. Nodes of before batches reject a
  batch as a malformed envelope: a network must not mix them.
- MessageStore: our own recent messages per topic (a ring, for pulls of what we published)
  and a cache of others' messages we relayed (for pulls by our peers), bounded in count and
  bytes and charged per forwarding peer.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields, pack, sign, unpack, verify

KIND_MESSAGE = "m"
KIND_HEAD = "h"
BATCH_MAX = 64          # envelopes in one batch (the receiver's validator opens all at once)
BATCH_ITEM_OVERHEAD = 6  # msgpack bytes around each envelope in a batch (bin 32 header + slack)
BATCH_OVERHEAD = 16      # msgpack bytes of a batch besides its envelopes

_RelayKey = tuple[str, bytes, int, int]   # (topic, origin, epoch, seq)

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


def open_envelope(raw: bytes, *, max_size: int, peer: str | None = None,
                  signed_by_origin: bool = False) -> Envelope:
    """Decode and verify one envelope. Raises RemoteProtocolError naming what was wrong.

    `signed_by_origin=True` skips the Ed25519 check of the envelope's own signature: only for
    `raw` that arrived as the data of a libp2p pubsub message whose signature py-libp2p
    checked (strict signing) with the key of its `from` peer id, when the caller then checks
    that the envelope's origin is that same key. The origin's signature then already covers
    these bytes, and one Ed25519 verification per gossip message is saved (half the signature
    work of a gossip-flood victim). Such an envelope must be verified before it is served to
    a peer that pulls it (node/gossip_pull.py), whose check of the inner signature would
    otherwise charge us for an origin's bad envelope."""
    return _envelope(unpack(raw, max_size=max_size, what="gossip envelope"), raw, max_size=max_size,
                     peer=peer, signed_by_origin=signed_by_origin)


def _envelope(decoded: object, raw: bytes, *, max_size: int, peer: str | None,
              signed_by_origin: bool) -> Envelope:
    outer = Fields(decoded, "gossip envelope", peer=peer)
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
    if not signed_by_origin and not verify(origin, body_raw, sig):
        raise RemoteProtocolError("gossip envelope: bad signature", peer=peer)
    return Envelope(kind, origin, epoch, topic, seq, data, raw)


def pack_batch(raws: list[bytes]) -> bytes:
    """The data of one libp2p message carrying the envelopes `raws` (2 to BATCH_MAX)."""
    if not 2 <= len(raws) <= BATCH_MAX:
        raise ValueError(f"a gossip batch holds 2 to {BATCH_MAX} envelopes, got {len(raws)}")
    return pack({"v": 1, "n": raws})


def batch_size(sizes: list[int]) -> int:
    """An upper bound of len(pack_batch(raws)) for envelopes of these sizes."""
    return BATCH_OVERHEAD + sum(n + BATCH_ITEM_OVERHEAD for n in sizes)


def open_gossip(data: bytes, *, max_size: int, peer: str | None = None,
                signed_by_origin: bool = False) -> list[Envelope]:
    """The envelopes in the data of one libp2p gossip message: one envelope or a batch
    (module doc), each decoded and verified as `open_envelope` does. Raises
    RemoteProtocolError naming what was wrong; a batch with one bad envelope is bad whole.
    The caller checks that every envelope is of the libp2p message's topic and signer."""
    decoded = unpack(data, max_size=max_size, what="gossip message")
    if not (isinstance(decoded, dict) and "n" in decoded):
        return [_envelope(decoded, data, max_size=max_size, peer=peer,
                          signed_by_origin=signed_by_origin)]
    f = Fields(decoded, "gossip batch", versions={1}, peer=peer)
    raws = f.list("n", max_len=BATCH_MAX)
    f.done()
    if len(raws) < 2:
        raise RemoteProtocolError(f"gossip batch: {len(raws)} envelopes, at least 2 expected",
                                  peer=peer)
    out = []
    for raw in raws:
        if not isinstance(raw, bytes):
            raise RemoteProtocolError("gossip batch: an item is not bytes", peer=peer)
        out.append(open_envelope(raw, max_size=max_size, peer=peer,
                                 signed_by_origin=signed_by_origin))
    return out


# ---------------------------------------------------------------------------------------------
# Message store: our own ring per topic, plus a cache of what we relayed (sans-IO)

class MessageStore:
    """Our own ring per topic, and the relay cache: others' messages we validated, at most
    `relay_cache` of them and `relay_bytes` in all, least recent out first. The cache is
    charged to the peer that forwarded each message: one forwarder holds at most 1/`share`
    of either bound (its own oldest go first), so a flood from one peer cannot push out
    what the others relayed."""

    def __init__(self, *, ring_size: int = 1024, relay_cache: int = 4096,
                 relay_bytes: int = 32 * 1024 * 1024, share: int = 4) -> None:
        self.ring_size = ring_size
        self.relay_cache = relay_cache
        self.relay_bytes = relay_bytes
        self.quota = (max(1, relay_cache // share), max(1, relay_bytes // share))
        self._own: dict[str, OrderedDict[int, bytes]] = {}
        self._lowest_forgotten: dict[str, int] = {}
        self._relayed: OrderedDict[_RelayKey, tuple[bytes, str]] = OrderedDict()
        self._by_forwarder: dict[str, OrderedDict[_RelayKey, None]] = {}
        self._forwarder_bytes: dict[str, int] = {}
        self.bytes = 0

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

    def add_relayed(self, env: Envelope, forwarder: str = "") -> None:
        if env.kind != KIND_MESSAGE:
            return
        key = (env.topic, env.origin, env.epoch, env.seq)
        size = len(env.raw)
        if key in self._relayed or size > self.quota[1]:
            return
        while forwarder in self._by_forwarder and (
                len(self._by_forwarder[forwarder]) >= self.quota[0]
                or self._forwarder_bytes[forwarder] + size > self.quota[1]):
            self._remove(next(iter(self._by_forwarder[forwarder])))
        self._relayed[key] = (env.raw, forwarder)
        self._by_forwarder.setdefault(forwarder, OrderedDict())[key] = None
        self._forwarder_bytes[forwarder] = self._forwarder_bytes.get(forwarder, 0) + size
        self.bytes += size
        while len(self._relayed) > self.relay_cache or self.bytes > self.relay_bytes:
            self._remove(next(iter(self._relayed)))

    def _remove(self, key: _RelayKey) -> None:
        raw, forwarder = self._relayed.pop(key)
        self.bytes -= len(raw)
        mine = self._by_forwarder[forwarder]
        del mine[key]
        self._forwarder_bytes[forwarder] -= len(raw)
        if not mine:
            del self._by_forwarder[forwarder], self._forwarder_bytes[forwarder]

    def forget_relayed(self, topic: str, origin: bytes, epoch: int, seq: int) -> None:
        if (topic, origin, epoch, seq) in self._relayed:
            self._remove((topic, origin, epoch, seq))

    def get_relayed(self, topic: str, origin: bytes, epoch: int, seq: int) -> bytes | None:
        hit = self._relayed.get((topic, origin, epoch, seq))
        return None if hit is None else hit[0]
