"""Meeting points at a relay: introduction points and rendezvous points (rend-spec-v3 sections
"Introduction protocol" and "Rendezvous protocol"), the relay-side bookkeeping only.

A hidden service keeps circuits to a few introduction points, each established with
ESTABLISH_INTRO(auth key | Ed25519 signature by that key over INTRO_LABEL | auth key | the
introduction point's identity); a client reaches the service by sending INTRODUCE1(auth key |
payload) to the same relay, which hands the payload to the service's circuit as INTRODUCE2 and
answers INTRODUCE_ACK. The client meanwhile builds a circuit to a rendezvous point and leaves a
random cookie there (ESTABLISH_RENDEZVOUS); the service, having read the rendezvous point and
the cookie from the payload (encrypted to it: the hidden-service layer's business, not the
relay's), builds its own circuit there and sends RENDEZVOUS1(cookie | reply); the rendezvous
point passes the reply to the client as RENDEZVOUS2 and joins the two circuits. From then on it
forwards every cell not addressed to itself from one circuit into the other (relay.py), and the
client and the service talk through an end-to-end virtual hop (circuit.py `add_virtual_hop`)
that the rendezvous point cannot read. Neither side learns the other's address: each only knows
its own circuit up to the meeting relay.

The payloads are opaque here. This module keeps the two tables (auth key -> service circuit,
cookie -> waiting client circuit), checks the fields and the signature, and forgets entries
whose circuit closed.
"""
from __future__ import annotations

from typing import Generic, TypeVar

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from fognode.protocols.onion.errors import CellError

INTRO_LABEL = b"fognode-onion-establish-intro-v1"
AUTH_KEY_LEN = 32
SIGNATURE_LEN = 64
COOKIE_LEN = 20

C = TypeVar("C")


def establish_intro_data(auth_key: SigningKey, intro_identity: bytes) -> bytes:
    """ESTABLISH_INTRO's data, signed by the service's introduction auth key."""
    pub = bytes(auth_key.verify_key)
    return pub + auth_key.sign(INTRO_LABEL + pub + intro_identity).signature


def parse_establish_intro(data: bytes, intro_identity: bytes) -> bytes:
    """The auth key of a valid ESTABLISH_INTRO for this relay (CellError otherwise)."""
    if len(data) != AUTH_KEY_LEN + SIGNATURE_LEN:
        raise CellError(f"establish_intro: {len(data)} bytes, want {AUTH_KEY_LEN + SIGNATURE_LEN}")
    pub, sig = data[:AUTH_KEY_LEN], data[AUTH_KEY_LEN:]
    try:
        VerifyKey(pub).verify(INTRO_LABEL + pub + intro_identity, sig)
    except (BadSignatureError, ValueError):
        raise CellError("establish_intro.signature: does not verify for this introduction point") from None
    return pub


def split_keyed(data: bytes, key_len: int, what: str) -> tuple[bytes, bytes]:
    """(key, payload) of INTRODUCE1 (auth key) or RENDEZVOUS1 (cookie)."""
    if len(data) < key_len:
        raise CellError(f"{what}: shorter than its {key_len}-byte key")
    return data[:key_len], data[key_len:]


class MeetingPoints(Generic[C]):
    """The introduction and rendezvous tables of one relay (C: the relay's circuit type)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self.intro: dict[bytes, C] = {}
        self.rendezvous: dict[bytes, C] = {}

    def establish_intro(self, auth_key: bytes, circ: C) -> None:
        """A newer circuit for the same auth key replaces the older one (the service rebuilt it)."""
        if auth_key not in self.intro and len(self.intro) >= self.max_entries:
            raise CellError("establish_intro: this relay holds too many introduction points")
        self.intro[auth_key] = circ

    def establish_rendezvous(self, cookie: bytes, circ: C) -> None:
        if len(cookie) != COOKIE_LEN:
            raise CellError(f"establish_rendezvous: cookie of {len(cookie)} bytes, want {COOKIE_LEN}")
        if cookie in self.rendezvous:
            raise CellError("establish_rendezvous: cookie already in use")
        if len(self.rendezvous) >= self.max_entries:
            raise CellError("establish_rendezvous: this relay holds too many rendezvous cookies")
        self.rendezvous[cookie] = circ

    def take_rendezvous(self, cookie: bytes) -> C | None:
        return self.rendezvous.pop(cookie, None)

    def forget(self, circ: C) -> None:
        self.intro = {k: c for k, c in self.intro.items() if c is not circ}
        self.rendezvous = {k: c for k, c in self.rendezvous.items() if c is not circ}
