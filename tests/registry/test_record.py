from __future__ import annotations

import dataclasses

import pytest
from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.peer.id import ID

from fognode.node.wire import pack, sign, unpack
from fognode.protocols.registry.errors import Rejected, RejectReason
from fognode.protocols.registry.peerid import peer_id_from_pubkey, pubkey_from_peer_id
from fognode.protocols.registry.record import MAX_RECORD_BYTES, decode_record

from .helpers import NOW, key, record


def test_peer_id_matches_libp2p() -> None:
    for name in ("a", "b", "c"):
        pub = bytes(key(name).verify_key)
        assert peer_id_from_pubkey(pub) == ID.from_pubkey(Ed25519PublicKey.from_bytes(pub)).to_base58()
        assert pubkey_from_peer_id(peer_id_from_pubkey(pub)) == pub
    with pytest.raises(ValueError):
        pubkey_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")  # an RSA-style id


def test_peer_id_matches_the_hosts() -> None:
    from fognode.node import host
    pub = bytes(key("h").verify_key)
    assert host.peer_id_from_pubkey(pub) == peer_id_from_pubkey(pub)
    assert host.pubkey_from_peer_id(peer_id_from_pubkey(pub)) == pub


def test_record_round_trip() -> None:
    rec = record(key("a"), seq=7, battery_percent=55, cpu_freq_mhz=2000)
    back = decode_record(rec.encode())
    assert back == rec
    assert back.caps.battery_percent == 55.0 and back.profile.price("cpu_hour") == 0.5


def _resign(raw: dict, k) -> bytes:
    body = {kk: v for kk, v in raw.items() if kk != "sig"}
    return pack({**body, "sig": sign(k, body)})


def reason(data: bytes) -> RejectReason:
    with pytest.raises(Rejected) as e:
        decode_record(data)
    return e.value.reason


def test_forged_record_signed_by_another_key() -> None:
    victim, mallory = key("victim"), key("mallory")
    raw = unpack(record(victim).encode())
    raw["caps"]["cores"] = 64
    # signed by mallory, victim's key and id kept: bad signature
    assert reason(_resign(raw, mallory)) is RejectReason.BAD_SIGNATURE
    # mallory's key with the victim's peer id: foreign key
    raw["pubkey"] = bytes(mallory.verify_key)
    assert reason(_resign(raw, mallory)) is RejectReason.FOREIGN_KEY
    # altered after signing
    raw2 = unpack(record(victim).encode())
    raw2["seq"] = 99
    assert reason(pack(raw2)) is RejectReason.BAD_SIGNATURE


def test_unsigned_oversize_and_malformed() -> None:
    raw = unpack(record(key("a")).encode())
    del raw["sig"]
    assert reason(pack(raw)) is RejectReason.UNSIGNED
    assert reason(pack({**raw, "sig": b""})) is RejectReason.UNSIGNED
    assert reason(b"\x00" * (MAX_RECORD_BYTES + 1)) is RejectReason.OVERSIZE
    assert reason(b"\xc1garbage") is RejectReason.MALFORMED
    assert reason(pack([1, 2])) is RejectReason.MALFORMED


@pytest.mark.parametrize("field,value", [
    ("cores", "eight"), ("cores", 0), ("cores", -4), ("memory_bytes", -1),
    ("battery_percent", 150.0), ("battery_percent", float("nan")), ("charging", "yes"),
    ("cpu_model", "x" * 1000), ("gpu", 5), ("unknown_cap", 1),
])
def test_malformed_capabilities(field: str, value: object) -> None:
    k = key("a")
    raw = unpack(record(k).encode())
    raw["caps"][field] = value
    try:
        data = _resign(raw, k)
    except Exception:   # nan cannot even be packed canonically: nobody can send it
        return
    assert reason(data) is RejectReason.MALFORMED


@pytest.mark.parametrize("mutate", [
    lambda p: p.__setitem__("roles", ["b", "a"]),       # not canonical
    lambda p: p.__setitem__("roles", [""]),
    lambda p: p.__setitem__("roles", ["r"] * 33),
    lambda p: p.__setitem__("prices", {"x": -1.0}),
    lambda p: p.__setitem__("prices", {"x": True}),
    lambda p: p.__setitem__("region", 3),
])
def test_malformed_profile(mutate) -> None:
    k = key("a")
    raw = unpack(record(k).encode())
    mutate(raw["profile"])
    assert reason(_resign(raw, k)) is RejectReason.MALFORMED


def test_non_canonical_number_and_bad_lifetime() -> None:
    k = key("a")
    raw = unpack(record(k, battery_percent=50.0).encode())
    raw["caps"]["battery_percent"] = 50      # int where a float belongs
    assert reason(_resign(raw, k)) is RejectReason.MALFORMED
    raw = unpack(record(k).encode())
    raw["expires"] = raw["issued"] + 30 * 24 * 3600
    assert reason(_resign(raw, k)) is RejectReason.MALFORMED


def test_material_change() -> None:
    a = record(key("a"), battery_present=True, battery_percent=50.0, charging=False).caps
    assert not a.differs_materially(dataclasses.replace(a, battery_percent=55.0))
    assert a.differs_materially(dataclasses.replace(a, battery_percent=39.0))
    assert a.differs_materially(dataclasses.replace(a, charging=True))
    assert not a.differs_materially(dataclasses.replace(a, disk_free_bytes=a.disk_free_bytes - 1))
    assert a.differs_materially(dataclasses.replace(a, cores=8))
    assert NOW  # keep helpers import used
