"""The fair gossip inbox (node/gossip_inbox.py), the tracker's early admission check, and the
envelope signature that gossip skips and the pull server checks.

The inbox serves relaying peers round robin, so a quiet peer's message waits behind at most
one message of each busy peer; when full it drops the longest queue's oldest message, so a
flooding peer loses its own messages and a peer with a shorter queue always gets in.
Hypothesis drives it with random puts and pops and checks its invariants after every step.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.gossip_envelope import KIND_MESSAGE, MessageStore, open_envelope, seal
from fognode.node.gossip_inbox import FairInbox
from fognode.node.gossip_pull import signature_holds
from fognode.node.gossip_tracker import Refusal, Refused, SequenceTracker, TrackerLimits
from fognode.node.wire import pack, unpack


def test_round_robin_a_quiet_peer_waits_behind_one_message_per_busy_peer() -> None:
    box: FairInbox[str] = FairInbox(1000, 1 << 20)
    for i in range(100):
        box.put("flood", f"f{i}", 10)
    box.put("honest", "h0", 10)
    out = [box.pop() for _ in range(3)]
    assert out == [("flood", "f0"), ("honest", "h0"), ("flood", "f1")]
    box.check()


def test_full_inbox_drops_the_longest_queue_and_never_a_shorter_one() -> None:
    box: FairInbox[str] = FairInbox(8, 1 << 20)
    for i in range(8):
        assert box.put("flood", f"f{i}", 1) == []
    # the flooder's own message is refused; the honest one evicts the flooder's oldest
    assert not box.admits("flood")
    assert box.put("flood", "f8", 1) == [("flood", "f8")]
    assert box.admits("honest")
    assert box.put("honest", "h0", 1) == [("flood", "f0")]
    assert box.queued("flood") == 7 and box.queued("honest") == 1
    box.check()
    # two peers of equal length: a third still gets in, by evicting one of them
    box2: FairInbox[str] = FairInbox(4, 1 << 20)
    for k in ("a", "a", "b", "b"):
        box2.put(k, k, 1)
    assert not box2.admits("a") and box2.admits("c")
    assert len(box2.put("c", "c", 1)) == 1 and box2.queued("c") == 1
    box2.check()


def test_bytes_bound_evicts_by_size_and_refuses_a_message_over_it() -> None:
    box: FairInbox[str] = FairInbox(100, 100)
    for i in range(3):
        box.put("big", f"b{i}", 30)
    dropped = box.put("small", "s", 30)
    assert dropped == [("big", "b0")] and box.bytes == 90
    assert box.put("small", "huge", 101) == [("small", "huge")]
    box.check()


ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from("abcd"), st.integers(1, 40)),
    st.tuples(st.just("pop"), st.just(""), st.just(0))), max_size=200)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_invariants_hold_and_nothing_is_lost_silently(steps: list[tuple[str, str, int]]) -> None:
    box: FairInbox[int] = FairInbox(6, 100)
    seen: set[int] = set()
    queued: set[int] = set()
    for n, (op, key, size) in enumerate(steps):
        if op == "put":
            admitted = box.admits(key, size)
            dropped = box.put(key, n, size)
            # admits() foretells whether the message itself is dropped at once
            assert ((key, n) not in dropped) == admitted or size > box.limit_bytes
            queued.add(n)
            for _, item in dropped:
                queued.discard(item)
        else:
            got = box.pop()
            if got is None:
                assert not queued
            else:
                queued.discard(got[1])
                assert got[1] not in seen
                seen.add(got[1])
        box.check()
        assert len(box) == len(queued)


def test_tracker_admits_a_known_origin_and_refuses_a_new_one_over_the_relayer_cap() -> None:
    t = SequenceTracker(TrackerLimits(max_origins_per_peer=2, idle_evict=100.0))
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    for origin in (a, b):
        assert t.admits("t", origin, "p", 0.0)
        assert t.accept("t", origin, 1, 1, "p", 0.0)
    assert t.admits("t", a, "p", 1.0)            # tracked: always admitted
    assert t.admits("t", c, "q", 1.0)            # another relayer has room
    assert not t.admits("t", c, "p", 1.0)        # p sponsors its cap of origins
    assert t.take_events() == [Refused("t", "p", Refusal.ORIGINS_PER_PEER)]
    assert t.admits("t", c, "p", 200.0)          # p's oldest origin idle: accept evicts it
    assert t.accept("t", c, 1, 1, "p", 200.0)
    t.check()


def test_inner_envelope_signature_skipped_only_when_asked_and_checked_before_serving() -> None:
    """Gossip takes an envelope on the strength of the libp2p message signature; the pull
    server checks the envelope's own signature before it serves a relayed one."""
    key = SigningKey(bytes([9]) * 32)
    good = seal(key, KIND_MESSAGE, 5, "t/1", 1, b"x")
    outer = unpack(good.raw, max_size=4096, what="test")
    bad_raw = pack({"b": outer["b"], "sig": bytes(64)})
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        open_envelope(bad_raw, max_size=4096)
    bad = open_envelope(bad_raw, max_size=4096, signed_by_origin=True)
    assert bad.data == b"x" and bad.origin == bytes(key.verify_key)
    assert signature_holds(good.raw) and not signature_holds(bad_raw)
    store = MessageStore()
    store.add_relayed(bad, "peer")
    store.forget_relayed("t/1", bad.origin, 5, 1)
    assert store.get_relayed("t/1", bad.origin, 5, 1) is None and store.bytes == 0
