"""Ed25519 key blinding, and where a period's descriptor lives in the DHT.

Time periods (rend-spec-v3 [TIME-PERIODS]; `TimePeriods`, in periods.py). Period number `n`
of a unix time `t` is `(t - offset) // length`; period n covers [n*length + offset, (n+1)*length + offset).
The defaults are Tor's: `length` = 1 day, `offset` = 12 h, so periods change at 12:00 UTC.
(Tor's offset lines periods up with its shared-random value; we have none, so the offset only
picks the wall-clock hour of the change, and Tor's is as good as any: what matters is that
every node of a network uses the same two numbers, which is why they enter the blinding.)
Lengths from 60 s (tests, devnets) to 10 days (Tor's maximum) are accepted.

Key blinding (rend-spec-v3 Appendix A, with our own domain strings). For the service's
identity key A = a*B, period n and period length L::

    h  = SHA3-256("fognode hs key blinding v1" | A | B | "key-blind" | INT_8(n) | INT_8(L)),
         clamped like an Ed25519 scalar
    A' = h*A                       (blinded public key: anyone who knows A computes it)
    a' = h*a mod l                 (blinded secret scalar: only the service computes it)
    RH'= SHA-512("fognode hs blinded nonce key" | RH | A')[:32]   (RH: second half of SHA-512(seed))

Nobody who knows only A' can tell which A it came from or link A' of two periods. Signing with
the expanded key (a', RH') follows RFC 8032 exactly (r = H(RH'|M) mod l, R = rB, S = r +
H(R|A'|M)a' mod l), so an ordinary Ed25519 verifier (`nacl.signing.VerifyKey(A')`) checks it.
RH' includes A' (Tor's does not): with one nonce key for every period, the same message signed
in two periods would share r, and since a2' = (h2/h1)a1' with h1, h2 public to whoever knows
A, the two signatures would give away a1' and then a. Our certificates never repeat a message
across periods, but the signing function is safe for any use.

The subcredential (rend-spec-v3 [SUBCRED]) ties the descriptor's encryption keys to the
identity key: `cred = SHA3-256("fognode hs credential" | A)`,
`subcred = SHA3-256("fognode hs subcredential" | cred | A')`.

DHT keys ("hash ring", rend-spec-v3 [HASHRING]): a period's descriptor is stored under
`HSDESC_REPLICAS` keys `/fognode-hsdesc/<hex SHA3-256("store-at-idx" | A' | INT_8(replica) |
INT_8(L) | INT_8(n))>`, replica = 1..2 (Tor's hsdir_n_replicas). Kademlia puts each at the k
peers closest to it; two unrelated keys put the copies in two parts of the key space, so
nodes placed next to one key cannot hide the descriptor alone. The DHT namespace is
`fognode-hsdesc`, not a path under `/fognode/`: py-libp2p's NamespacedValidator routes a key
by its first path component, and `fognode` is the registry's (`/fognode/device/...`); a
namespace of its own also gives descriptors their own DHT quota (node/dhtquota.py).
Unlike Tor, the keys mix in no shared random value (we have no consensus to produce one): whoever
knows an address can compute its future keys and place peer ids near them ahead of time. Two
replicas and the DHT's per-peer quotas raise the cost; a network-wide random beacon (e.g. from
ledger certificates) mixed into STORE_STRING would remove it.

Around a boundary: a service publishes for the current period and, within `window` seconds
of a boundary, for the neighbouring period as well (`periods_to_publish`); a client tries the
current period first, then the neighbour nearest in time when it is within `window`
(`periods_to_fetch`), so clocks skewed by less than `window` still meet.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from nacl.bindings import (crypto_core_ed25519_scalar_add, crypto_core_ed25519_scalar_mul,
                           crypto_core_ed25519_scalar_reduce, crypto_scalarmult_ed25519_base_noclamp,
                           crypto_scalarmult_ed25519_noclamp)
from nacl.signing import SigningKey

from fognode.node.errors import LocalProtocolError
from fognode.protocols.onion.address import is_valid_key
from fognode.protocols.onion.wire_names import HSDESC_NAMESPACE

HSDESC_REPLICAS = 2
HSDESC_PREFIX = f"/{HSDESC_NAMESPACE}/"

BLIND_STRING = b"fognode hs key blinding v1"
NONCE_STRING = b"key-blind"
NONCE_KEY_STRING = b"fognode hs blinded nonce key"
CRED_STRING = b"fognode hs credential"
SUBCRED_STRING = b"fognode hs subcredential"
STORE_STRING = b"store-at-idx"
# The Ed25519 base point B in its standard 32-byte encoding.
BASEPOINT = bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666")


def _u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def _clamp(h: bytes) -> bytes:
    b = bytearray(h)
    b[0] &= 248
    b[31] &= 63
    b[31] |= 64
    return bytes(b)


def _reduce(scalar32: bytes) -> bytes:
    return crypto_core_ed25519_scalar_reduce(scalar32 + bytes(32))


def blinding_factor(pubkey: bytes, period: int, length: int) -> bytes:
    """The clamped factor h for `pubkey` in `period` of `length` seconds."""
    if period < 0 or not 0 < length < 2**63:
        raise LocalProtocolError(f"period {period} / length {length} out of range")
    nonce = NONCE_STRING + _u64(period) + _u64(length)
    return _clamp(hashlib.sha3_256(BLIND_STRING + pubkey + BASEPOINT + nonce).digest())


def blind_public_key(pubkey: bytes, period: int, length: int) -> bytes:
    """A' = h*A; LocalProtocolError if `pubkey` is not a valid Ed25519 key."""
    if not is_valid_key(pubkey):
        raise LocalProtocolError("cannot blind: not a valid Ed25519 public key")
    return bytes(crypto_scalarmult_ed25519_noclamp(_reduce(blinding_factor(pubkey, period, length)), pubkey))


@dataclass(frozen=True)
class BlindedSigningKey:
    """An expanded Ed25519 secret key (scalar, nonce key) for one period; `public` is A'."""

    scalar: bytes     # a' (32 bytes, reduced mod l)
    nonce_key: bytes  # RH' (32 bytes)
    public: bytes     # A' = a'*B
    period: int

    def sign(self, message: bytes) -> bytes:
        """A standard 64-byte Ed25519 signature of `message` by A' (RFC 8032 signing with the
        expanded key; deterministic)."""
        r = crypto_core_ed25519_scalar_reduce(hashlib.sha512(self.nonce_key + message).digest())
        big_r = crypto_scalarmult_ed25519_base_noclamp(r)
        k = crypto_core_ed25519_scalar_reduce(hashlib.sha512(big_r + self.public + message).digest())
        s = crypto_core_ed25519_scalar_add(r, crypto_core_ed25519_scalar_mul(k, self.scalar))
        return bytes(big_r) + bytes(s)


def blind_signing_key(key: SigningKey, period: int, length: int) -> BlindedSigningKey:
    """The service's blinded key pair for `period`; its public half equals
    `blind_public_key(key.verify_key, period, length)` (checked here)."""
    expanded = hashlib.sha512(bytes(key)).digest()
    a = _reduce(_clamp(expanded[:32]))
    pubkey = bytes(key.verify_key)
    h = _reduce(blinding_factor(pubkey, period, length))
    scalar = crypto_core_ed25519_scalar_mul(h, a)
    public = bytes(crypto_scalarmult_ed25519_base_noclamp(scalar))
    if public != blind_public_key(pubkey, period, length):  # never expected; guards the arithmetic
        raise LocalProtocolError("blinded secret and public keys disagree")
    nonce_key = hashlib.sha512(NONCE_KEY_STRING + expanded[32:] + public).digest()[:32]
    return BlindedSigningKey(bytes(scalar), nonce_key, public, period)


def credential(pubkey: bytes) -> bytes:
    return hashlib.sha3_256(CRED_STRING + pubkey).digest()


def subcredential(pubkey: bytes, blinded: bytes) -> bytes:
    """N_hs_subcred: known to whoever knows the address, for one blinded key."""
    return hashlib.sha3_256(SUBCRED_STRING + credential(pubkey) + blinded).digest()


def descriptor_keys(blinded: bytes, period: int, length: int,
                    replicas: int = HSDESC_REPLICAS) -> list[str]:
    """The DHT keys a period's descriptor is stored under (one per replica, 1-based)."""
    return [HSDESC_PREFIX + hashlib.sha3_256(STORE_STRING + blinded + _u64(r) + _u64(length)
                                             + _u64(period)).hexdigest()
            for r in range(1, replicas + 1)]
