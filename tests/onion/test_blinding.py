"""Time periods, key blinding and DHT keys (protocols/onion/blinding.py).

The blinded keys are checked against an independent pure-Python Ed25519 (the arithmetic of
RFC 8032 section 6), and signatures made with blinded keys against PyNaCl's standard verifier.
"""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from fognode.node.errors import ConfigError, LocalProtocolError
from fognode.protocols.onion.blinding import (HSDESC_PREFIX, blind_public_key, blind_signing_key, blinding_factor,
                                              descriptor_keys, subcredential)
from fognode.protocols.onion.periods import TimePeriods

# ---- a tiny reference Ed25519 (RFC 8032 section 6), independent of libsodium ----
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _add(p1: tuple[int, int, int, int], p2: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a, b = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
    c, dd = t1 * 2 * D * t2 % P, z1 * 2 * z2 % P
    e, f, g, h = b - a, dd - c, dd + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def _mul(s: int, p: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _decode(b: bytes) -> tuple[int, int, int, int]:
    y = int.from_bytes(b, "little") & ((1 << 255) - 1)
    sign = b[31] >> 7
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P)
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x & 1) != sign:
        x = P - x
    return x, y, 1, x * y % P


def _encode(p: tuple[int, int, int, int]) -> bytes:
    x, y, z, _ = p
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def test_reference_blinded_key_matches() -> None:
    key = SigningKey(bytes(range(32)))
    pub = bytes(key.verify_key)
    for period in (0, 1, 20000, 2**40):
        h = int.from_bytes(blinding_factor(pub, period, 86400), "little")
        assert _encode(_mul(h, _decode(pub))) == blind_public_key(pub, period, 86400)
        # the secret side: a' = h*a mod l gives the same point
        a = bytearray(hashlib.sha512(bytes(key)).digest()[:32])
        a[0] &= 248
        a[31] &= 63
        a[31] |= 64
        a_blind = h * int.from_bytes(a, "little") % L
        base = _decode(bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666"))
        assert _encode(_mul(a_blind, base)) == blind_signing_key(key, period, 86400).public


def test_vectors() -> None:
    key = SigningKey(bytes(range(32)))
    b = blind_signing_key(key, 20000, 86400)
    assert b.public.hex() == "0c9b9d3414030317ec2c4005483a551452b709432cc017d22dcfe49780836be3"
    assert b.sign(b"fognode").hex() == (
        "f99f4dfe24d1fddfc5a07e44198875c4537de326b618a0b7d0812e2ef07ca421"
        "55e5b5ad5f50779928c9523c5c06ba3351d0eade57afa1b295c669846c96a500")
    assert descriptor_keys(b.public, 20000, 86400) == [
        HSDESC_PREFIX + "81fae750256b1f6cf5c01b75125fd4b684b505c56c4510eac3d9cf432732e988",
        HSDESC_PREFIX + "114619877556504e62fe948168d45286f751095e998beef8d7f6f6fdf4ab4734"]
    assert subcredential(bytes(key.verify_key), b.public).hex() == \
        "5ddd60f0e03da7297ccf9860d75a56e707e47320557c3d251c72ca05c8d015d5"


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(0, 2**48), st.binary(max_size=200))
def test_blinded_signatures_verify_with_standard_ed25519(seed: bytes, period: int, msg: bytes) -> None:
    key = SigningKey(seed)
    b = blind_signing_key(key, period, 3600)
    assert b.public == blind_public_key(bytes(key.verify_key), period, 3600)
    sig = b.sign(msg)
    assert VerifyKey(b.public).verify(msg, sig) == msg
    with pytest.raises(BadSignatureError):
        VerifyKey(b.public).verify(msg + b"x", sig)
    with pytest.raises(BadSignatureError):  # not the identity key's signature
        VerifyKey(bytes(key.verify_key)).verify(msg, sig)


def test_blinded_keys_differ_per_period_length_and_key() -> None:
    k1, k2 = SigningKey.generate(), SigningKey.generate()
    p1, p2 = bytes(k1.verify_key), bytes(k2.verify_key)
    keys = {blind_public_key(p1, 5, 86400), blind_public_key(p1, 6, 86400),
            blind_public_key(p1, 5, 3600), blind_public_key(p2, 5, 86400), p1}
    assert len(keys) == 5
    assert subcredential(p1, blind_public_key(p1, 5, 86400)) != subcredential(p1, blind_public_key(p1, 6, 86400))
    with pytest.raises(LocalProtocolError):
        blind_public_key(bytes([1]) + bytes(31), 5, 86400)
    with pytest.raises(LocalProtocolError):
        blinding_factor(p1, -1, 86400)


def test_time_periods() -> None:
    tp = TimePeriods()
    assert (tp.length, tp.offset) == (86400, 43200)
    noon = 1_796_040_000  # 2026-12-01 12:00:00 UTC
    n = tp.number(noon)
    assert tp.start(n) == noon and tp.number(noon - 1) == n - 1 and tp.end(n) == noon + 86400
    assert tp.periods_to_publish(noon + 43200, 3600) == [n]
    assert tp.periods_to_publish(noon + 600, 3600) == [n - 1, n]
    assert tp.periods_to_publish(noon + 86400 - 600, 3600) == [n, n + 1]
    assert tp.periods_to_fetch(noon + 43200, 3600) == [n]
    assert tp.periods_to_fetch(noon + 600, 3600) == [n, n - 1]
    assert tp.periods_to_fetch(noon + 86400 - 600, 3600) == [n, n + 1]
    short = TimePeriods(length=60, offset=0)
    short.validate()
    assert short.number(120) == 2
    with pytest.raises(ConfigError, match="period_length"):
        TimePeriods(length=59, offset=0).validate()
    with pytest.raises(ConfigError, match="period_offset"):
        TimePeriods(length=3600, offset=3600).validate()


@settings(max_examples=200, deadline=None)
@given(st.integers(60, 10 * 86400), st.data(), st.floats(0, 2e9), st.floats(0, 7200))
def test_clients_and_services_meet_across_skew(length: int, data: st.DataObject, now: float,
                                               skew: float) -> None:
    """A service publishing for periods_to_publish(t_s, w) and a client fetching
    periods_to_fetch(t_c, w) share a period whenever |t_s - t_c| <= w <= length / 2."""
    tp = TimePeriods(length=length, offset=data.draw(st.integers(0, length - 1)))
    window = min(skew + data.draw(st.floats(0, 100)), length / 2)
    skew = min(skew, window)
    sign = data.draw(st.sampled_from([-1, 1]))
    service, client = now, now + sign * skew
    if client < 0:
        return
    assert set(tp.periods_to_publish(service, window)) & set(tp.periods_to_fetch(client, window))


def test_one_message_in_two_periods_gets_two_nonces() -> None:
    """With a shared nonce r, S1 = r + k1*a1' and S2 = r + k2*(h2/h1)*a1' would give away a1'
    (h1, h2 are public to whoever knows the address): the nonce key depends on the period."""
    key = SigningKey(bytes(range(32)))
    s1 = blind_signing_key(key, 1, 86400).sign(b"same message")
    s2 = blind_signing_key(key, 2, 86400).sign(b"same message")
    assert s1[:32] != s2[:32]
