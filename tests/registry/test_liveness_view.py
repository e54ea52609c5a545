from __future__ import annotations

import dataclasses

from fognode.protocols.registry.liveness import Liveness, LivenessTracker
from fognode.protocols.registry.record import make_profile
from fognode.protocols.registry.view import GIB, Change, Criteria, LocalView

from .helpers import NOW, key, record


def test_offline_after_silence_then_back() -> None:
    lt = LivenessTracker(offline_after=30.0)
    ch = lt.seen("p", NOW)
    assert ch is not None and ch.state is Liveness.ONLINE
    assert lt.seen("p", NOW + 10) is None
    assert lt.tick(NOW + 39) == []
    [off] = lt.tick(NOW + 40)
    assert off.state is Liveness.OFFLINE and off.reason == "silent" and off.last_seen == NOW + 10
    assert lt.tick(NOW + 100) == []                # reported once
    back = lt.seen("p", NOW + 101)
    assert back is not None and back.state is Liveness.ONLINE and lt.is_online("p")
    bye = lt.mark_offline("p", NOW + 102)
    assert bye is not None and bye.reason == "goodbye" and not lt.is_online("p")
    assert lt.mark_offline("p", NOW + 103) is None
    assert lt.seen("p", NOW + 104, direct=False) is None       # a ping does not undo a goodbye
    assert lt.seen("p", NOW + 200, at=NOW + 150) is None       # sent too long ago to count
    ch2 = lt.seen("p", NOW + 200, at=NOW + 190)
    assert ch2 is not None and lt.last_seen("p") == NOW + 190
    assert lt.tick(NOW + 219) == [] and len(lt.tick(NOW + 220)) == 1   # 30 s after it was sent


def test_liveness_table_bounded() -> None:
    lt = LivenessTracker(offline_after=5.0, max_peers=10)
    for i in range(25):
        lt.seen(f"p{i}", NOW + i)
    assert len(lt._last) <= 10


def test_view_changes() -> None:
    v = LocalView()
    k = key("a")
    assert v.offer(record(k, 1)) is Change.NEW
    assert v.offer(record(k, 1)) is Change.STALE
    assert v.offer(record(k, 2)) is Change.REFRESHED
    assert v.offer(record(k, 3, cores=16)) is Change.UPDATED
    assert v.offer(record(k, 2)) is Change.STALE
    assert v.get(record(k).peer_id).caps.cores == 16
    assert v.expire(NOW + 10_000) == [record(k).peer_id] and len(v) == 0


def test_queries() -> None:
    v = LocalView()
    recs = {
        "big": record(key("big"), cores=32, memory_bytes=64 * GIB, gpu="NVIDIA A100", roles=("fl", "market")),
        "phone": record(key("phone"), cores=8, memory_bytes=6 * GIB, battery_present=True,
                        battery_percent=80.0, charging=False, region="eu-north", roles=("harvest",)),
        "laptop": record(key("laptop"), cores=4, memory_bytes=16 * GIB, battery_present=True,
                         battery_percent=40.0, charging=True),
        "unknown": record(key("unknown"), cores=None, memory_bytes=None, battery_present=None),
    }
    for r in recs.values():
        v.offer(r)
    ids = {r.peer_id: n for n, r in recs.items()}
    online = {recs["big"].peer_id, recs["laptop"].peer_id}
    rep = {recs["big"].peer_id: 2.0, recs["laptop"].peer_id: 0.5}

    def q(**kw: object) -> list[str]:
        return [ids[r.peer_id] for r in v.query(Criteria(**kw), is_online=lambda p: p in online,
                                                  reputation=lambda p, s: rep.get(p, 0.0))]

    assert q(region="eu-west")[0] == "big" and "phone" not in q(region="eu-west")
    assert q(min_cores=8) == ["big", "phone"]
    assert q(min_memory_gb=10) == ["big", "laptop"]
    assert q(gpu=True) == ["big"]
    assert set(q(gpu=False)) == {"phone", "laptop", "unknown"}
    assert set(q(battery=True)) == {"phone", "laptop"}
    assert set(q(charging=True)) == {"big", "laptop"}   # mains power counts as charging
    assert set(q(charging=False)) == {"phone", "unknown"}   # unknown power source: not charging
    assert q(online=True) == ["big", "laptop"]
    assert q(min_reputation=1.0) == ["big"]
    assert q(role="harvest") == ["phone"]
    assert q(role="fl", online=True, min_cores=4) == ["big", "laptop"]
    p = make_profile("x", "y", ["b", "a", "a"], {"z": 1})
    assert p.roles == ("a", "b") and dataclasses.replace(p).prices == (("z", 1),)
