from __future__ import annotations

import pytest

from fognode.protocols.registry.errors import Rejected, RejectReason
from fognode.protocols.registry.record import MAX_RECORD_BYTES
from fognode.protocols.registry.validator import DeviceRecordValidator, device_key

from .helpers import NOW, key, record


def make(now: float = NOW) -> tuple[DeviceRecordValidator, list[RejectReason], list[float]]:
    clock = [now]
    seen: list[RejectReason] = []
    return DeviceRecordValidator(lambda: clock[0], on_reject=seen.append), seen, clock


def test_accepts_valid_and_picks_newest() -> None:
    v, seen, _ = make()
    k = key("a")
    r1, r2, r3 = record(k, 1), record(k, 2), record(k, 3)
    dk = device_key(r1.peer_id)
    v.validate(dk, r2.encode())
    assert v.select(dk, [r1.encode(), r3.encode(), r2.encode()]) == 1
    assert v.select(dk, [b"junk", r3.encode()]) == 1
    with pytest.raises(ValueError):
        v.select(dk, [b"junk", r1.encode()])        # r1 is older than r2, already seen
    assert seen == []                                # select's refusals are not counted


def test_replayed_older_sequence_is_refused_and_counted() -> None:
    v, seen, _ = make()
    k = key("a")
    dk = device_key(record(k).peer_id)
    v.validate(dk, record(k, 5).encode())
    with pytest.raises(Rejected) as e:
        v.validate(dk, record(k, 4).encode())
    assert e.value.reason is RejectReason.STALE_SEQ and isinstance(e.value, ValueError)
    v.validate(dk, record(k, 5).encode())        # same seq again is fine (republish to a new node)
    assert v.rejected[RejectReason.STALE_SEQ] == 1 and seen == [RejectReason.STALE_SEQ]


def test_expired_and_future() -> None:
    v, _, clock = make()
    k = key("a")
    rec = record(k, issued=NOW - 7200, ttl=3600)
    with pytest.raises(Rejected, match="expired"):
        v.validate(device_key(rec.peer_id), rec.encode())
    fut = record(k, issued=NOW + 3600)
    with pytest.raises(Rejected, match="future"):
        v.validate(device_key(rec.peer_id), fut.encode())
    clock[0] = NOW + 3600
    v.validate(device_key(rec.peer_id), fut.encode())
    assert v.rejected[RejectReason.EXPIRED] == 1 and v.rejected[RejectReason.FUTURE] == 1


def test_foreign_key_and_wrong_dht_key() -> None:
    v, _, _ = make()
    a, b = record(key("a")), record(key("b"))
    with pytest.raises(Rejected) as e:
        v.validate(device_key(a.peer_id), b.encode())   # b's valid record stored under a's key
    assert e.value.reason is RejectReason.WRONG_KEY
    with pytest.raises(Rejected):
        v.validate("/fognode/other/x", a.encode())
    with pytest.raises(Rejected) as e:
        v.validate(device_key(a.peer_id), b"\x00" * (MAX_RECORD_BYTES + 10))
    assert e.value.reason is RejectReason.OVERSIZE


def test_history_is_bounded() -> None:
    clock = [NOW]
    v = DeviceRecordValidator(lambda: clock[0], history=3)
    for i in range(5):
        r = record(key(f"p{i}"))
        v.validate(device_key(r.peer_id), r.encode())
    assert len(v._highest) == 3
