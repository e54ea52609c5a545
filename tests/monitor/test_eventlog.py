"""protocols/monitor/eventlog.py: events kept as they arrived, turned into JSON on read."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from fognode.node.events import Event, PeerConnected
from fognode.protocols.monitor.eventlog import EventLog, to_json


class Colour(enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class Mixed(Event):
    who: bytes
    colour: Colour
    tags: tuple[str, ...]
    n: int | None


@dataclass(frozen=True)
class Holder(Event):
    items: list[int]            # a mutable field: the log converts it at arrival


def test_recent_is_what_converting_at_arrival_gave_in_order_and_bounded() -> None:
    evs: list[Event] = [PeerConnected(f"p{i}", "/ip4/127.0.0.1/tcp/1") for i in range(3)]
    evs += [Mixed(b"\x01\xff", Colour.RED, ("a", "b"), None), PeerConnected("p3", "x")]
    log = EventLog(4)
    for i, ev in enumerate(evs):
        log.add(ev, 1_700_000_000.123456 + i)
    want = [to_json(ev, 1_700_000_000.123456 + i, i + 1) for i, ev in enumerate(evs)][-4:]
    assert log.recent() == want                              # the oldest dropped, order kept
    assert log.recent(limit=2) == want[-2:] and log.recent(limit=0) == []
    assert log.recent(["Mixed"]) == [want[2]] and log.recent(["Nope"]) == []
    assert want[2]["data"] == {"who": "01ff", "colour": "red", "tags": ["a", "b"], "n": None}
    assert log.recent()[0] is log.recent()[0]                # converted once, then kept
    assert log.seq == 5 and log.kinds == {"PeerConnected", "Mixed"}


def test_an_event_with_a_mutable_field_is_logged_as_it_was_at_arrival() -> None:
    log = EventLog(10)
    ev = Holder([1, 2])
    log.add(ev, 5.0)
    ev.items.append(3)                                       # the publisher changes it afterwards
    assert log.recent() == [{"seq": 1, "at": 5.0, "event": "Holder", "data": {"items": [1, 2]}}]


def test_a_follower_gets_each_new_event_as_recent_returns_it() -> None:
    log = EventLog(10)
    log.add(PeerConnected("a", "x"), 1.0)
    got: list[dict[str, Any]] = []
    log.followers.add(got.append)
    log.add(PeerConnected("b", "y"), 2.0)
    assert got == log.recent()[-1:] and got[0] is log.recent()[-1]
    log.followers.discard(got.append)
    log.add(PeerConnected("c", "z"), 3.0)
    assert len(got) == 1 and [e["data"]["peer_id"] for e in log.recent()] == ["a", "b", "c"]


def test_a_log_that_keeps_nothing_still_counts_and_feeds_followers() -> None:
    log = EventLog(0)
    got: list[dict[str, Any]] = []
    log.followers.add(got.append)
    log.add(PeerConnected("a", "x"), 1.0)
    assert log.recent() == [] and log.seq == 1 and got[0]["data"]["peer_id"] == "a"
