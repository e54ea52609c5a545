"""The INTRODUCE payload between a client and a hidden service, and the service's replay cache.

The circuit layer carries the payload opaquely (rendezvous.py); this module is what goes in
it (rend-spec-v3 [INTRODUCE1] in small). The client, having opened the service's descriptor,
picks an introduction point (relay, auth key, enc key) and sends

    INTRODUCE1 data = auth_key (32) | SealedBox(enc_key, msgpack {"v": 1, "rp": rendezvous
                      relay's peer id, "rp_identity": its Ed25519 key, "rp_onion_key": its
                      X25519 onion key, "cookie": 20 bytes, "onionskin": ntor onionskin})

The rendezvous relay's keys travel with it (Tor's link specifiers and onion key in
INTRODUCE2), so the service can reach a relay its own directory does not list yet; the
identity must be the peer id's key, and the ntor handshake with the onion key authenticates
the relay.

SealedBox (libsodium: an ephemeral X25519 key and XSalsa20-Poly1305) encrypts to the
service's per-introduction-point key, so the introduction relay, which sees the payload, does
not learn the rendezvous point or the cookie. The onionskin is an ntor handshake
(ntor.py) with the introduction point's auth key as "identity" and its enc key as "onion
key" (Tor's hs-ntor binds the same two keys): only the service holds the enc key's secret,
so the keys of the end-to-end virtual hop are known to the client and the service alone.

`IntroReplayCache` keeps the client ephemeral keys seen per introduction point (bounded,
oldest forgotten first), so an INTRODUCE2 replayed by the introduction relay does not make
the service build a second rendezvous circuit. Sans-IO, no trio.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from fognode.node.errors import RemoteProtocolError
from fognode.node.peerid import peer_id_matches
from fognode.node.wire import Fields, pack, unpack
from fognode.protocols.onion.cells import MAX_DATA, MAX_PEER_ID_LEN, NTOR_ONIONSKIN_LEN
from fognode.protocols.onion.onionkey import is_usable_x25519
from fognode.protocols.onion.rendezvous import AUTH_KEY_LEN, COOKIE_LEN

VERSION = 1
MAX_PAYLOAD = MAX_DATA - AUTH_KEY_LEN


@dataclass(frozen=True)
class Introduction:
    """What the service learns from an INTRODUCE2."""

    rendezvous: str       # peer id of the rendezvous relay
    rp_identity: bytes    # its Ed25519 identity key
    rp_onion_key: bytes   # its X25519 onion key
    cookie: bytes
    onionskin: bytes      # the client's end-to-end ntor onionskin


def introduce1_data(auth_key: bytes, enc_key: bytes, rendezvous: str, rp_identity: bytes, rp_onion_key: bytes,
                    cookie: bytes, onionskin: bytes) -> bytes:
    """INTRODUCE1's data for the introduction point registered under `auth_key`."""
    plain = pack({"v": VERSION, "rp": rendezvous, "rp_identity": rp_identity, "rp_onion_key": rp_onion_key,
                  "cookie": cookie, "onionskin": onionskin})
    return auth_key + SealedBox(PublicKey(enc_key)).encrypt(plain)


def open_introduce2(data: bytes, enc_secret: bytes) -> Introduction:
    """Decrypt and decode an INTRODUCE2 payload; RemoteProtocolError naming what is wrong
    (it came from whoever knows the descriptor, through the introduction relay)."""
    if len(data) > MAX_PAYLOAD:
        raise RemoteProtocolError(f"introduce2: {len(data)} bytes, over {MAX_PAYLOAD}")
    try:
        plain = SealedBox(PrivateKey(enc_secret)).decrypt(data)
    except (CryptoError, ValueError, TypeError):
        raise RemoteProtocolError("introduce2: does not decrypt with this introduction point's key") from None
    f = Fields(unpack(plain, max_size=len(plain) + 1, what="introduce2"), "introduce2", versions={VERSION})
    rp = f.str("rp", max_len=MAX_PEER_ID_LEN)
    rp_identity = f.bytes("rp_identity", size=32)
    rp_onion_key = f.bytes("rp_onion_key", size=32)
    cookie = f.bytes("cookie", size=COOKIE_LEN)
    skin = f.bytes("onionskin", size=NTOR_ONIONSKIN_LEN)
    f.done()
    if not peer_id_matches(rp, rp_identity):
        raise RemoteProtocolError("introduce2: rp_identity is not the rendezvous relay's key")
    if not is_usable_x25519(rp_onion_key):
        raise RemoteProtocolError("introduce2: rp_onion_key is not a usable X25519 key")
    return Introduction(rp, rp_identity, rp_onion_key, cookie, skin)


class IntroReplayCache:
    """Client ephemeral keys already answered, per introduction point auth key."""

    def __init__(self, limit: int = 16384) -> None:
        self.limit = limit
        self._seen: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()

    def first_time(self, auth_key: bytes, onionskin: bytes) -> bool:
        """True (and remembered) the first time this onionskin reaches this introduction point."""
        key = (auth_key, onionskin[-32:])
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        return True
