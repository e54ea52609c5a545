"""An ntor handshake per hop: one-way authenticated X25519 key agreement, then per-hop keys.

Tor's ntor (tor-spec "The ntor handshake", proposal 216; Goldberg, Stebila, Ustaoglu) with our
own PROTOID and HKDF-SHA256. The client knows the relay's identity ID (its Ed25519 public key,
the key behind its peer id) and its onion key B (X25519, published in its registry record and
signed by ID). It sends ID | B | X for a fresh ephemeral X; the relay, holding b, answers
Y | AUTH:

    secret_input = EXP(X,y) | EXP(X,b) | ID | B | X | Y | PROTOID
    KEY_SEED     = HMAC-SHA256(key=t_key, secret_input)          (HKDF-Extract, salt t_key)
    verify       = HMAC-SHA256(key=t_verify, secret_input)
    auth_input   = verify | ID | B | Y | X | PROTOID | "Server"
    AUTH         = HMAC-SHA256(key=t_mac, auth_input)

The client computes the same from EXP(Y,x) and EXP(B,x) and accepts only a matching AUTH
(compared in constant time): only the holder of b can produce it, so the client knows it talks
to the relay it chose (the relay learns nothing about the client: one-way authentication), and
the keys are forward-secret through y. An all-zero DH result (a low-order point) is refused.
The keys (relay_crypto.HopKeys) are HKDF-Expand(KEY_SEED, m_expand, 128) split into the forward
layer key, forward auth key, backward layer key and backward auth key.

Onion key rotation: a relay answers for any of the onion keys it still holds (current and
previous), chosen by the B the client named; a CREATE for a key it does not hold is refused.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Mapping

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base

from fognode.protocols.onion.cells import NTOR_ONIONSKIN_LEN, NTOR_REPLY_LEN
from fognode.protocols.onion.errors import HandshakeError
from fognode.protocols.onion.relay_crypto import HopKeys

PROTOID = b"fognode-ntor-x25519-sha256-1"
T_MAC = PROTOID + b":mac"
T_KEY = PROTOID + b":key_extract"
T_VERIFY = PROTOID + b":verify"
M_EXPAND = PROTOID + b":key_expand"
KEY_LEN = 32
_ZERO = bytes(32)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256."""
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = _hmac(prk, block + info + bytes([i]))
        out += block
        i += 1
    return out[:length]


def derive_keys(key_seed: bytes) -> HopKeys:
    k = hkdf_expand(key_seed, M_EXPAND, 4 * KEY_LEN)
    return HopKeys(k[0:32], k[32:64], k[64:96], k[96:128])


def keypair(secret: bytes | None = None) -> tuple[bytes, bytes]:
    """(secret, public) X25519 keys; `secret` for test vectors, random otherwise."""
    sk = secret if secret is not None else os.urandom(32)
    if len(sk) != 32:
        raise ValueError("an X25519 secret key is 32 bytes")
    return sk, crypto_scalarmult_base(sk)


def _dh(secret: bytes, public: bytes) -> bytes:
    try:
        out = crypto_scalarmult(secret, public)
    except Exception:       # libsodium refuses some points outright
        out = _ZERO
    if hmac.compare_digest(out, _ZERO):
        raise HandshakeError("a handshake public key is a low-order point")
    return out


def _secrets(xy: bytes, xb: bytes, ident: bytes, b_pub: bytes, x_pub: bytes, y_pub: bytes) -> tuple[bytes, bytes]:
    secret_input = xy + xb + ident + b_pub + x_pub + y_pub + PROTOID
    key_seed = _hmac(T_KEY, secret_input)
    verify = _hmac(T_VERIFY, secret_input)
    auth = _hmac(T_MAC, verify + ident + b_pub + y_pub + x_pub + PROTOID + b"Server")
    return key_seed, auth


@dataclass(frozen=True)
class ClientHandshake:
    """The client's state between sending the onionskin and reading the reply."""

    identity: bytes      # relay's Ed25519 identity key (32)
    onion_key: bytes     # relay's X25519 onion key B (32)
    secret: bytes        # x
    public: bytes        # X

    @classmethod
    def start(cls, identity: bytes, onion_key: bytes, secret: bytes | None = None) -> ClientHandshake:
        if len(identity) != 32 or len(onion_key) != 32:
            raise ValueError("relay identity and onion key must be 32 bytes each")
        x, x_pub = keypair(secret)
        return cls(identity, onion_key, x, x_pub)

    def onionskin(self) -> bytes:
        return self.identity + self.onion_key + self.public

    def finish(self, reply: bytes) -> HopKeys:
        """Check the relay's reply Y | AUTH; the hop's keys, or HandshakeError."""
        if len(reply) != NTOR_REPLY_LEN:
            raise HandshakeError(f"reply is {len(reply)} bytes, want {NTOR_REPLY_LEN}")
        y_pub, auth = reply[:32], reply[32:]
        key_seed, expect = _secrets(_dh(self.secret, y_pub), _dh(self.secret, self.onion_key),
                                    self.identity, self.onion_key, self.public, y_pub)
        if not hmac.compare_digest(auth, expect):
            raise HandshakeError("AUTH does not match: not the relay's onion key, or a tampered reply")
        return derive_keys(key_seed)


def server_handshake(identity: bytes, onion_keys: Mapping[bytes, bytes], onionskin: bytes,
                     secret: bytes | None = None) -> tuple[bytes, HopKeys]:
    """The relay's side: (reply Y | AUTH, hop keys). `onion_keys` maps each onion public key
    the relay still answers for to its secret key. HandshakeError if the onionskin names
    another identity or an onion key not held, or carries a bad point."""
    if len(onionskin) != NTOR_ONIONSKIN_LEN:
        raise HandshakeError(f"onionskin is {len(onionskin)} bytes, want {NTOR_ONIONSKIN_LEN}")
    ident, b_pub, x_pub = onionskin[:32], onionskin[32:64], onionskin[64:96]
    if not hmac.compare_digest(ident, identity):
        raise HandshakeError("the onionskin is for another relay identity")
    b = onion_keys.get(b_pub)
    if b is None:
        raise HandshakeError("the onionskin names an onion key this relay does not hold (rotated out?)")
    y, y_pub = keypair(secret)
    key_seed, auth = _secrets(_dh(y, x_pub), _dh(b, x_pub), ident, b_pub, x_pub, y_pub)
    return y_pub + auth, derive_keys(key_seed)
