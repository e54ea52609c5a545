"""In-process event bus: typed domain events, bounded per-subscriber queues.

Publishing never blocks and never fails: each subscriber has its own bounded trio channel; when
it is full the event is dropped for that subscriber only and counted in
`fognode_node_event_drops_total{subscriber,event}`. Roles define their events as frozen
dataclasses deriving from `Event`.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterable

import trio
from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger("fognode.events")


@dataclass(frozen=True)
class Event:
    """Base of every domain event. Subclasses are frozen dataclasses."""

    @classmethod
    def kind(cls) -> str:
        return cls.__name__

    def to_dict(self) -> dict[str, Any]:
        """A JSON/msgpack-friendly view (bytes stay bytes; callers encode as they need)."""
        return {"event": self.kind(), **dataclasses.asdict(self)}


@dataclass(frozen=True)
class PeerConnected(Event):
    peer_id: str
    address: str


@dataclass(frozen=True)
class PeerDisconnected(Event):
    peer_id: str


@dataclass(frozen=True)
class RoleHealthChanged(Event):
    role: str
    healthy: bool
    detail: str


class Subscription:
    """A subscriber's end: iterate it (`async for ev in sub`) or call `receive()`.

    Closing it (or leaving the `async with`) unsubscribes.
    """

    def __init__(self, bus: "EventBus", name: str, kinds: frozenset[type[Event]] | None,
                 size: int) -> None:
        self._bus = bus
        self.name = name
        self.kinds = kinds
        self._send, self._recv = trio.open_memory_channel[Event](size)

    def wants(self, ev: Event) -> bool:
        return self.kinds is None or isinstance(ev, tuple(self.kinds))

    def offer(self, ev: Event) -> bool:
        try:
            self._send.send_nowait(ev)
            return True
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False

    async def receive(self) -> Event:
        """Await the next event. Cancellable."""
        return await self._recv.receive()

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._bus._subs.discard(self)
        self._send.close()

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Publish/subscribe of `Event`s inside one node."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._subs: set[Subscription] = set()
        self.drops = Counter(
            "fognode_node_event_drops_total",
            "Events dropped because a subscriber's queue was full",
            ["subscriber", "event"],
            registry=registry,
        )
        self.published = Counter(
            "fognode_node_events_total", "Events published on the bus", ["event"], registry=registry
        )

    def subscribe(self, name: str, kinds: Iterable[type[Event]] | None = None,
                  size: int = 256) -> Subscription:
        """Subscribe to some event types (all when None). Never blocks."""
        sub = Subscription(self, name, frozenset(kinds) if kinds is not None else None, size)
        self._subs.add(sub)
        return sub

    def publish(self, ev: Event) -> None:
        """Deliver to every interested subscriber; a full queue drops (counted), never blocks."""
        kind = ev.kind()
        self.published.labels(kind).inc()
        for sub in list(self._subs):
            if sub.wants(ev) and not sub.offer(ev):
                self.drops.labels(sub.name, kind).inc()
                log.debug("event bus: dropped %s for slow subscriber %s", kind, sub.name)
