from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio
from prometheus_client import CollectorRegistry

from fognode.node.events import Event, EventBus, PeerConnected, PeerDisconnected


@dataclass(frozen=True)
class Ping(Event):
    n: int


async def test_subscriber_gets_only_its_kinds() -> None:
    bus = EventBus(CollectorRegistry())
    peers = bus.subscribe("peers", [PeerConnected])
    everything = bus.subscribe("all")
    bus.publish(PeerDisconnected("p1"))
    bus.publish(PeerConnected("p2", "/ip4/127.0.0.1/tcp/1"))
    with trio.fail_after(1):
        assert await peers.receive() == PeerConnected("p2", "/ip4/127.0.0.1/tcp/1")
        assert isinstance(await everything.receive(), PeerDisconnected)
        assert isinstance(await everything.receive(), PeerConnected)


async def test_slow_subscriber_never_blocks_publisher_and_drops_are_counted() -> None:
    reg = CollectorRegistry()
    bus = EventBus(reg)
    slow = bus.subscribe("slow", size=4)
    fast = bus.subscribe("fast", size=100)
    for i in range(10):
        bus.publish(Ping(i))  # synchronous: returns at once even though `slow` never reads
    assert reg.get_sample_value("fognode_node_event_drops_total", {"subscriber": "slow", "event": "Ping"}) == 6
    assert reg.get_sample_value("fognode_node_event_drops_total", {"subscriber": "fast", "event": "Ping"}) is None
    got = [(await slow.receive()).n for _ in range(4)]  # type: ignore[attr-defined]
    assert got == [0, 1, 2, 3]
    with trio.fail_after(1):
        assert [(await fast.receive()).n for _ in range(10)] == list(range(10))  # type: ignore[attr-defined]


async def test_closed_subscription_stops_receiving() -> None:
    bus = EventBus(CollectorRegistry())
    async with bus.subscribe("tmp") as sub:
        bus.publish(Ping(1))
        assert (await sub.receive()).n == 1  # type: ignore[attr-defined]
    bus.publish(Ping(2))  # no subscriber left; nothing raises
    assert Ping(3).to_dict() == {"event": "Ping", "n": 3}


async def test_accept_keeps_refused_events_out_of_the_queue_and_batches_take_what_queued() -> None:
    reg = CollectorRegistry()
    bus = EventBus(reg)
    even = bus.subscribe("even", [Ping], size=4, accept=lambda ev: ev.n % 2 == 0)  # type: ignore[attr-defined]
    for i in range(8):      # 4 accepted: fills the queue of 4 exactly, nothing dropped
        bus.publish(Ping(i))
    assert reg.get_sample_value("fognode_node_event_drops_total", {"subscriber": "even", "event": "Ping"}) is None
    batches = even.batches()
    with trio.fail_after(5):
        assert [ev.n for ev in await batches.__anext__()] == [0, 2, 4, 6]  # type: ignore[attr-defined]
        bus.publish(Ping(10))
        assert [ev.n for ev in await batches.__anext__()] == [10]  # type: ignore[attr-defined]
        even.close()
        with pytest.raises(StopAsyncIteration):
            await batches.__anext__()


async def test_an_accept_that_raises_lets_the_event_through() -> None:
    bus = EventBus(CollectorRegistry())

    def broken(ev: Event) -> bool:
        raise ValueError("bad filter")

    sub = bus.subscribe("broken", accept=broken)
    bus.publish(Ping(1))      # the publisher is not hurt
    with trio.fail_after(5):
        assert (await sub.receive()).n == 1  # type: ignore[attr-defined]


def test_to_dict_is_asdict_with_the_kind_first_for_flat_and_nested_events():
    """Event.to_dict's scalar fast path gives exactly dataclasses.asdict's view; an event
    with a non-scalar field (a tuple, a nested dataclass, an enum) goes through asdict."""
    import dataclasses
    import enum

    class Colour(enum.IntEnum):
        RED = 1

    @dataclasses.dataclass(frozen=True)
    class Inner:
        n: int

    @dataclasses.dataclass(frozen=True)
    class Flat(Event):
        a: str
        b: int
        c: bytes
        d: float | None
        e: bool

    @dataclasses.dataclass(frozen=True)
    class Nested(Event):
        a: str
        inner: Inner
        items: tuple[Inner, ...]
        colour: Colour

    for ev in (Flat("x", 3, b"\x01", None, True), Flat("y", -1, b"", 2.5, False),
               Nested("z", Inner(1), (Inner(2), Inner(3)), Colour.RED)):
        view = ev.to_dict()
        assert view == {"event": ev.kind(), **dataclasses.asdict(ev)}
        assert list(view) == ["event", *(f.name for f in dataclasses.fields(ev))]
    nested = Nested("z", Inner(1), (Inner(2),), Colour.RED).to_dict()
    assert nested["inner"] == {"n": 1} and nested["items"] == ({"n": 2},)
