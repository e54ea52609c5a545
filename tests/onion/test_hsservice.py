"""The service side's policies (hsservice.py `ServiceState`, `pick_intro_relay`): where
introduction points go and when descriptors are put."""
from __future__ import annotations

import random

from nacl.signing import SigningKey

from fognode.protocols.onion.periods import TimePeriods
from fognode.protocols.onion.hsservice import REPUT_AFTER_CHANGE, IntroState, ServiceState, pick_intro_relay
from fognode.protocols.onion.pathsel import RelayInfo


def test_introduction_points_go_to_distinct_relays_even_while_being_established() -> None:
    # the service starts its points at once; each reserves its relay before its circuit is
    # built, so three points never share a relay (before, only established points counted and
    # all three could land on one relay, whose death then took every point at once)
    relays = [RelayInfo(f"p{i}", bytes([i]) * 32, bytes([i + 1]) * 32) for i in range(5)]
    for seed in range(30):
        st = ServiceState(intros=[IntroState("p1", SigningKey.generate(), b"s" * 32, b"e" * 32, circuit=("p0", 1))])
        rng = random.Random(seed)
        for _ in range(2):
            r = pick_intro_relay(relays, st.taken(), "p4", rng)
            assert r is not None
            st.pending.add(r.peer_id)
        assert len(st.taken()) == 3 and "p4" not in st.taken()
        last = pick_intro_relay(relays, st.taken(), "p4", rng)          # the only relay left
        assert last is not None and last.peer_id not in st.taken()
        st.pending.add(last.peer_id)
        assert pick_intro_relay(relays, st.taken(), "p4", rng) is None  # fewer points, never shared


def test_descriptors_are_put_on_a_change_once_more_after_it_and_on_the_interval() -> None:
    # a put after a change is repeated REPUT_AFTER_CHANGE s later: a DHT node that missed it
    # (py-libp2p reports no remote failure) would otherwise serve the older descriptor for an hour
    st, T0 = ServiceState(), 1_796_083_200.0
    assert st.publish_due(T0, 3600.0)                   # never put
    assert not st.publish_due(T0 + 1, 3600.0)
    st.dirty = True                                        # an introduction point moved
    assert st.publish_due(T0 + 2, 3600.0)
    assert not st.publish_due(T0 + 2 + REPUT_AFTER_CHANGE - 1, 3600.0)
    assert st.publish_due(T0 + 2 + REPUT_AFTER_CHANGE, 3600.0)      # the follow-up
    assert not st.publish_due(T0 + 2 + 3 * REPUT_AFTER_CHANGE, 3600.0)   # only once
    assert st.publish_due(T0 + 2 + REPUT_AFTER_CHANGE + 3600.0, 3600.0)  # the interval


def test_the_next_periods_descriptor_is_put_as_soon_as_it_is_due() -> None:
    # near a boundary the service publishes the next period's descriptor at once (before, only
    # the republish interval, an hour by default, did: clients of the new period found nothing)
    tp = TimePeriods(60, 0)
    st, t = ServiceState(), 1_796_083_200.0 + 5          # 5 s into a period
    assert st.publish_due(t, 3600.0, tp.periods_to_publish(t, 10))
    assert st.published_periods == {tp.number(t) - 1, tp.number(t)}
    for dt in range(2, 60, 2):
        due = st.publish_due(t + dt, 3600.0, tp.periods_to_publish(t + dt, 10))
        assert due == (dt == 46), dt                     # 9 s before the boundary: the next period
    assert st.published_periods == {tp.number(t), tp.number(t) + 1}
