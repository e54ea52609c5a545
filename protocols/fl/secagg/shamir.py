"""Shamir secret sharing over the prime field GF(2^521 - 1), with Python integers.

A secret of up to 64 bytes (secure aggregation shares 32-byte X25519 keys and mask seeds) is
the constant term of a random polynomial of degree t - 1; share i is the polynomial at x_i.
Any t shares give the secret back by Lagrange interpolation at 0; fewer reveal nothing.
The field is the Mersenne prime 2^521 - 1, so every 64-byte value is a field element.

`lagrange_at_zero(xs)` is separate from `combine` so the aggregator, which reconstructs many
secrets from the same set of share holders, computes the coefficients once per holder set.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Sequence

from fognode.node.errors import LocalProtocolError, RemoteProtocolError

PRIME = 2 ** 521 - 1
MAX_SECRET_BYTES = 64
SHARE_BYTES = 66           # ceil(521 / 8): a field element, big-endian


@dataclass(frozen=True)
class Share:
    """The value y = P(x) of the sharing polynomial at the holder's coordinate x (>= 1)."""

    x: int
    y: int

    def y_bytes(self) -> bytes:
        return self.y.to_bytes(SHARE_BYTES, "big")

    @staticmethod
    def from_bytes(x: int, data: bytes) -> Share:
        """Decode a received share; RemoteProtocolError if it is not a field element."""
        if len(data) != SHARE_BYTES:
            raise RemoteProtocolError(f"shamir share must be {SHARE_BYTES} bytes, got {len(data)}")
        y = int.from_bytes(data, "big")
        if y >= PRIME or not 1 <= x < PRIME:
            raise RemoteProtocolError("shamir share is outside the field")
        return Share(x, y)


def split(secret: bytes, xs: Sequence[int], threshold: int) -> list[Share]:
    """Shares of `secret` for the holders at coordinates `xs` (distinct, >= 1); any `threshold`
    of them reconstruct it. LocalProtocolError on bad arguments."""
    if len(secret) > MAX_SECRET_BYTES:
        raise LocalProtocolError(f"shamir secrets are at most {MAX_SECRET_BYTES} bytes")
    if len(set(xs)) != len(xs) or any(not 1 <= x < PRIME for x in xs):
        raise LocalProtocolError("shamir x coordinates must be distinct and >= 1")
    if not 1 <= threshold <= len(xs):
        raise LocalProtocolError(f"shamir threshold {threshold} must be in 1..{len(xs)}")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coeffs):       # Horner
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients l_i with P(0) = sum l_i * P(x_i) for a polynomial of degree < len(xs)."""
    if len(set(xs)) != len(xs):
        raise LocalProtocolError("shamir x coordinates must be distinct")
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return out


def combine_with(coeffs: Sequence[int], ys: Sequence[int], size: int) -> bytes:
    """The secret from share values `ys` and the matching `lagrange_at_zero` coefficients.
    RemoteProtocolError when the result does not fit `size` bytes (inconsistent shares)."""
    s = sum(c * y for c, y in zip(coeffs, ys)) % PRIME
    if s >= 1 << (8 * size):
        raise RemoteProtocolError("shamir shares are inconsistent: the reconstructed value does "
                                  f"not fit {size} bytes")
    return s.to_bytes(size, "big")


def combine(shares: Sequence[Share], threshold: int, size: int) -> bytes:
    """Reconstruct a `size`-byte secret from at least `threshold` shares (uses the first
    `threshold`). LocalProtocolError if too few shares are given."""
    if len(shares) < threshold:
        raise LocalProtocolError(f"need {threshold} shares to reconstruct, got {len(shares)}")
    use = list(shares[:threshold])
    return combine_with(lagrange_at_zero([s.x for s in use]), [s.y for s in use], size)
