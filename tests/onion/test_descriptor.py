"""Hidden-service descriptors and their DHT validator (descriptor.py, hsdir.py): round trips,
every refusal with its reason, and arbitrary bytes only ever raising DescriptorRejected."""
from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from fognode.node.errors import LocalProtocolError
from fognode.node.peerid import peer_id_from_pubkey
from fognode.node.wire import pack, unpack
from fognode.protocols.onion.address import address_from_pubkey
from fognode.protocols.onion.blinding import blind_signing_key, descriptor_keys
from fognode.protocols.onion.periods import TimePeriods
from fognode.protocols.onion.descriptor import (MAX_INTRO_POINTS, PAD_BLOCK, HsDescriptor, IntroPoint,
                                                OuterDescriptor, build_descriptor, decode_outer,
                                                open_descriptor)
from fognode.protocols.onion.hs_errors import DescriptorReason as R
from fognode.protocols.onion.hs_errors import DescriptorRejected
from fognode.protocols.onion.hsdesc import DescriptorCache, DescriptorPut, descriptor_lookups, descriptors_to_publish
from fognode.protocols.onion.hsdir import HsDescValidator

TP = TimePeriods()
NOW = 1_796_083_200.0          # 2026-12-02 00:00 UTC, mid-period
PERIOD = TP.number(NOW)
SERVICE = SigningKey(bytes(range(32)))
ADDRESS = address_from_pubkey(bytes(SERVICE.verify_key))


def intro(i: int) -> IntroPoint:
    relay = SigningKey(bytes([i + 1]) * 32)
    return IntroPoint(peer_id_from_pubkey(bytes(relay.verify_key)),
                      bytes(SigningKey(bytes([i + 100]) * 32).verify_key), bytes([i + 7]) * 32)


INTROS = [intro(i) for i in range(3)]


def build(**kw: object) -> bytes:
    args: dict[str, object] = {"now": NOW, "revision": 5}
    args.update(kw)
    return build_descriptor(SERVICE, TP, PERIOD, INTROS, **args)


def reason(fn: object, *a: object, **kw: object) -> R:
    with pytest.raises(DescriptorRejected) as e:
        fn(*a, **kw)  # type: ignore[operator]
    return e.value.reason


def test_round_trip() -> None:
    data = build()
    desc = open_descriptor(data, ADDRESS, PERIOD, TP, now=NOW + 60)
    assert desc.intro_points == tuple(INTROS)
    assert (desc.period, desc.revision, desc.issued, desc.expires) == (PERIOD, 5, int(NOW), int(NOW) + 3 * 3600)
    assert desc.address == ADDRESS


def test_outer_layer_hides_the_address_and_intro_points() -> None:
    data = build()
    outer = decode_outer(data, now=NOW)
    assert outer.blinded == blind_signing_key(SERVICE, PERIOD, TP.length).public
    for secret in (ADDRESS.pubkey, *(ip.auth_key for ip in INTROS), *(ip.relay.encode() for ip in INTROS)):
        assert secret not in data
    # padding: one intro point or ten give the same inner size
    one = decode_outer(build_descriptor(SERVICE, TP, PERIOD, INTROS[:1], now=NOW), now=NOW)
    ten = decode_outer(build_descriptor(SERVICE, TP, PERIOD, [intro(i) for i in range(10)], now=NOW), now=NOW)
    assert len(one.inner) == len(ten.inner) == PAD_BLOCK + 16


def test_expired_future_and_certificate() -> None:
    assert reason(open_descriptor, build(), ADDRESS, PERIOD, TP, now=NOW + 3 * 3600) is R.EXPIRED
    assert reason(decode_outer, build(), now=NOW - 301) is R.FUTURE
    decode_outer(build(), now=NOW - 299)
    with pytest.raises(LocalProtocolError):
        build(lifetime=13 * 3600)
    with pytest.raises(LocalProtocolError):
        build(lifetime=3600, cert_lifetime=600)


def test_wrong_period_and_wrong_key() -> None:
    assert reason(open_descriptor, build(), ADDRESS, PERIOD + 1, TP, now=NOW) is R.WRONG_PERIOD
    other = TimePeriods(length=3600, offset=0)
    assert reason(open_descriptor, build(), ADDRESS, PERIOD, other, now=NOW) is R.WRONG_PERIOD
    stranger = address_from_pubkey(bytes(SigningKey.generate().verify_key))
    assert reason(open_descriptor, build(), stranger, PERIOD, TP, now=NOW) is R.WRONG_KEY


def test_old_revision() -> None:
    assert reason(open_descriptor, build(revision=4), ADDRESS, PERIOD, TP, now=NOW, min_revision=5) is R.OLD_REVISION
    open_descriptor(build(revision=5), ADDRESS, PERIOD, TP, now=NOW, min_revision=5)


def _resign(raw: dict[str, object], **changes: object) -> bytes:
    """Change fields of the outer layer and sign again with a fresh certified key (so only
    the change is wrong)."""
    blinded = blind_signing_key(SERVICE, PERIOD, TP.length)
    signer = SigningKey.generate()
    raw = {**raw, **changes}
    cert = {k: v for k, v in dict(raw["cert"]).items() if k != "sig"}  # type: ignore[call-overload]
    cert["key"] = bytes(signer.verify_key)
    cert["sig"] = blinded.sign(pack(cert))
    raw["cert"] = cert
    body = {k: v for k, v in raw.items() if k != "sig"}
    return pack({**body, "sig": signer.sign(pack(body)).signature})


def test_forgeries() -> None:
    raw = unpack(build())
    # altering anything signed breaks the descriptor signature
    for field, value in (("revision", 6), ("expires", int(NOW) + 100), ("inner", raw["inner"][:-1] + b"\0")):
        assert reason(decode_outer, pack({**raw, field: value}), now=NOW) is R.BAD_SIGNATURE
    # a certificate signed by someone else's blinded key
    forged_cert = dict(raw["cert"])
    forged_cert["sig"] = blind_signing_key(SigningKey.generate(), PERIOD, TP.length).sign(
        pack({k: v for k, v in forged_cert.items() if k != "sig"}))
    assert reason(decode_outer, pack({**raw, "cert": forged_cert}), now=NOW) is R.BAD_SIGNATURE
    # a certificate for another key than the one that signed, or of another type, or too short
    assert reason(decode_outer, pack({**raw, "cert": {**raw["cert"], "signer": bytes(32)}}), now=NOW) is R.BAD_CERT
    assert reason(decode_outer, pack({**raw, "cert": {**raw["cert"], "type": "x"}}), now=NOW) is R.BAD_CERT
    assert reason(decode_outer, pack({**raw, "cert": {**raw["cert"], "expires": raw["expires"] - 1}}),
                  now=NOW) is R.BAD_CERT
    # re-signed with a correctly certified key, but the inner layer was swapped: it does not open
    other = unpack(build_descriptor(SERVICE, TP, PERIOD, INTROS, now=NOW, revision=9))
    swapped = _resign(raw, inner=other["inner"])
    decode_outer(swapped, now=NOW)
    assert reason(open_descriptor, swapped, ADDRESS, PERIOD, TP, now=NOW) is R.UNDECRYPTABLE
    # re-signed with a changed revision: the inner keys depend on it
    assert reason(open_descriptor, _resign(raw, revision=6), ADDRESS, PERIOD, TP, now=NOW) is R.UNDECRYPTABLE


def test_malformed() -> None:
    raw = unpack(build())
    assert reason(decode_outer, b"\x00" * 9000, now=NOW) is R.OVERSIZE
    assert reason(decode_outer, b"\xc1", now=NOW) is R.MALFORMED
    assert reason(decode_outer, pack({**raw, "v": 2}), now=NOW) is R.MALFORMED
    assert reason(decode_outer, pack({**raw, "extra": 1}), now=NOW) is R.MALFORMED
    assert reason(decode_outer, pack({k: v for k, v in raw.items() if k != "salt"}), now=NOW) is R.MALFORMED
    # a non-canonical encoding of the same map (unsorted keys)
    unsorted = msgpack.packb(dict(reversed(list(raw.items()))), use_bin_type=True)
    assert reason(decode_outer, unsorted, now=NOW) is R.MALFORMED
    assert reason(decode_outer, _resign(raw, expires=raw["issued"] + 13 * 3600), now=NOW) is R.MALFORMED


def test_build_refuses_bad_intro_points() -> None:
    with pytest.raises(LocalProtocolError):
        build_descriptor(SERVICE, TP, PERIOD, [], now=NOW)
    with pytest.raises(LocalProtocolError):
        build_descriptor(SERVICE, TP, PERIOD, [intro(i) for i in range(MAX_INTRO_POINTS + 1)], now=NOW)
    for bad in (dataclasses.replace(INTROS[0], relay="nope"), dataclasses.replace(INTROS[0], auth_key=bytes(32)),
                dataclasses.replace(INTROS[0], enc_key=bytes(32))):
        with pytest.raises(LocalProtocolError):
            build_descriptor(SERVICE, TP, PERIOD, [bad], now=NOW)


# ---- the DHT validator ----

def validator(now: float = NOW) -> HsDescValidator:
    clock = [now]
    return HsDescValidator(lambda: clock[0], TP)


def test_validator_accepts_under_its_keys_only() -> None:
    v = validator()
    data = build()
    outer = decode_outer(data, now=NOW)
    keys = descriptor_keys(outer.blinded, PERIOD, TP.length)
    for k in keys:
        v.validate(k, data)
    other = descriptor_keys(blind_signing_key(SigningKey.generate(), PERIOD, TP.length).public, PERIOD, TP.length)
    assert reason(v.validate, other[0], data) is R.WRONG_KEY
    assert reason(v.validate, "/fognode/device/x", data) is R.WRONG_KEY
    assert reason(v.validate, descriptor_keys(outer.blinded, PERIOD + 1, TP.length)[0], data) is R.WRONG_KEY
    assert v.rejected[R.WRONG_KEY] == 3


def test_validator_refuses_replays_and_far_periods() -> None:
    v = validator()
    new, old = build(revision=10), build(revision=9)
    key = descriptor_keys(decode_outer(new, now=NOW).blinded, PERIOD, TP.length)[0]
    v.validate(key, new)
    v.validate(key, new)                           # the same bytes again: a republish
    assert reason(v.validate, key, old) is R.OLD_REVISION
    assert reason(v.validate, key, build(revision=10)) is R.OLD_REVISION   # same revision, other bytes
    v.validate(key, build(revision=11))
    assert v.select(key, [new, build(revision=12), old, b"junk"]) == 1
    # a descriptor for a period far from ours, or for another period length
    far = build_descriptor(SERVICE, TP, PERIOD + 2, INTROS, now=NOW)
    far_key = descriptor_keys(decode_outer(far, now=NOW).blinded, PERIOD + 2, TP.length)[0]
    assert reason(v.validate, far_key, far) is R.WRONG_PERIOD
    short = TimePeriods(length=3600, offset=0)
    p = short.number(NOW)
    odd = build_descriptor(SERVICE, short, p, INTROS, now=NOW)
    assert reason(v.validate, descriptor_keys(decode_outer(odd, now=NOW).blinded, p, 3600)[0], odd) is R.WRONG_PERIOD
    # the next period is accepted near its boundary (the service publishes it ahead)
    late = validator(TP.end(PERIOD) - 600)
    nxt = build_descriptor(SERVICE, TP, PERIOD + 1, INTROS, now=TP.end(PERIOD) - 600)
    late.validate(descriptor_keys(decode_outer(nxt, now=TP.end(PERIOD) - 600).blinded, PERIOD + 1,
                                  TP.length)[1], nxt)


def test_validator_forgets_oldest_beyond_history() -> None:
    v = HsDescValidator(lambda: NOW, TP, history=1)
    a, b = build(revision=10), build_descriptor(SigningKey.generate(), TP, PERIOD, INTROS, now=NOW, revision=1)
    ka = descriptor_keys(decode_outer(a, now=NOW).blinded, PERIOD, TP.length)[0]
    kb = descriptor_keys(decode_outer(b, now=NOW).blinded, PERIOD, TP.length)[0]
    v.validate(ka, a)
    v.validate(kb, b)
    assert list(v._highest) == [kb]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_only_raise_rejected(data: bytes) -> None:
    v = validator()
    with pytest.raises(DescriptorRejected):
        open_descriptor(data, ADDRESS, PERIOD, TP, now=NOW)
    with pytest.raises(DescriptorRejected):
        v.validate(descriptor_keys(bytes(32), PERIOD, TP.length)[0], data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_descriptors_only_raise_rejected(data: st.DataObject) -> None:
    good = bytearray(build())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    try:
        desc = open_descriptor(bytes(good), ADDRESS, PERIOD, TP, now=NOW)
    except DescriptorRejected:
        return
    assert desc.intro_points == tuple(INTROS)   # a mutation that survives changed nothing signed


def test_outer_descriptor_body_is_what_is_signed() -> None:
    data = build()
    outer = decode_outer(data, now=NOW)
    assert isinstance(outer, OuterDescriptor) and outer.encode() == data


# ---- publish and lookup plans (hsdesc.py) ----

def _reachable(puts: list[DescriptorPut], client_now: float, window: float = 3600) -> HsDescriptor | None:
    """What a client at `client_now` finds among `puts` (each first checked by a DHT node's
    validator at the client's time), following descriptor_lookups in order."""
    stored = {}
    node = validator(client_now)
    for put in puts:
        try:
            node.validate(put.key, put.value)
            stored[put.key] = put.value
        except DescriptorRejected:
            pass
    cache = DescriptorCache(TP)
    for lookup in descriptor_lookups(ADDRESS, TP, now=client_now, window=window):
        for key in lookup.keys:
            if key in stored:
                try:
                    return cache.open(stored[key], ADDRESS, lookup.period, now=client_now)
                except DescriptorRejected:
                    continue
    return None


def test_a_service_stays_reachable_across_a_period_change() -> None:
    end = TP.end(PERIOD)
    before = descriptors_to_publish(SERVICE, TP, INTROS, now=end - 600, window=3600)
    assert sorted({p.period for p in before}) == [PERIOD, PERIOD + 1] and len(before) == 4
    # clients on either side of the boundary, clocks skewed both ways, find it
    for client_now in (end - 800, end - 1, end, end + 300, end + 3000):
        desc = _reachable(before, client_now)
        assert desc is not None and desc.intro_points == tuple(INTROS), client_now
    # mid-period, only the current period is published, and found
    mid = descriptors_to_publish(SERVICE, TP, INTROS, now=NOW, window=3600)
    assert {p.period for p in mid} == {PERIOD}
    assert _reachable(mid, NOW + 60) is not None
    # a client a whole period later finds nothing: the descriptors have expired
    assert _reachable(mid, NOW + TP.length) is None


def test_cache_refuses_replayed_revisions_and_expires() -> None:
    cache = DescriptorCache(TP)
    assert cache.get(ADDRESS, NOW) is None
    cache.open(build(revision=7), ADDRESS, PERIOD, now=NOW)
    assert cache.get(ADDRESS, NOW) is not None and cache.get(ADDRESS, NOW + 3 * 3600) is None
    assert reason(cache.open, build(revision=6), ADDRESS, PERIOD, now=NOW) is R.OLD_REVISION
    cache.forget(ADDRESS)
    assert cache.get(ADDRESS, NOW) is None
    assert reason(cache.open, build(revision=6), ADDRESS, PERIOD, now=NOW) is R.OLD_REVISION
    cache.open(build(revision=8), ADDRESS, PERIOD, now=NOW)
    small = DescriptorCache(TP, max_entries=1)
    small.open(build(revision=1), ADDRESS, PERIOD, now=NOW)
    other = SigningKey.generate()
    small.open(build_descriptor(other, TP, PERIOD, INTROS, now=NOW), address_from_pubkey(bytes(other.verify_key)),
               PERIOD, now=NOW)
    assert small.get(ADDRESS, NOW) is None
