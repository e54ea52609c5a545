"""Mirror selected `Event` types between a node's EventBus and one signed gossip topic.

Local events of the chosen types are published on the topic (through the reliable gossip layer,
so each carries the origin's signature and sequence number); events received on the topic are
decoded back into the same frozen dataclass and published on the local bus. Events that came
from the network are not sent out again (no echo between nodes).

Wire: `{"v": 1, "event": "<ClassName>", "f": {field: value}}`; field values must be wire types
(str, int, float, bool, bytes, None, lists and maps of those). A message naming an unknown
event, missing or extra fields, or a value of the wrong type is a RemoteProtocolError: logged
and dropped.
"""
from __future__ import annotations

import dataclasses
import logging
import typing
from collections import OrderedDict
from typing import Any, Iterable

import trio

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.events import Event, EventBus
from fognode.node.overlay import GossipMessage, Overlay
from fognode.node.wire import Fields, pack, unpack

log = logging.getLogger("fognode.event_mirror")

_SIMPLE: dict[Any, tuple[type, ...]] = {str: (str,), int: (int,), float: (int, float),
                                         bool: (bool,), bytes: (bytes,)}


def _check_value(cls_name: str, name: str, hint: Any, value: Any, peer: str) -> Any:
    origin = typing.get_origin(hint)
    if hint in _SIMPLE:
        ok = isinstance(value, _SIMPLE[hint]) and not (hint is int and isinstance(value, bool))
        if not ok:
            raise RemoteProtocolError(f"event {cls_name}: field {name!r} must be "
                                      f"{hint.__name__}, got {type(value).__name__}", peer=peer)
        return float(value) if hint is float else value
    if origin is tuple:
        if not isinstance(value, list):
            raise RemoteProtocolError(f"event {cls_name}: field {name!r} must be a list",
                                      peer=peer)
        return tuple(value)
    if origin is list and not isinstance(value, list):
        raise RemoteProtocolError(f"event {cls_name}: field {name!r} must be a list", peer=peer)
    if origin is dict and not isinstance(value, dict):
        raise RemoteProtocolError(f"event {cls_name}: field {name!r} must be a map", peer=peer)
    return value


class EventMirror:
    """Run `run()` in a nursery (or `nursery.start(mirror.run)`); cancel to stop."""

    def __init__(self, overlay: Overlay, bus: EventBus, topic: str,
                 kinds: Iterable[type[Event]], *, max_size: int = 64 * 1024) -> None:
        self.overlay = overlay
        self.bus = bus
        self.topic = topic
        self.kinds = {k.kind(): k for k in kinds}
        for k in self.kinds.values():
            if not (dataclasses.is_dataclass(k) and issubclass(k, Event)):
                raise LocalProtocolError(f"{k!r} is not an Event dataclass")
        self._hints = {name: typing.get_type_hints(k) for name, k in self.kinds.items()}
        self.max_size = max_size
        self._injected: OrderedDict[int, Event] = OrderedDict()

    def encode(self, ev: Event) -> bytes:
        fields = {f.name: getattr(ev, f.name) for f in dataclasses.fields(ev)}
        return pack({"v": 1, "event": ev.kind(), "f": fields})

    def decode(self, data: bytes, peer: str) -> Event:
        f = Fields(unpack(data, max_size=self.max_size, what="mirrored event"),
                   "mirrored event", versions={1}, peer=peer)
        name = f.str("event", max_len=128)
        raw = f.map("f", max_len=256)
        f.done()
        cls = self.kinds.get(name)
        if cls is None:
            raise RemoteProtocolError(f"mirrored event: {name!r} is not mirrored on "
                                      f"{self.topic}", peer=peer)
        names = {fl.name for fl in dataclasses.fields(cls)}
        if set(raw) != names:
            raise RemoteProtocolError(
                f"event {name}: fields {sorted(raw)} do not match {sorted(names)}", peer=peer)
        hints = self._hints[name]
        values = {k: _check_value(name, k, hints.get(k, Any), v, peer) for k, v in raw.items()}
        return cls(**values)

    async def _on_gossip(self, msg: GossipMessage) -> None:
        try:
            ev = self.decode(msg.data, msg.origin)
        except RemoteProtocolError as e:
            # signed by its origin (the gossip envelope): a rate-limited WARNING, charged to it
            self.overlay.penalize(msg.origin, f"event mirror: {e}", protocol=self.topic)
            return
        self._injected[id(ev)] = ev
        while len(self._injected) > 4096:
            self._injected.popitem(last=False)
        self.bus.publish(ev)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Subscribe to the topic and the bus, then forward until cancelled. Awaits publish
        backpressure; an event that cannot be encoded is logged and skipped."""
        sub = self.bus.subscribe(f"mirror:{self.topic}", list(self.kinds.values()))
        async with sub:
            await self.overlay.subscribe(self.topic, self._on_gossip)
            task_status.started()
            async for ev in sub:
                if self._injected.pop(id(ev), None) is ev:
                    continue           # came from the network: do not echo it back
                try:
                    data = self.encode(ev)
                except LocalProtocolError as e:
                    log.error("event mirror %s: cannot send %s: %s", self.topic, ev.kind(), e)
                    continue
                await self.overlay.publish(self.topic, data)
