"""Where a participant sends its update, and when again (ParticipantRound.outcome and
next_send, protocols/fl/session/rounds.py): pure state, a simulated clock."""
from __future__ import annotations

from fognode.protocols.fl.messages import RoundPlan
from fognode.protocols.fl.session.rounds import ParticipantRound

PLAN = RoundPlan(b"s" * 32, 1, 0, b"x" * 32, (("a", 0.5), ("b", 0.5), ("c", 0.5)), b"m" * 32, 0, ("a",))
D = 20.0     # deadline: slot k is [100 + k*D, 100 + (k+1)*D)


def participant() -> ParticipantRound:
    pr = ParticipantRound(PLAN, ("a", "b", "c"), 100.0, D)
    pr.sending_to(0)
    pr.in_flight = True
    return pr


def test_a_failure_goes_to_the_next_aggregator_then_retries_the_current_one_with_backoff() -> None:
    pr = participant()
    assert pr.outcome(0, False, 101.0) == 1            # the first fallback collects already
    pr.sending_to(1)
    pr.in_flight = True
    assert pr.outcome(1, False, 101.5) == 2
    pr.sending_to(2)
    pr.in_flight = True
    assert pr.outcome(2, False, 102.0) is None         # the whole order failed: back off
    assert pr.next_send(102.5) is None
    assert pr.next_send(103.0) == 0                    # 1 s later: the current slot's aggregator
    for waited in (2.0, 4.0, 8.0, 8.0):                # the backoff doubles up to 8 s
        pr.sending_to(0)
        pr.in_flight = True
        now = pr.retry_at or 0.0
        assert pr.outcome(0, False, now) == 1
        pr.sending_to(1)
        pr.in_flight = True
        assert pr.outcome(1, False, now) == 2
        pr.sending_to(2)
        pr.in_flight = True
        assert pr.outcome(2, False, now) is None and pr.retry_at == now + waited


def test_delivered_to_a_fallback_the_current_aggregator_is_still_retried() -> None:
    pr = participant()
    assert pr.outcome(0, False, 101.0) == 1
    pr.sending_to(1)
    pr.in_flight = True
    assert pr.outcome(1, True, 101.0) is None          # the fallback has it: no jump to slot 2
    assert pr.next_send(101.5) is None and pr.next_send(102.0) == 0
    pr.sending_to(0)
    pr.in_flight = True
    # failing again does not go on to slot 2: a later aggregator (slot 1) has the update
    assert pr.outcome(0, False, 102.0) is None and pr.retry_at == 104.0
    pr.sending_to(0)
    pr.in_flight = True
    assert pr.outcome(0, True, 104.0) is None
    assert pr.next_send(110.0) is None                 # every slot that matters has it
    assert pr.next_send(120.0) is None                 # slot 1 begins: its aggregator has it
    assert pr.next_send(140.0) == 2                    # slot 2 begins without a round result


def test_a_settled_slot_is_not_retried_and_nothing_is_sent_after_the_last_slot() -> None:
    pr = participant()
    # "round closed" (SLOT_SETTLED) is reported by the session as a settled send
    assert pr.outcome(0, True, 101.0) is None
    assert all(pr.next_send(t) is None for t in (101.0, 105.0, 119.9))
    assert pr.next_send(120.0) == 1
    pr.sending_to(1)
    pr.in_flight = True
    assert pr.next_send(125.0) is None                 # in flight
    assert pr.outcome(1, False, 130.0) == 2            # refused: on to slot 2 at once
    pr.sending_to(2)
    pr.in_flight = True
    assert pr.outcome(2, False, 131.0) is None         # retried at 132 if slot 1 still lacks it
    assert pr.next_send(132.0) == 1
    assert pr.next_send(165.0) is None                 # past the last slot: the try is over


def test_an_aggregator_without_the_plan_is_asked_again_after_a_short_wait() -> None:
    pr = participant()
    for waited in (0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0):  # "unknown round": the same one again
        now = pr.retry_at or 101.0
        assert pr.outcome(0, False, now, not_yet=True) is None
        assert pr.retry_at == now + waited and pr.next_send(now) is None
        assert pr.next_send(now + waited) == 0
        pr.sending_to(0)
        pr.in_flight = True
    assert pr.outcome(0, True, 109.0) is None          # it had the plan by then
    assert pr.next_send(119.0) is None and pr.next_send(120.0) == 1
    # the aggregator of a later slot without the plan: asked again while the earlier slot runs
    pr = participant()
    assert pr.outcome(0, False, 101.0) == 1            # the current one unreachable
    pr.sending_to(1)
    pr.in_flight = True
    assert pr.outcome(1, False, 101.0, not_yet=True) is None
    assert pr.next_send(101.5) == 1
    # refused so at its slot's end: the slot is over, the next slot's aggregator gets it
    pr = participant()
    assert pr.outcome(0, False, 119.0, not_yet=True) is None and pr.next_send(119.5) == 0
    pr.sending_to(0)
    pr.in_flight = True
    assert pr.outcome(0, False, 120.5, not_yet=True) == 1
