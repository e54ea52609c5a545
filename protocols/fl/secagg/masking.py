"""The arithmetic under secure aggregation: fixed-point ring, mask expansion, neighbour graph.

- Fixed point: a float vector x becomes round(x * 2^frac_bits) in the ring Z_(2^ring_bits)
  (uint64 or uint32 numpy arrays, whose additions wrap exactly as the ring needs). Sums are
  read back as two's-complement signed integers, so they are exact while
  |sum| * 2^frac_bits < 2^(ring_bits - 1); `RingSpec.check_capacity` enforces that bound.
- Masks: a 32-byte seed is expanded with the ChaCha20 stream cipher (libsodium through PyNaCl:
  the keystream is the ChaCha20-Poly1305-IETF encryption of zeros under the seed, zero nonce;
  every seed is used once) into ring elements. Seeds are BLAKE2b of the X25519 shared secret
  (pairwise masks) or of the self-mask secret, always bound to the round id.
- Neighbour graph (SecAgg+, Bell et al., CCS 2020): the participants, in a pseudorandom order
  derived from the round id, form a Harary graph: each is joined to the k/2 next and k/2
  previous in that cyclic order. k = 0 (or k >= n - 1) is the complete graph of the original
  protocol (Bonawitz et al., CCS 2017).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from nacl.bindings import crypto_aead_chacha20poly1305_ietf_encrypt

from fognode.node.errors import LocalProtocolError

SEED_LEN = 32
_NONCE = bytes(12)


@dataclass(frozen=True)
class RingSpec:
    """The fixed-point encoding: ring Z_(2^ring_bits), `frac_bits` fractional bits."""

    ring_bits: int = 64
    frac_bits: int = 24

    def __post_init__(self) -> None:
        if self.ring_bits not in (32, 64):
            raise LocalProtocolError(f"secagg ring_bits must be 32 or 64, got {self.ring_bits}")
        if not 0 <= self.frac_bits < self.ring_bits - 2:
            raise LocalProtocolError(f"secagg frac_bits must be in 0..{self.ring_bits - 3}")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype("<u8") if self.ring_bits == 64 else np.dtype("<u4")

    @property
    def signed(self) -> np.dtype:
        return np.dtype("<i8") if self.ring_bits == 64 else np.dtype("<i4")

    def check_capacity(self, n: int, max_abs: float) -> None:
        """LocalProtocolError unless n inputs bounded by `max_abs` always sum without wrapping."""
        if n * max_abs * 2.0 ** self.frac_bits >= 2.0 ** (self.ring_bits - 1):
            raise LocalProtocolError(
                f"secagg ring too small: {n} inputs of |x| <= {max_abs} with {self.frac_bits} "
                f"fractional bits overflow a {self.ring_bits}-bit ring")

    def quantize(self, x: np.ndarray, max_abs: float) -> np.ndarray:
        """x (float) -> ring elements. LocalProtocolError if any |x| > max_abs or not finite."""
        xf = np.asarray(x, dtype=np.float64)
        if xf.ndim != 1:
            raise LocalProtocolError("secagg input must be a flat vector")
        peak = float(np.max(np.abs(xf))) if xf.size else 0.0
        if not np.isfinite(peak) or peak > max_abs:
            raise LocalProtocolError(f"secagg input has |x| = {peak} above the bound {max_abs} "
                                     f"(or NaN/Inf); clip it first")
        q = np.rint(xf * 2.0 ** self.frac_bits).astype(np.int64)
        if self.ring_bits == 64:
            return q.view(np.uint64)
        return q.astype(np.uint32)          # wraps mod 2^32: two's complement

    def dequantize(self, ring: np.ndarray) -> np.ndarray:
        """Ring elements (a sum) -> float64 values, reading them as signed."""
        return ring.view(self.signed).astype(np.float64) / 2.0 ** self.frac_bits


def derive_seed(secret: bytes, round_id: bytes, purpose: bytes) -> bytes:
    """32-byte PRG seed = BLAKE2b(secret || round_id) personalised with `purpose` (<= 16 B)."""
    return hashlib.blake2b(secret + round_id, digest_size=SEED_LEN, person=purpose).digest()


def expand_mask(seed: bytes, length: int, ring: RingSpec) -> np.ndarray:
    """`length` pseudorandom ring elements from a 32-byte seed (ChaCha20 keystream)."""
    if len(seed) != SEED_LEN:
        raise LocalProtocolError("mask seeds are 32 bytes")
    nbytes = length * ring.dtype.itemsize
    stream = crypto_aead_chacha20poly1305_ietf_encrypt(bytes(nbytes), None, _NONCE, seed)
    return np.frombuffer(stream, dtype=ring.dtype, count=length)


def harary_neighbours(participants: Sequence[str], k: int, round_id: bytes) -> dict[str, frozenset[str]]:
    """peer -> its neighbours (excluding itself) in the round's SecAgg+ graph; k = 0 or
    k >= n - 1 gives the complete graph. k must be even otherwise."""
    peers = sorted(participants)
    n = len(peers)
    if len(set(peers)) != n:
        raise LocalProtocolError("secagg participants must be distinct")
    if k == 0 or k >= n - 1:
        everyone = frozenset(peers)
        return {p: everyone - {p} for p in peers}
    if k < 2 or k % 2:
        raise LocalProtocolError(f"secagg+ neighbour count k must be even and >= 2, got {k}")
    seed = int.from_bytes(derive_seed(b"", round_id, b"fognode-sa-graph"), "little")
    order = [peers[i] for i in np.random.Generator(np.random.PCG64(seed)).permutation(n)]
    out: dict[str, frozenset[str]] = {}
    for i, p in enumerate(order):
        out[p] = frozenset(order[(i + j) % n] for j in range(-(k // 2), k // 2 + 1) if j != 0)
    return out
