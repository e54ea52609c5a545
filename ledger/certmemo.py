"""Certificates from the network decoded once: the last MEMO_SIZE certificates decoded from
peers, by their encoding, so one that arrives again costs a msgpack encoding and a dictionary
lookup (about 1.5 us) instead of a decode (about 20 us: Fields checks, the order's dataclasses,
pack and BLAKE2b of its body).

A certificate reaches a node several times: from gossip, as the `prev` of the sender's next
order request (service.py; the validator has usually applied it from gossip already), and in
anti-entropy pulls (sync.py), which re-read a peer's log since the cursor. In the 4-daemon
benchmark about 10 certificate decodes per transfer were made for 4 applies (session 25's
`--count-wire`).

The key is msgpack.packb of the decoded msgpack value (`raw`, as node.wire.unpack returns it:
dicts, lists, str, bytes, ints, floats, bools, None). That encoding is injective on such values
(it keeps every type and value, and a dict's key order: a reordered map is only a miss), so a
hit returns exactly what `decode_certificate(raw)` would (it depends on nothing else; `peer` only
names the sender in errors). Only successful decodes are remembered: malformed input raises
RemoteProtocolError every time, and the caller charges the peer as before. A hit only skips
the decode; every check after it (the content check before relay, the replica's duplicate and
signature checks) runs as before.

Memory: about 2.3 KB per certificate (key and objects), so about 5 MB at MEMO_SIZE. The oldest
entry goes first, in constant time (an OrderedDict; see quorum.py). Called on the trio thread
only (gossip check, order requests, sync client).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgpack

from fognode.ledger.messages import Certificate, decode_certificate

MEMO_SIZE = 2048        # certificates (about 5 s of the 4-daemon benchmark's transfers)


class CertificateMemo:
    """`decode(raw)` = `decode_certificate(raw)`, remembered for the last `size` encodings."""

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self.size = size
        self._by_encoding: OrderedDict[bytes, Certificate] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._by_encoding)

    def decode(self, raw: Any, *, peer: str | None = None) -> Certificate:
        """The certificate `raw` encodes; RemoteProtocolError (not remembered) if malformed."""
        try:
            key = msgpack.packb(raw, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return decode_certificate(raw, peer=peer)     # not a msgpack value: the decoder says why
        cert = self._by_encoding.get(key)
        if cert is not None:
            self.hits += 1
            return cert
        cert = decode_certificate(raw, peer=peer)
        self.misses += 1
        if len(self._by_encoding) >= self.size:
            self._by_encoding.popitem(last=False)
        self._by_encoding[key] = cert
        return cert


MEMO = CertificateMemo()     # one per process: the decode is a pure function of the encoding


def decode_certificate_once(raw: Any, *, peer: str | None = None) -> Certificate:
    """`decode_certificate(raw, peer=peer)` through the process's memo (module docstring)."""
    return MEMO.decode(raw, peer=peer)
