"""Hidden-service descriptors: built by the service, checked by DHT nodes, opened by clients.

A descriptor (after rend-spec-v3 [DESC-OUTER], [HS-DESC-ENCRYPTION-KEYS]) is one msgpack map
in two layers:

Outer layer, readable and checkable by anyone (a DHT node validates it without the address)::

    {"v": 1, "blinded": A', "period": n, "period_length": L, "revision": r,
     "issued": t0, "expires": t1, "cert": CERT, "salt": 32 bytes, "inner": ciphertext,
     "sig": Ed25519 signature by CERT's key over the canonical encoding of the rest}
    CERT = {"v": 1, "type": "hsdesc-signing", "key": descriptor-signing public key,
            "signer": A', "expires": t2, "sig": signature by A' (blinded, blinding.py)}

The blinded key never signs the descriptor itself: it certifies a fresh descriptor-signing
key (Tor's descriptor-signing-key-cert), which signs the outer layer, so the long-lived
identity key is only used to derive blinded keys.

Inner layer, for those who know the address: `{"v": 1, "intro": [{"relay": peer id,
"auth_key": Ed25519 32 bytes, "enc_key": X25519 32 bytes}, ...]}` (1 to 10 introduction
points: the relay to build an introduction circuit to, the key the service's introduction
point is known by there, and the service's key for the introduction handshake). It is
encrypted with XChaCha20-Poly1305 (libsodium, through PyNaCl; Tor's AES-CTR + SHA3-MAC has no
PyNaCl binding and an AEAD does both jobs) under::

    key | nonce = SHAKE-256(A' | subcredential | INT_8(revision) | salt |
                            "fognode hsdesc inner v1", 32 + 24)

with the outer header as associated data. The subcredential needs the identity public key A
(blinding.subcredential), so a DHT node holding the descriptor (it knows only A') cannot read
the introduction points. The plaintext is a 4-byte length, the msgpack map and zero padding
to a multiple of 2048 bytes, so the ciphertext size does not tell how many introduction
points there are.

Refusals (`DescriptorRejected.reason`): OVERSIZE, MALFORMED, BAD_CERT, BAD_SIGNATURE (forged
or altered), EXPIRED (the descriptor or its certificate), FUTURE (issued ahead of our clock),
WRONG_PERIOD (not the period asked for, or another period length), WRONG_KEY (A' is not the
address' blinded key for that period), OLD_REVISION (a replay of an older revision),
UNDECRYPTABLE (the inner layer does not open with the address' keys).

The revision counter is the service's clock in milliseconds at build time (`revision_now`):
it grows across restarts without stored state (Tor's reason for its time-based counter) and
is compared only between descriptors of the same blinded key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Any, Sequence

from nacl.bindings import (crypto_aead_xchacha20poly1305_ietf_decrypt,
                           crypto_aead_xchacha20poly1305_ietf_encrypt)
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.peerid import pubkey_from_peer_id
from fognode.node.wire import Fields, pack, unpack, verify
from fognode.protocols.onion.address import FogAddress, is_valid_key
from fognode.protocols.onion.blinding import blind_public_key, blind_signing_key, subcredential
from fognode.protocols.onion.periods import TimePeriods
from fognode.protocols.onion.hs_errors import DescriptorReason, DescriptorRejected
from fognode.protocols.onion.onionkey import is_usable_x25519

VERSION = 1
CERT_TYPE = "hsdesc-signing"
MAX_DESCRIPTOR_BYTES = 8192
MAX_INNER_BYTES = 6144
MAX_INTRO_POINTS = 10
PAD_BLOCK = 2048
SALT_LEN = 32
DEFAULT_LIFETIME = 3 * 3600        # Tor: 180 minutes
MAX_LIFETIME = 12 * 3600
DEFAULT_CERT_LIFETIME = 54 * 3600  # Tor: 54 hours
MAX_CERT_LIFETIME = 7 * 86400
INNER_STRING = b"fognode hsdesc inner v1"
_U63 = 2**63 - 1
_R = DescriptorReason


@dataclass(frozen=True)
class IntroPoint:
    """Where and how to introduce oneself to the service."""

    relay: str        # peer id of the introduction relay
    auth_key: bytes   # Ed25519 key the service's introduction circuit is registered under
    enc_key: bytes    # X25519 key of the service for the introduction handshake

    def to_wire(self) -> dict[str, Any]:
        return {"relay": self.relay, "auth_key": self.auth_key, "enc_key": self.enc_key}


@dataclass(frozen=True)
class OuterDescriptor:
    """The public layer: everything a DHT node can check."""

    blinded: bytes
    period: int
    period_length: int
    revision: int
    issued: int
    expires: int
    signing_key: bytes
    cert_expires: int
    cert_sig: bytes
    salt: bytes
    inner: bytes
    sig: bytes

    def cert_body(self) -> dict[str, Any]:
        return {"v": VERSION, "type": CERT_TYPE, "key": self.signing_key, "signer": self.blinded,
                "expires": self.cert_expires}

    def header(self) -> dict[str, Any]:
        """The fields the inner layer's encryption is bound to (associated data)."""
        return {"v": VERSION, "blinded": self.blinded, "period": self.period,
                "period_length": self.period_length, "revision": self.revision}

    def body(self) -> dict[str, Any]:
        """The part the descriptor-signing key signs (everything but `sig`)."""
        return {**self.header(), "issued": self.issued, "expires": self.expires,
                "cert": {**self.cert_body(), "sig": self.cert_sig}, "salt": self.salt,
                "inner": self.inner}

    def encode(self) -> bytes:
        return pack({**self.body(), "sig": self.sig})


@dataclass(frozen=True)
class HsDescriptor:
    """An opened descriptor: what a client needs to reach the service in one period."""

    address: FogAddress
    period: int
    revision: int
    issued: int
    expires: int
    intro_points: tuple[IntroPoint, ...]


def revision_now(now: float) -> int:
    """The revision counter for a descriptor built at unix time `now` (milliseconds)."""
    return int(now * 1000)


def _keys(blinded: bytes, subcred: bytes, revision: int, salt: bytes) -> tuple[bytes, bytes]:
    material = hashlib.shake_256(blinded + subcred + struct.pack(">Q", revision) + salt
                                 + INNER_STRING).digest(32 + 24)
    return material[:32], material[32:]


def _pad(body: bytes) -> bytes:
    framed = struct.pack(">I", len(body)) + body
    return framed + bytes(-len(framed) % PAD_BLOCK)


def build_descriptor(identity: SigningKey, periods: TimePeriods, period: int,
                     intro_points: Sequence[IntroPoint], *, now: float, revision: int | None = None,
                     lifetime: int = DEFAULT_LIFETIME, cert_lifetime: int = DEFAULT_CERT_LIFETIME,
                     signing_key: SigningKey | None = None, salt: bytes | None = None) -> bytes:
    """The encoded descriptor of the service `identity` for `period`, valid from `now` for
    `lifetime` seconds. A fresh descriptor-signing key is made unless one is given.
    LocalProtocolError for arguments no client would accept (no or too many intro points,
    bad keys, lifetimes out of range)."""
    if not 1 <= len(intro_points) <= MAX_INTRO_POINTS:
        raise LocalProtocolError(f"a descriptor lists 1 to {MAX_INTRO_POINTS} introduction points, "
                                 f"got {len(intro_points)}")
    for ip in intro_points:
        _check_intro(ip.relay, ip.auth_key, ip.enc_key, LocalProtocolError)
    if not 0 < lifetime <= MAX_LIFETIME or not lifetime <= cert_lifetime <= MAX_CERT_LIFETIME:
        raise LocalProtocolError(f"lifetime {lifetime} s / certificate lifetime {cert_lifetime} s "
                                 f"out of range (at most {MAX_LIFETIME} / {MAX_CERT_LIFETIME} s)")
    blinded_key = blind_signing_key(identity, period, periods.length)
    signer = signing_key or SigningKey.generate()
    issued = int(now)
    rev = revision_now(now) if revision is None else revision
    salt = os.urandom(SALT_LEN) if salt is None else salt
    draft = OuterDescriptor(blinded_key.public, period, periods.length, rev, issued,
                            issued + lifetime, bytes(signer.verify_key), issued + cert_lifetime,
                            b"", salt, b"", b"")
    cert_sig = blinded_key.sign(pack(draft.cert_body()))
    key, nonce = _keys(draft.blinded, subcredential(bytes(identity.verify_key), draft.blinded), rev, salt)
    plain = _pad(pack({"v": VERSION, "intro": [ip.to_wire() for ip in intro_points]}))
    inner = crypto_aead_xchacha20poly1305_ietf_encrypt(plain, pack(draft.header()), nonce, key)
    if len(inner) > MAX_INNER_BYTES:
        raise LocalProtocolError(f"inner layer is {len(inner)} bytes, over {MAX_INNER_BYTES}")
    unsigned = OuterDescriptor(draft.blinded, period, periods.length, rev, issued, draft.expires,
                               draft.signing_key, draft.cert_expires, cert_sig, salt, inner, b"")
    return dataclasses.replace(unsigned, sig=signer.sign(pack(unsigned.body())).signature).encode()


def _check_intro(relay: Any, auth_key: Any, enc_key: Any, error: type[Exception]) -> None:
    try:
        pubkey_from_peer_id(relay)
    except ValueError as e:
        raise error(f"introduction point relay: {e}") from None
    if not is_valid_key(auth_key):
        raise error("introduction point auth_key is not a valid Ed25519 key")
    if not is_usable_x25519(enc_key):
        raise error("introduction point enc_key is not a 32-byte X25519 key of large order")


def decode_outer(data: bytes, *, now: float, max_skew: float = 300.0,
                 peer: str | None = None) -> OuterDescriptor:
    """Decode the outer layer and check its certificate, signature and validity at `now`;
    DescriptorRejected (OVERSIZE, MALFORMED, BAD_CERT, BAD_SIGNATURE, EXPIRED, FUTURE)."""
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise DescriptorRejected(_R.OVERSIZE, f"{len(data)} bytes, over {MAX_DESCRIPTOR_BYTES}", peer=peer)
    try:
        raw = unpack(data, max_size=MAX_DESCRIPTOR_BYTES, what="hs descriptor")
        f = Fields(raw, "hs descriptor", versions={VERSION}, peer=peer)
        blinded = f.bytes("blinded", size=32)
        period = f.int("period", lo=0, hi=_U63)
        period_length = f.int("period_length", lo=1, hi=_U63)
        revision = f.int("revision", lo=0, hi=_U63)
        issued = f.int("issued", lo=0, hi=_U63)
        expires = f.int("expires", lo=0, hi=_U63)
        c = f.sub("cert", "hs descriptor signing-key cert")
        c.int("v", lo=VERSION, hi=VERSION)
        cert_type = c.str("type", max_len=32)
        signing_key = c.bytes("key", size=32)
        cert_signer = c.bytes("signer", size=32)
        cert_expires = c.int("expires", lo=0, hi=_U63)
        cert_sig = c.bytes("sig", size=64)
        c.done()
        salt = f.bytes("salt", size=SALT_LEN)
        inner = f.bytes("inner", max_len=MAX_INNER_BYTES)
        sig = f.bytes("sig", size=64)
        f.done()
    except RemoteProtocolError as e:
        raise DescriptorRejected(_R.MALFORMED, str(e), peer=peer) from None
    outer = OuterDescriptor(blinded, period, period_length, revision, issued, expires, signing_key,
                            cert_expires, cert_sig, salt, inner, sig)
    if not issued < expires <= issued + MAX_LIFETIME:
        raise DescriptorRejected(_R.MALFORMED, f"lifetime {expires - issued} s is not in (0, {MAX_LIFETIME}]",
                                 peer=peer)
    if cert_type != CERT_TYPE or cert_signer != blinded:
        raise DescriptorRejected(_R.BAD_CERT, "the signing-key certificate is not a descriptor-signing "
                                              "certificate of this blinded key", peer=peer)
    if outer.encode() != data:
        raise DescriptorRejected(_R.MALFORMED, "not in canonical encoding", peer=peer)
    if not expires <= cert_expires <= issued + MAX_CERT_LIFETIME:
        raise DescriptorRejected(_R.BAD_CERT, "the signing-key certificate must outlive the descriptor "
                                              f"and last at most {MAX_CERT_LIFETIME} s", peer=peer)
    if not is_valid_key(blinded) or not verify(blinded, outer.cert_body(), cert_sig):
        raise DescriptorRejected(_R.BAD_SIGNATURE, "signing-key certificate not signed by the blinded key",
                                 peer=peer)
    if not verify(signing_key, outer.body(), sig):
        raise DescriptorRejected(_R.BAD_SIGNATURE, "descriptor not signed by its certified signing key",
                                 peer=peer)
    if now >= expires:
        raise DescriptorRejected(_R.EXPIRED, f"expired {int(now) - expires} s ago", peer=peer)
    if issued > now + max_skew:
        raise DescriptorRejected(_R.FUTURE, f"issued {issued - int(now)} s in the future", peer=peer)
    return outer


def _decode_inner(plain: bytes, peer: str | None) -> tuple[IntroPoint, ...]:
    try:
        if len(plain) < 4 or struct.unpack(">I", plain[:4])[0] > len(plain) - 4:
            raise RemoteProtocolError("hs descriptor inner layer: bad length prefix", peer=peer)
        n = struct.unpack(">I", plain[:4])[0]
        if any(plain[4 + n:]):
            raise RemoteProtocolError("hs descriptor inner layer: padding is not zero", peer=peer)
        f = Fields(unpack(plain[4:4 + n], max_size=MAX_INNER_BYTES, what="hs descriptor inner layer"),
                   "hs descriptor inner layer", versions={VERSION}, peer=peer)
        raw_points = f.list("intro", max_len=MAX_INTRO_POINTS)
        f.done()
        points = []
        for i, item in enumerate(raw_points):
            g = Fields(item, f"hs descriptor intro point {i}", peer=peer)
            relay = g.str("relay", max_len=128)
            auth_key = g.bytes("auth_key", size=32)
            enc_key = g.bytes("enc_key", size=32)
            g.done()
            _check_intro(relay, auth_key, enc_key, RemoteProtocolError)
            points.append(IntroPoint(relay, auth_key, enc_key))
        if not points:
            raise RemoteProtocolError("hs descriptor lists no introduction point", peer=peer)
    except RemoteProtocolError as e:
        raise DescriptorRejected(_R.MALFORMED, str(e), peer=peer) from None
    return tuple(points)


def open_descriptor(data: bytes, address: FogAddress, period: int, periods: TimePeriods, *,
                    now: float, min_revision: int | None = None, max_skew: float = 300.0,
                    peer: str | None = None) -> HsDescriptor:
    """The client's decoder: check the outer layer (decode_outer), that it is `address`'
    descriptor for `period` (WRONG_PERIOD, WRONG_KEY), not older than `min_revision` (the
    highest revision already seen for that period; OLD_REVISION), then decrypt and decode the
    inner layer (UNDECRYPTABLE, MALFORMED). Raises DescriptorRejected."""
    outer = decode_outer(data, now=now, max_skew=max_skew, peer=peer)
    if outer.period != period or outer.period_length != periods.length:
        raise DescriptorRejected(_R.WRONG_PERIOD, f"descriptor is for period {outer.period} of "
                                 f"{outer.period_length} s, wanted {period} of {periods.length} s", peer=peer)
    if outer.blinded != blind_public_key(address.pubkey, period, periods.length):
        raise DescriptorRejected(_R.WRONG_KEY, f"descriptor is not {address.host}'s for period {period}",
                                 peer=peer)
    if min_revision is not None and outer.revision < min_revision:
        raise DescriptorRejected(_R.OLD_REVISION, f"revision {outer.revision} is older than "
                                 f"{min_revision} already seen", peer=peer)
    key, nonce = _keys(outer.blinded, subcredential(address.pubkey, outer.blinded), outer.revision, outer.salt)
    try:
        plain = crypto_aead_xchacha20poly1305_ietf_decrypt(outer.inner, pack(outer.header()), nonce, key)
    except (CryptoError, ValueError, TypeError):
        raise DescriptorRejected(_R.UNDECRYPTABLE, "inner layer does not open with the address' keys",
                                 peer=peer) from None
    return HsDescriptor(address, outer.period, outer.revision, outer.issued, outer.expires,
                        _decode_inner(plain, peer))
