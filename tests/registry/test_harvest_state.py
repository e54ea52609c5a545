"""The harvest state in device records (record version 2): strict and back-compatible decoding,
republishing on material changes only, and the view's `available` filter (no sockets)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fognode.node.wire import pack, sign, unpack
from fognode.protocols.registry.core import harvest_differs_materially
from fognode.protocols.registry.errors import Rejected, RejectReason
from fognode.protocols.registry.events import DeviceCapabilitiesChanged
from fognode.protocols.registry.record import (HARVEST_RECORD_VERSION, RECORD_VERSION,
                                               HarvestInfo, decode_record, make_profile,
                                               sign_record)
from fognode.protocols.registry.view import Criteria

from .helpers import NOW, caps, key, record
from .test_core import CFG, Net, kinds

GIB = 1024**3


def harvest_record(name: str, h: HarvestInfo | None, seq: int = 1):
    return sign_record(key(name), seq=seq, issued=int(NOW), expires=int(NOW) + 3600, caps=caps(),
                       profile=make_profile("eu-west", "server", ["fl"]), harvest=h)


def _resign(raw: dict, name: str) -> bytes:
    body = {k: v for k, v in raw.items() if k != "sig"}
    return pack({**body, "sig": sign(key(name), body)})


def _reason(data: bytes) -> tuple[RejectReason, str]:
    with pytest.raises(Rejected) as e:
        decode_record(data)
    return e.value.reason, str(e.value)


def test_a_record_without_harvest_stays_version_1() -> None:
    rec = record(key("a"))
    assert rec.harvest is None and unpack(rec.encode())["v"] == RECORD_VERSION
    assert "harvest" not in unpack(rec.encode())
    assert decode_record(rec.encode()) == rec


@given(st.booleans(), st.integers(0, 1 << 16), st.integers(0, 2**63 - 1),
       st.sampled_from(["on_battery", "too_hot", "operator_pause", "x" * 64]))
def test_harvest_state_round_trips(available: bool, cores: int, mem: int, why: str) -> None:
    h = HarvestInfo(available, "" if available else why, cores, mem)
    rec = harvest_record("h", h)
    raw = unpack(rec.encode())
    assert raw["v"] == HARVEST_RECORD_VERSION
    back = decode_record(rec.encode())
    assert back == rec and back.harvest == h
    assert back.to_json()["harvest"] == h.to_wire()


def test_the_decoder_stays_strict() -> None:
    rec = harvest_record("s", HarvestInfo(False, "on_battery", 0, 0))
    raw = unpack(rec.encode())
    # version 1 may not carry the harvest field
    bad = dict(raw, v=1)
    reason, msg = _reason(_resign(bad, "s"))
    assert reason is RejectReason.MALFORMED and "harvest" in msg
    # version 2 must carry it, as a map
    bad = {k: v for k, v in raw.items() if k != "harvest"}
    reason, msg = _reason(_resign(bad, "s"))
    assert reason is RejectReason.MALFORMED and "harvest" in msg
    bad = dict(raw, harvest=None)
    assert _reason(_resign(bad, "s"))[0] is RejectReason.MALFORMED
    # unknown versions and unknown fields are refused
    assert _reason(_resign(dict(raw, v=3), "s"))[0] is RejectReason.MALFORMED
    for field, value, word in [("extra", 1, "unknown field"), ("free_cores", -1, "free_cores"),
                               ("free_cores", 1.5, "free_cores"), ("available", 1, "available"),
                               ("reason", "r" * 65, "reason"),
                               ("free_memory_bytes", -5, "free_memory_bytes")]:
        h = dict(raw["harvest"], **{field: value})
        reason, msg = _reason(_resign(dict(raw, harvest=h), "s"))
        assert reason is RejectReason.MALFORMED and word in msg, (field, msg)
    # the reason says why exactly when suspended
    for h in ({**raw["harvest"], "reason": ""}, {**raw["harvest"], "available": True}):
        reason, msg = _reason(_resign(dict(raw, harvest=h), "s"))
        assert reason is RejectReason.MALFORMED and "reason" in msg
    # altered after signing
    h = dict(raw["harvest"], available=True, reason="")
    tampered = pack({**raw, "harvest": h})
    assert _reason(tampered)[0] is RejectReason.BAD_SIGNATURE


def test_material_changes() -> None:
    a = HarvestInfo(True, "", 2, 4 * GIB)
    assert not harvest_differs_materially(a, a)
    assert not harvest_differs_materially(a, HarvestInfo(True, "", 2, int(3.8 * GIB)))
    assert harvest_differs_materially(a, HarvestInfo(True, "", 2, 3 * GIB))
    assert harvest_differs_materially(a, HarvestInfo(True, "", 1, 4 * GIB))
    assert harvest_differs_materially(a, HarvestInfo(False, "on_battery", 0, 0))
    assert harvest_differs_materially(None, a) and harvest_differs_materially(a, None)
    assert not harvest_differs_materially(None, None)


def test_the_network_sees_a_device_suspend_and_resume() -> None:
    net = Net(["a", "b", "c"], CFG)
    net.start()
    a, b = net.cores["a"], net.cores["b"]
    # no harvest role yet: unknown, so not "available"
    assert b.query(Criteria(available=True)) == []
    assert len(b.query(Criteria(available=False))) == 3
    net.run("a", a.update_harvest(HarvestInfo(True, "", 2, 4 * GIB), net.now + 1))
    assert [r.peer_id for r in b.query(Criteria(available=True))] == [a.peer_id]
    [ch] = kinds(net.events["b"], DeviceCapabilitiesChanged)
    assert ch.changed == ("harvest",)  # type: ignore[attr-defined]
    seq = a.own.seq
    # a small memory move is not worth a record; it rides on the next republish
    net.run("a", a.update_harvest(HarvestInfo(True, "", 2, int(3.9 * GIB)), net.now + 2))
    assert a.own.seq == seq
    # a material move of free resources soon after a publish waits (3 heartbeats), then goes out
    net.run("a", a.update_harvest(HarvestInfo(True, "", 1, 2 * GIB), net.now + 2))
    assert a.own.seq == seq
    net.tick(3 * CFG.heartbeat_interval + 2)
    assert a.own.seq > seq and net.cores["c"].view.get(a.peer_id).harvest == HarvestInfo(True, "", 1, 2 * GIB)
    # becoming suspended goes out at once
    net.run("a", a.update_harvest(HarvestInfo(False, "on_battery", 0, 0), net.now + 1))
    assert b.query(Criteria(available=True)) == []
    got = net.cores["c"].view.get(a.peer_id).harvest
    assert got == HarvestInfo(False, "on_battery", 0, 0)
    # the role stops: the record goes back to version 1 (unknown)
    net.run("a", a.update_harvest(None, net.now + 2))
    assert net.cores["c"].view.get(a.peer_id).harvest is None
    assert unpack(a.own.encode())["v"] == RECORD_VERSION
