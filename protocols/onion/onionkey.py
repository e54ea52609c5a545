"""A relay's onion key: X25519, rotated on a schedule, certified by the node's identity.

Circuits authenticate a hop with the relay's onion key (the ntor handshake); clients learn it
from the relay's registry record, which carries the certificate below (encoded by `encode`,
decoded by `decode_onion_cert`). The certificate binds the onion key to the node's Ed25519
identity (its libp2p peer key), so a record or a man in the middle cannot substitute a key::

    {"v": 1, "type": "onion-key", "identity": Ed25519 32 bytes, "onion_key": X25519 32 bytes,
     "valid_from": t0, "valid_until": t1, "sig": identity's signature over the rest}

Rotation (after Tor, which rotates onion keys every few weeks and keeps the old one for a
week): `OnionKeyring.tick(now)` makes a new key `rotation` seconds after the current one was
made; a key stays usable `overlap` seconds past the end of its rotation, so a client holding a
registry record from before the rotation still completes its handshake. `overlap` must exceed
the registry record's lifetime (record_ttl, 1 h by default); the defaults are a 7-day
rotation and a 1-day overlap. `usable(now)` lists the keys a relay tries for a handshake,
newest first. The keyring's state (secrets included) is `encode()`d for its key file, which
keyfiles.py writes atomically with mode 0600.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nacl.bindings import crypto_scalarmult
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.peerid import peer_id_matches
from fognode.node.wire import Fields, pack, sign, unpack, verify
from fognode.protocols.onion.hs_errors import OnionCertReason, OnionCertRejected

VERSION = 1
CERT_TYPE = "onion-key"
DEFAULT_ROTATION = 7 * 86400
DEFAULT_OVERLAP = 86400
MAX_CERT_BYTES = 512
MAX_VALIDITY = 90 * 86400
_PROBE = bytes([0x58] * 32)   # any scalar: a small-order point multiplies to zero, which libsodium refuses
_U63 = 2**63 - 1
_R = OnionCertReason


def is_usable_x25519(pubkey: bytes) -> bool:
    """True for a 32-byte X25519 public key that is not of small order (a handshake with a
    small-order key would give a shared secret an attacker knows)."""
    if len(pubkey) != 32:
        return False
    try:
        crypto_scalarmult(_PROBE, pubkey)
    except (CryptoError, RuntimeError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class OnionKeyCert:
    identity: bytes
    onion_key: bytes
    valid_from: int
    valid_until: int
    sig: bytes

    def body(self) -> dict[str, Any]:
        return {"v": VERSION, "type": CERT_TYPE, "identity": self.identity, "onion_key": self.onion_key,
                "valid_from": self.valid_from, "valid_until": self.valid_until}

    def encode(self) -> bytes:
        return pack({**self.body(), "sig": self.sig})

    def valid_at(self, now: float) -> bool:
        return self.valid_from <= now < self.valid_until


def sign_onion_key(identity: SigningKey, onion_key: bytes, valid_from: int, valid_until: int) -> OnionKeyCert:
    """`identity`'s certificate for `onion_key` over [valid_from, valid_until)."""
    if not is_usable_x25519(onion_key) or not 0 <= valid_from < valid_until <= valid_from + MAX_VALIDITY:
        raise LocalProtocolError("onion key certificate: bad key or validity interval")
    unsigned = OnionKeyCert(bytes(identity.verify_key), onion_key, valid_from, valid_until, b"")
    return OnionKeyCert(unsigned.identity, onion_key, valid_from, valid_until, sign(identity, unsigned.body()))


def decode_onion_cert(data: bytes, *, now: float | None, peer_id: str | None = None,
                      identity: bytes | None = None, max_skew: float = 300.0,
                      peer: str | None = None) -> OnionKeyCert:
    """Decode and verify a certificate; OnionCertRejected (MALFORMED, BAD_KEY, WRONG_IDENTITY
    when it is not for `peer_id` / `identity`, BAD_SIGNATURE, NOT_YET_VALID, EXPIRED). With
    `now` None the validity interval is not checked (decoding a stored keyring)."""
    if len(data) > MAX_CERT_BYTES:
        raise OnionCertRejected(_R.MALFORMED, f"{len(data)} bytes, over {MAX_CERT_BYTES}", peer=peer)
    try:
        f = Fields(unpack(data, max_size=MAX_CERT_BYTES, what="onion key cert"), "onion key cert",
                   versions={VERSION}, peer=peer)
        cert_type = f.str("type", max_len=32)
        cert = OnionKeyCert(f.bytes("identity", size=32), f.bytes("onion_key", size=32),
                            f.int("valid_from", lo=0, hi=_U63), f.int("valid_until", lo=0, hi=_U63),
                            f.bytes("sig", size=64))
        f.done()
    except RemoteProtocolError as e:
        raise OnionCertRejected(_R.MALFORMED, str(e), peer=peer) from None
    if cert_type != CERT_TYPE or cert.encode() != data:
        raise OnionCertRejected(_R.MALFORMED, "not a canonical onion-key certificate", peer=peer)
    if not cert.valid_from < cert.valid_until <= cert.valid_from + MAX_VALIDITY:
        raise OnionCertRejected(_R.MALFORMED, "validity interval empty or too long", peer=peer)
    if not is_usable_x25519(cert.onion_key):
        raise OnionCertRejected(_R.BAD_KEY, "onion key is of small order", peer=peer)
    if (identity is not None and identity != cert.identity) or \
            (peer_id is not None and not peer_id_matches(peer_id, cert.identity)):
        raise OnionCertRejected(_R.WRONG_IDENTITY, "certificate is for another node", peer=peer)
    if not verify(cert.identity, cert.body(), cert.sig):
        raise OnionCertRejected(_R.BAD_SIGNATURE, "not signed by the identity it names", peer=peer)
    if now is not None:
        if now + max_skew < cert.valid_from:
            raise OnionCertRejected(_R.NOT_YET_VALID, f"valid from {cert.valid_from - int(now)} s from now",
                                    peer=peer)
        if now >= cert.valid_until:
            raise OnionCertRejected(_R.EXPIRED, f"expired {int(now) - cert.valid_until} s ago", peer=peer)
    return cert


@dataclass(frozen=True)
class OnionKey:
    secret: bytes          # X25519 private key (32 bytes)
    cert: OnionKeyCert

    @property
    def public(self) -> bytes:
        return self.cert.onion_key


class OnionKeyring:
    """The relay's onion keys: the current one and those still in their overlap window."""

    def __init__(self, identity: SigningKey, *, rotation: int = DEFAULT_ROTATION,
                 overlap: int = DEFAULT_OVERLAP, keys: tuple[OnionKey, ...] = ()) -> None:
        if rotation < 60 or not 0 <= overlap <= MAX_VALIDITY - rotation:
            raise LocalProtocolError(f"onion key rotation {rotation} s / overlap {overlap} s out of range")
        self.identity = identity
        self.rotation = rotation
        self.overlap = overlap
        self.keys: list[OnionKey] = sorted(keys, key=lambda k: k.cert.valid_from)

    @property
    def current(self) -> OnionKey | None:
        return self.keys[-1] if self.keys else None

    def tick(self, now: float) -> bool:
        """Make a new key when the current one is due (or there is none) and forget expired
        ones; True when a new key was made (its certificate must be republished)."""
        self.keys = [k for k in self.keys if now < k.cert.valid_until]
        cur = self.current
        if cur is not None and now < cur.cert.valid_from + self.rotation:
            return False
        sk = PrivateKey.generate()
        start = int(now)
        cert = sign_onion_key(self.identity, bytes(sk.public_key), start, start + self.rotation + self.overlap)
        self.keys.append(OnionKey(bytes(sk), cert))
        return True

    def usable(self, now: float) -> list[OnionKey]:
        """Keys a handshake may use at `now`, newest first."""
        return [k for k in reversed(self.keys) if k.cert.valid_at(now)]

    def secret_for(self, public: bytes, now: float) -> bytes | None:
        """The secret of the usable key `public`, or None (a client used an unknown or
        retired key: the handshake fails)."""
        for k in self.usable(now):
            if k.public == public:
                return k.secret
        return None

    def encode(self) -> bytes:
        """The keyring's state for its key file (secrets included: store with mode 0600)."""
        return pack({"v": VERSION, "keys": [{"secret": k.secret, "cert": k.cert.encode()} for k in self.keys]})

    @classmethod
    def decode(cls, identity: SigningKey, data: bytes, *, rotation: int = DEFAULT_ROTATION,
               overlap: int = DEFAULT_OVERLAP) -> "OnionKeyring":
        """Read a key file written by `encode`; RemoteProtocolError (a corrupt or foreign file:
        its certificates must be this identity's and match their secrets)."""
        f = Fields(unpack(data, max_size=64 * 1024, what="onion key file"), "onion key file", versions={VERSION})
        keys = []
        for i, item in enumerate(f.list("keys", max_len=64)):
            g = Fields(item, f"onion key file entry {i}")
            secret = g.bytes("secret", size=32)
            cert = decode_onion_cert(g.bytes("cert", max_len=MAX_CERT_BYTES), now=None,
                                     identity=bytes(identity.verify_key))
            g.done()
            if bytes(PrivateKey(secret).public_key) != cert.onion_key:
                raise RemoteProtocolError(f"onion key file entry {i}: secret does not match its certificate")
            keys.append(OnionKey(secret, cert))
        f.done()
        return cls(identity, rotation=rotation, overlap=overlap, keys=tuple(keys))
