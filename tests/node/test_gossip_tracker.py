"""The gossip gap tracker under adversarial input: its bounds, charges and schedule hold.

Hypothesis drives the sans-IO `SequenceTracker` with random interleavings of gossip messages
(any topic, origin, epoch, relayer; small seqs and huge jumps), heads, due pulls and pull
results (fetched, gone or failed), with tiny caps so every cap is hit often, and checks every
invariant (`SequenceTracker.check`: windows, accounts equal to what is sponsored, caps,
schedule) after each step. A second property checks at-most-once delivery.
"""
from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fognode.node.gossip_charges import Caps, Charges
from fognode.node.gossip_tracker import (OPTIONAL_ATTEMPTS, Lost, PullRequest, Refusal, Refused, SequenceTracker,
                                         TrackerLimits)
from fognode.node.gossip_window import SeqWindow

TOPICS = ("fognode/a/x/1", "fognode/b/y/1")
ORIGINS = tuple(bytes([i]) * 32 for i in range(1, 4))   # few: retries pile up on one
PEERS = ("p1", "p2", "p3", "")

SMALL = TrackerLimits(window=16, backfill=2, max_origins=5, max_origins_per_peer=3,
                      max_missing=20, max_missing_per_peer=12, max_pulls=3,
                      max_pulls_per_peer=2, pull_delay=0.5, retry=1.0, max_attempts=3,
                      drop_backoff=5.0, idle_evict=20.0)

seqs = st.one_of(*[st.integers(1, 20)] * 6, st.integers(1, 5000))   # jumps: rarer
topics = st.sampled_from(TOPICS[:1] * 3 + TOPICS[1:])
message = st.tuples(st.just("msg"), topics, st.sampled_from(ORIGINS),
                    st.sampled_from((1, 1, 1, 2)), seqs, st.sampled_from(PEERS))
head = st.tuples(st.just("head"), topics, st.sampled_from(ORIGINS),
                 st.sampled_from((1, 1, 1, 2)), seqs, st.sampled_from(PEERS))
tick = st.tuples(st.just("tick"), st.floats(0.0, 30.0))
wait = st.tuples(st.just("wait"))       # until the next pull is due
finish = st.tuples(st.just("done"), st.integers(0, 10),
                   st.sampled_from(("fail", "fail", "fail", "all", "some", "gone")))
steps = st.lists(st.one_of(message, message, head, tick, wait, finish, finish), min_size=10,
                 max_size=150)


def run(t: SequenceTracker, ops: list[tuple[Any, ...]],
        delivered: set[tuple[str, bytes, int, int]] | None = None) -> None:
    now = 0.0
    pending: list[PullRequest] = []
    for op in ops:
        if op[0] == "msg":
            _, topic, origin, epoch, seq, peer = op
            new = t.accept(topic, origin, epoch, seq, peer, now)
            if delivered is not None and new:
                assert (topic, origin, epoch, seq) not in delivered, "delivered twice"
                delivered.add((topic, origin, epoch, seq))
        elif op[0] == "head":
            _, topic, origin, epoch, seq, peer = op
            t.head(topic, origin, epoch, seq, peer, now)
        elif op[0] == "tick":
            now += op[1]
        elif op[0] == "wait" and t.next_due() < math.inf:
            now = max(now, t.next_due())
        elif op[0] == "done" and pending:
            req = pending.pop(op[1] % len(pending))
            got = {"fail": (), "all": req.seqs, "some": req.seqs[::2], "gone": ()}[op[2]]
            for s in got:
                new = t.accept(req.topic, req.origin, req.epoch, s, "src", now, via_pull=True)
                if delivered is not None and new:
                    key = (req.topic, req.origin, req.epoch, s)
                    assert key not in delivered, "delivered twice"
                    delivered.add(key)
            t.pull_done(req, gone=req.seqs if op[2] == "gone" else (), now=now)
        for req in t.due(now):
            assert 1 <= len(req.seqs) <= t.limits.window
            pending.append(req)
        assert t.next_due() == math.inf or t.next_due() > now
        t.check()
        for ev in t.take_events():
            assert isinstance(ev, (Lost, Refused))
    assert len(pending) == t.charges.pulls


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_bounds_and_charges_hold_under_any_input(ops: list[tuple[Any, ...]]) -> None:
    run(SequenceTracker(SMALL), ops)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_at_most_once_while_nothing_is_evicted(ops: list[tuple[Any, ...]]) -> None:
    roomy = TrackerLimits(window=8, backfill=3, max_origins=100, max_origins_per_peer=100,
                          max_missing=12, max_missing_per_peer=6, max_pulls=3,
                          max_pulls_per_peer=2, pull_delay=0.5, max_attempts=3,
                          idle_evict=1e9)
    run(SequenceTracker(roomy), ops, delivered=set())


one_origin = st.lists(st.one_of(
    st.tuples(st.just("msg"), st.just(TOPICS[0]), st.just(ORIGINS[0]), st.just(1),
              st.integers(1, 40), st.sampled_from(PEERS)),
    st.tuples(st.just("head"), st.just(TOPICS[0]), st.just(ORIGINS[0]), st.just(1),
              st.integers(1, 40), st.sampled_from(PEERS)),
    wait, wait, finish, finish), min_size=10, max_size=80)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(one_origin)
def test_retries_drops_and_backoff_of_one_origin_keep_the_invariants(
        ops: list[tuple[Any, ...]]) -> None:
    """One origin, so that failed pulls pile up on it: retries, back-fill given up, the
    origin dropped and quiet, gone seqs; checked after every step."""
    run(SequenceTracker(SMALL), ops, delivered=set())

def test_a_gap_bomb_from_one_relayer_stays_within_its_caps() -> None:
    """The attack of issue 10 in miniature: 2,000 fresh origins, seq S then S + 4096, all
    relayed by one peer. Its charge stays at its caps, the rest is refused and counted, the
    pulls are few, and an honest relayer's origin is still tracked and pulled."""
    lim = TrackerLimits(max_origins_per_peer=100, max_missing_per_peer=300,
                        max_pulls_per_peer=4, max_attempts=3)
    t = SequenceTracker(lim)
    for i in range(2000):
        o = i.to_bytes(32, "big")
        t.accept(TOPICS[0], o, 1, 1000, "evil", 0.0)
        t.accept(TOPICS[0], o, 1, 1000 + 4096, "evil", 0.0)
    assert t.charges.of("evil") == (100, 300, 0)
    refused = [e for e in t.take_events() if isinstance(e, Refused)]
    reasons = {r: sum(1 for e in refused if e.reason is r) for r in Refusal}
    assert reasons[Refusal.ORIGINS_PER_PEER] == 2 * (2000 - 100)
    assert reasons[Refusal.WINDOW] == 100 and reasons[Refusal.MISSING_PER_PEER] > 0
    assert t.accept(TOPICS[0], ORIGINS[0], 1, 5, "honest", 0.0)
    assert t.accept(TOPICS[0], ORIGINS[0], 1, 9, "honest", 0.0)      # a real gap: 6..8
    now, evil_pulls, honest_pulls = 0.0, 0, 0
    while t.next_due() < math.inf and now < 600:
        now = max(now, t.next_due())
        for req in t.due(now):
            if req.origin == ORIGINS[0]:
                honest_pulls += 1
                assert req.seqs[-3:] == (6, 7, 8)
            else:
                evil_pulls += 1
            t.pull_done(req, now=now)                  # nobody has anything
        t.check()
    assert honest_pulls == lim.max_attempts            # retried, then dropped
    # the evil back-fill fits 300 // 64 + 1 = 5 origins, each given up after 2 failed pulls
    assert evil_pulls <= OPTIONAL_ATTEMPTS * -(-lim.max_missing_per_peer // lim.backfill)
    assert t.charges.missing == 0 and t.charges.pulls == 0


def test_window_masks() -> None:
    w = SeqWindow(8, top=10)
    w.extend(14, 4, optional=False)                   # 11..14 missing
    assert w.missing_seqs() == [11, 12, 13, 14] and w.count() == 4
    w.deliver(11)
    assert w.contig == 11 and not w.seen(12) and w.seen(11) and w.seen(3)
    w.deliver(13)
    assert w.seen(13) and w.missing_seqs() == [12, 14]
    assert w.settle([12]) == [12] and w.contig == 13
    w.extend(18, 2, optional=True)                    # 15, 16 skipped; 17, 18 back-fill
    assert w.missing_seqs() == [14, 17, 18]
    assert w.missing_seqs(required_only=True) == [14]
    w.drop_optional()
    assert w.missing_seqs() == [14]
    w.deliver(14)
    assert w.contig == w.highest == 18 and w.count() == 0
    w.check()


def test_charges_move_and_forget() -> None:
    c = Charges(Caps(origins=4, origins_per_peer=2, missing=10, missing_per_peer=5, pulls=2,
                     pulls_per_peer=1))
    c.add_origin("a", "k1")
    c.add_missing("a", 3)
    c.add_pull("a", 1)
    assert not c.can_take("b", 3, 2) and c.can_take("b", 3, 1)
    c.move("k1", "a", "b", 3, 1)
    assert "a" not in c.accounts and (c.origins, c.missing, c.pulls) == (1, 3, 1)
    assert c.sizes()["peer_missing"] == 3 and c.peaks["missing"] == 3
    c.check()
