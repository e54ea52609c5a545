"""OnlineCount (online.py): the memoised count of online devices in the view equals a recount
after every kind of change of the view (a new peer, a newer record, an eviction past
max_devices, expiry) and of liveness (a heartbeat, a ping, a goodbye, silence, forgetting, an
eviction past max_peers), in any order (hypothesis)."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from fognode.protocols.registry.liveness import LivenessTracker
from fognode.protocols.registry.online import OnlineCount
from fognode.protocols.registry.view import LocalView

from .helpers import NOW, key, record

PEERS = 5
KEYS = [key(f"online-{i}") for i in range(PEERS)]
# records signed once: (peer, seq, ttl) -> record issued at NOW
RECORDS = {(i, seq, ttl): record(KEYS[i], seq, ttl=ttl) for i in range(PEERS) for seq in (1, 2, 3)
           for ttl in (60, 3600)}
PEER_IDS = [RECORDS[(i, 1, 60)].peer_id for i in range(PEERS)]

peer = st.integers(0, PEERS - 1)
op = st.one_of(
    st.tuples(st.just("offer"), peer, st.integers(1, 3), st.sampled_from([60, 3600])),
    st.tuples(st.just("expire")),
    st.tuples(st.just("seen"), peer, st.booleans()),
    st.tuples(st.just("bye"), peer),
    st.tuples(st.just("tick")),
    st.tuples(st.just("forget"), peer),
    st.tuples(st.just("wait"), st.sampled_from([5.0, 70.0])),
)
# every kind of change, each after a count (so a stale memo would show)
SCENARIO = [("offer", 0, 1, 60), ("seen", 0, True), ("offer", 1, 1, 3600), ("seen", 1, True),
            ("offer", 0, 2, 60),                                  # a newer record of a peer held
            ("offer", 2, 1, 3600), ("offer", 3, 1, 3600),         # the view is full: peer 0 evicted
            ("seen", 2, False), ("bye", 1), ("wait", 40.0), ("tick",),   # a ping, a goodbye, silence
            ("seen", 3, True), ("forget", 3), ("offer", 0, 3, 60), ("seen", 0, True),
            ("wait", 40.0), ("expire",),                          # peer 0's record expired
            ("seen", 3, True), ("seen", 4, True), ("seen", 2, True)]   # past max_peers: one evicted


def _recount(view: LocalView, lt: LivenessTracker) -> int:
    return sum(1 for p in view.peers() if lt.is_online(p))


def _run(ops: list[tuple]) -> list[int]:
    """Apply `ops`, asserting the memoised count equals a recount after each; returns the counts."""
    counts = []
    view = LocalView(max_devices=3)
    lt = LivenessTracker(offline_after=30.0, max_peers=4)
    count = OnlineCount()
    now = NOW
    assert count(view, lt) == 0
    for o in ops:
        if o[0] == "offer":
            view.offer(RECORDS[(o[1], o[2], o[3])])
        elif o[0] == "expire":
            view.expire(now)
        elif o[0] == "seen":
            lt.seen(PEER_IDS[o[1]], now, direct=o[2])
        elif o[0] == "bye":
            lt.mark_offline(PEER_IDS[o[1]], now)
        elif o[0] == "tick":
            lt.tick(now)
        elif o[0] == "forget":
            lt.forget(PEER_IDS[o[1]])
        else:
            now += o[1]
        assert count(view, lt) == _recount(view, lt), o
        counts.append(count(view, lt))
    other = LivenessTracker()              # another tracker (a restarted core): counted afresh
    assert count(view, other) == 0
    return counts


def test_every_kind_of_change_keeps_the_count_exact() -> None:
    assert _run(SCENARIO) == [0, 1, 1, 2, 2, 2, 1, 2, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 2]


@settings(max_examples=150, deadline=None)
@given(st.lists(op, max_size=40))
def test_memoised_online_count_equals_a_recount_after_every_change(ops: list[tuple]) -> None:
    _run(ops)


def test_count_is_not_recounted_while_nothing_changes() -> None:
    view, lt, count = LocalView(), LivenessTracker(), OnlineCount()
    view.offer(RECORDS[(0, 1, 3600)])
    lt.seen(PEER_IDS[0], NOW)
    assert count(view, lt) == 1
    versions = (view.members_version, lt.version)
    view.offer(RECORDS[(0, 2, 3600)])      # a newer record of a peer held: membership unchanged
    lt.seen(PEER_IDS[0], NOW + 1)          # a heartbeat of an online peer: no state change
    assert (view.members_version, lt.version) == versions and count(view, lt) == 1
    lt.mark_offline(PEER_IDS[0], NOW + 2)
    assert count(view, lt) == 0
