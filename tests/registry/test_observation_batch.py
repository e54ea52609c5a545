"""Observation batches (protocols/registry/observation.py `encode_observations`): one gossip
message carries a node's reports of one step (an FL aggregator's, one per participant of a
round), each observation still signed on its own and counted, refused and rate-limited as if
it had come alone; a malformed or partly foreign batch is refused whole."""
from __future__ import annotations

import pytest

from fognode.node.errors import LocalProtocolError
from fognode.node.wire import pack, unpack
from fognode.protocols.registry.actions import Publish, Refused
from fognode.protocols.registry.config import RegistryConfig
from fognode.protocols.registry.core import OBSERVATIONS_TOPIC, RegistryCore
from fognode.protocols.registry.errors import Rejected, RejectReason
from fognode.protocols.registry.gossip_check import check_observations
from fognode.protocols.registry.observation import (MAX_BATCH, Outcome, decode_observations,
                                                    encode_observations)
from fognode.protocols.registry.record import make_profile

from .helpers import NOW, key
from .test_observation import obs, pid


def core(name: str, **cfg: float) -> RegistryCore:
    return RegistryCore(key(name), RegistryConfig(**cfg), make_profile("eu-west", "server", ["fl"]),  # type: ignore[arg-type]
                        pretrusted=[], now=NOW)


def test_batch_round_trip_and_split() -> None:
    nine = [obs("agg", f"p{i}", evidence=f"r1/p{i}".encode()) for i in range(9)]
    [msg] = encode_observations(nine)
    assert decode_observations(msg) == nine == check_observations(msg, pid("agg"))
    assert encode_observations(nine[:1]) == [nine[0].encode()]        # one goes as itself
    assert decode_observations(nine[0].encode()) == nine[:1]
    many = [obs("agg", f"q{i}", evidence=f"r2/q{i}".encode()) for i in range(MAX_BATCH + 3)]
    msgs = encode_observations(many)
    assert [len(decode_observations(m)) for m in msgs] == [MAX_BATCH, 3]
    assert encode_observations([]) == []


def test_bad_batches_are_refused_whole() -> None:
    good = [obs("agg", f"p{i}", evidence=f"e{i}".encode()) for i in range(3)]
    foreign = good[:2] + [obs("mallory", "p9")]
    with pytest.raises(Rejected) as e:
        check_observations(encode_observations(foreign)[0], pid("agg"))
    assert e.value.reason is RejectReason.SPOOFED_ORIGIN
    forged = unpack(good[2].encode())
    forged["weight"] = 99.0
    cases = [pack({"v": 1, "batch": [good[0].encode(), pack(forged)]}),    # one forged
             pack({"v": 1, "batch": [good[0].encode()]}),                  # a batch of one
             pack({"v": 1, "batch": [good[0].encode(), 7]}),               # not bytes
             pack({"v": 1, "batch": [o.encode() for o in good], "x": 1})]  # unknown field
    reasons = []
    for data in cases:
        with pytest.raises(Rejected) as e:
            check_observations(data, pid("agg"))
        reasons.append(e.value.reason)
    assert reasons == [RejectReason.BAD_SIGNATURE] + [RejectReason.MALFORMED] * 3
    with pytest.raises(Rejected) as e:
        check_observations(b"\x00" * 300_000, pid("agg"))
    assert e.value.reason is RejectReason.OVERSIZE


def test_reports_of_one_step_travel_as_one_message_and_each_counts() -> None:
    agg, other = core("agg"), core("other")
    subjects = [pid(f"p{i}") for i in range(9)]
    actions, refused = agg.report_outcomes([Outcome(s, "fl", True, 0.5, f"r1/{s}".encode())
                                            for s in subjects], NOW)
    assert refused == [] and len(actions) == 1
    [pub] = actions
    assert isinstance(pub, Publish) and pub.topic == OBSERVATIONS_TOPIC
    assert other.on_observation(agg.peer_id, pub.data, NOW) == []
    assert agg.book.accepted == other.book.accepted == 9
    # the same batch again: each observation is a duplicate, refused one by one
    again = other.on_observation(agg.peer_id, pub.data, NOW)
    assert [r.reason for r in again if isinstance(r, Refused)] == [RejectReason.DUPLICATE] * 9
    # a malformed report (about ourselves) records none of the step's reports
    with pytest.raises(LocalProtocolError):
        agg.report_outcomes([Outcome(subjects[0], "fl", True, 1.0, b"r2"),
                             Outcome(agg.peer_id, "fl", True, 1.0, b"r2")], NOW)
    assert agg.book.accepted == 9


def test_own_reports_over_the_rate_limit_wait_and_are_sent_as_it_refills() -> None:
    agg = core("agg", observation_burst=4, observation_rate_per_minute=1.0)
    actions, refused = agg.report_outcomes([Outcome(pid(f"p{i}"), "fl", True, 1.0, f"e{i}".encode())
                                            for i in range(6)], NOW)
    assert refused == []                       # two wait (pending.py); none is lost
    [pub] = actions
    assert isinstance(pub, Publish) and len(decode_observations(pub.data)) == 4
    assert agg.report_outcome(pid("p9"), "fl", True, 1.0, b"e9", NOW) == []    # waits too
    assert agg.tick(NOW + 30) == []            # half a token: nothing yet
    [pub] = [a for a in agg.tick(NOW + 61) if isinstance(a, Publish) and a.topic == OBSERVATIONS_TOPIC]
    [o] = decode_observations(pub.data)
    assert o.subject == pid("p4") and o.evidence == b"e4"      # oldest first, as reported
