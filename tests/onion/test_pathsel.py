"""Path selection and guards: properties over random relay sets."""
from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fognode.protocols.onion.errors import OnionStateError, PathError
from fognode.protocols.onion.pathsel import GuardSet, RelayInfo, select_path


def relay(i: int, region: str = "", rep: float = 0.5, bw: float = 1e6) -> RelayInfo:
    return RelayInfo(f"p{i:03d}", bytes([i % 256]) * 32, bytes([(i + 1) % 256]) * 32, region, rep, bw)


relays_st = st.lists(
    st.builds(lambda i, r, rep, bw: (i, r, rep, bw), st.integers(0, 200), st.sampled_from(["", "eu", "us", "asia", "af"]),
              st.floats(0, 1), st.floats(0, 1e9)),
    min_size=1, max_size=30, unique_by=lambda t: t[0]).map(lambda ts: [relay(*t) for t in ts])


@settings(max_examples=200, deadline=None)
@given(relays_st, st.integers(1, 5), st.integers(0, 2**32))
def test_paths_never_repeat_a_relay_and_start_at_the_guard(relays: list[RelayInfo], hops: int, seed: int) -> None:
    rng = random.Random(seed)
    guard = relays[0]
    try:
        path = select_path(relays, hops, guard, rng, self_peer="me")
    except PathError:
        assert len(relays) < hops
        return
    assert len(path) == hops and path[0] == guard
    assert len({r.peer_id for r in path}) == hops
    # distinct regions whenever the candidates allow it
    regions = [r.region for r in path if r.region]
    available = {r.region for r in relays if r.region}
    if len(available) >= hops:
        assert len(regions) == len(set(regions))


@settings(max_examples=100, deadline=None)
@given(relays_st, st.integers(0, 2**32))
def test_fixed_last_hop_and_exclusions(relays: list[RelayInfo], seed: int) -> None:
    if len(relays) < 3:
        return
    guard, last = relays[0], relays[1]
    banned = {r.peer_id for r in relays[2:4]}
    try:
        path = select_path(relays, 3, guard, random.Random(seed), last=last, exclude=banned)
    except PathError:
        assert len(relays) - len(banned) < 3
        return
    assert path[0] == guard and path[-1] == last and path[1].peer_id not in banned | {guard.peer_id, last.peer_id}


def test_self_is_never_chosen_and_too_few_relays_is_a_path_error() -> None:
    rs = [relay(i) for i in range(3)]
    with pytest.raises(PathError, match="distinct relays"):
        select_path(rs, 3, rs[0], random.Random(1), self_peer=rs[1].peer_id)
    with pytest.raises(PathError):
        select_path(rs, 3, rs[0], random.Random(1), self_peer=rs[0].peer_id)


def test_when_every_guard_backs_off_the_first_to_retry_is_used() -> None:
    # a small network while it forms: the three guards each failed a few times; before, no
    # circuit could be built until a backoff ran out (minutes), now the soonest is retried
    rs = [relay(i) for i in range(5)]
    g = GuardSet(num_guards=3, lifetime=1e6, retry_base=60.0)
    g.refresh(rs, 0.0, random.Random(1))
    a, b, c = g.peers
    for peer, times in ((a, 3), (b, 1), (c, 2)):
        for _ in range(times):
            g.mark_failed(peer, 10.0)
    assert g.choose(rs, 11.0).peer_id == b                   # retry at 70, the others at 130 and 250
    assert g.choose([r for r in rs if r.peer_id != b], 11.0).peer_id == c
    g.mark_ok(a)
    assert g.choose(rs, 12.0).peer_id == a
    with pytest.raises(PathError, match="listed"):
        g.choose([r for r in rs if r.peer_id not in g.peers], 12.0)


def test_the_fixed_last_hop_may_be_this_node_itself() -> None:
    # a client may pick the service's own node as its rendezvous point (it cannot know it):
    # the service's circuit then goes out and comes back; this node is never guard nor middle
    rs = [relay(i) for i in range(4)]
    me = rs[3]
    for seed in range(50):
        path = select_path(rs, 3, rs[0], random.Random(seed), self_peer=me.peer_id, last=me)
        assert path[0] == rs[0] and path[-1] == me and path[1] in rs[1:3]
    with pytest.raises(PathError):
        select_path(rs, 3, me, random.Random(1), self_peer=me.peer_id, last=rs[1])


def test_weight_by_bandwidth_and_reputation() -> None:
    rs = [relay(0, "g"), relay(1, "x", rep=1.0, bw=10e6), relay(2, "y", rep=1.0, bw=1e6), relay(3, "z", rep=0.1, bw=10e6)]
    rng = random.Random(7)
    counts = Counter(select_path(rs, 2, rs[0], rng)[1].peer_id for _ in range(6000))
    # weights 10e6 : 1e6 : 1e6 (0.1 x 10e6)
    assert counts["p001"] > 6 * counts["p002"] and counts["p001"] > 6 * counts["p003"]
    assert 0.6 < counts["p002"] / counts["p003"] < 1.6


def test_distinct_regions_are_preferred_not_required() -> None:
    rs = [relay(0, "eu"), relay(1, "eu"), relay(2, "eu"), relay(3, "us")]
    seen = Counter(select_path(rs, 2, rs[0], random.Random(s))[1].peer_id for s in range(200))
    assert set(seen) == {"p003"}
    path = select_path(rs, 4, rs[0], random.Random(1))       # only one other region: relaxed
    assert len({r.peer_id for r in path}) == 4


def test_guard_set_is_stable_persisted_and_backs_off() -> None:
    rs = [relay(i, f"r{i % 4}", bw=(i + 1) * 1e6) for i in range(20)]
    rng = random.Random(3)
    g = GuardSet(num_guards=3, lifetime=100.0, retry_base=10.0)
    assert g.refresh(rs, 0.0, rng) and len(g.peers) == 3
    assert len({next(r.region for r in rs if r.peer_id == p) for p in g.peers}) == 3
    first = g.choose(rs, 1.0)
    assert all(g.choose(rs, t) == first for t in (2.0, 3.0))
    assert not g.refresh(rs, 5.0, rng)                      # nothing changes while they live
    g.mark_failed(first.peer_id, 10.0)
    second = g.choose(rs, 11.0)
    assert second.peer_id == g.peers[1]
    assert g.choose(rs, 20.1) == first                      # retried after the backoff
    g.mark_failed(first.peer_id, 30.0)
    g.mark_failed(first.peer_id, 30.0)
    assert g.choose(rs, 49.0) != first and g.choose(rs, 70.1) == first
    g.mark_ok(first.peer_id)
    unlisted = [r for r in rs if r.peer_id != first.peer_id]
    assert g.choose(unlisted, 71.0).peer_id == g.peers[1]    # skipped, not dropped
    assert first.peer_id in g.peers
    g2 = GuardSet(3, 100.0, 10.0)
    g2.load(g.to_bytes())
    assert g2.peers == g.peers and g2.entries == g.entries
    assert g.refresh(rs, 200.0, rng)                        # all expired (lifetime 75-100 s): replaced
    assert len(g.entries) == 3 and all(e.added_at == 200.0 for e in g.entries)


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x80", b"\x81\xa1v\x02",
                                  b"\x82\xa1v\x01\xa6guards\x91\x93\xa1a\x01\x02"])
def test_guard_state_decoder_is_strict(data: bytes) -> None:
    with pytest.raises(OnionStateError, match="guard state"):
        GuardSet().load(data)
