"""In-process event bus: typed domain events, bounded per-subscriber queues.

Publishing never blocks and never fails: each subscriber has its own bounded trio channel; when
it is full the event is dropped for that subscriber only and counted in
`fognode_node_event_drops_total{subscriber,event}`. Roles define their events as frozen
dataclasses deriving from `Event`.

Wake-ups cost: every event a subscriber receives is a scheduler step of its task, and the ledger
publishes one PaymentProcessed per certified transfer on every node. So a subscriber may pass
`accept`, a cheap predicate run at publish time (an event it refuses is never queued, so its
task is not woken; a predicate that raises lets the event through, logged), and may take what
queued up in one step with `batches()` instead of one `receive()` per event.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

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
        """A JSON/msgpack-friendly view (bytes stay bytes; callers encode as they need): the
        same dict as `dataclasses.asdict` with "event" first. An event whose fields are all
        scalars (None, bool, int, float, str, bytes) gets it without asdict's recursive deep
        copy, which was about 2 % of a validator's CPU in `bench.ledger` (the monitor role logs
        every event, and every node publishes one PaymentProcessed per certified transfer)."""
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = _FIELD_NAMES[type(self)] = tuple(f.name for f in dataclasses.fields(self))
        view: dict[str, Any] = {"event": self.kind()}
        for name in names:
            v = getattr(self, name)
            if v is not None and type(v) not in _SCALARS:
                return {"event": self.kind(), **dataclasses.asdict(self)}
            view[name] = v
        return view


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}     # Event subclass -> its field names, in order
_SCALARS = frozenset({bool, int, float, str, bytes})    # exact types: a subclass (an enum) goes to asdict


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
                 size: int, accept: Callable[[Event], bool] | None = None) -> None:
        self._bus = bus
        self.name = name
        self.kinds = kinds
        self._kinds = tuple(kinds) if kinds is not None else None
        self.accept = accept
        self._send, self._recv = trio.open_memory_channel[Event](size)

    def wants(self, ev: Event) -> bool:
        if self._kinds is not None and not isinstance(ev, self._kinds):
            return False
        if self.accept is None:
            return True
        try:
            return bool(self.accept(ev))
        except Exception:
            log.exception("event bus: %s's accept() raised on %s; delivered", self.name, ev.kind())
            return True

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

    def batches(self) -> "Batches":
        """Iterate everything queued, a list per wake-up (one scheduler step for the lot, not
        one per event), in publish order; ends when the subscription is closed."""
        return Batches(self._recv)

    def close(self) -> None:
        self._bus._subs.discard(self)
        self._send.close()

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Batches:
    """`Subscription.batches()`: an async iterator of lists of events (a plain class, not an
    async generator, so a consumer cancelled mid-iteration leaves nothing to finalise)."""

    def __init__(self, recv: trio.MemoryReceiveChannel[Event]) -> None:
        self._recv = recv

    def __aiter__(self) -> "Batches":
        return self

    async def __anext__(self) -> list[Event]:
        try:
            batch = [await self._recv.receive()]
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        while True:
            try:
                batch.append(self._recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return batch


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
        self._published: dict[str, Any] = {}    # event kind -> its child of `published`

    def subscribe(self, name: str, kinds: Iterable[type[Event]] | None = None,
                  size: int = 256, accept: Callable[[Event], bool] | None = None) -> Subscription:
        """Subscribe to some event types (all when None), and of those to the ones `accept`
        returns true for (run at publish time: keep it cheap; see the module doc). Never
        blocks."""
        sub = Subscription(self, name, frozenset(kinds) if kinds is not None else None, size,
                           accept)
        self._subs.add(sub)
        return sub

    def publish(self, ev: Event) -> None:
        """Deliver to every interested subscriber; a full queue drops (counted), never blocks."""
        kind = ev.kind()
        counter = self._published.get(kind)
        if counter is None:     # prometheus's labels() hashes and locks on every call
            counter = self._published[kind] = self.published.labels(kind)
        counter.inc()
        for sub in list(self._subs):
            if sub.wants(ev) and not sub.offer(ev):
                self.drops.labels(sub.name, kind).inc()
                log.debug("event bus: dropped %s for slow subscriber %s", kind, sub.name)
