"""The recent events of the node's bus, as JSON-ready maps (for `monitor.events`).

`to_json(ev)` turns any Event into `{seq, at, event: type, data: {fields}}` of plain JSON values: bytes as hex, tuples as lists, enums as
their values, anything else unknown as its str(). `EventLog` keeps the last `keep` events,
each with a sequence number and the wall-clock time it was seen, and hands every new one, as
JSON, to its `followers` (callbacks that must not block: `monitor.events --follow` queues them).

An event is kept as it arrived and turned into JSON only when it is read (`recent`, or a
follower at arrival), once: the JSON is kept with it, so a second read returns the same map.
Every node logs one PaymentProcessed per certified transfer and nobody reads most of them, so
this saves the conversion on the ledger's path. Events are frozen dataclasses, but a field could
still hold a mutable value (a list, a dict) or one whose str() changes; an event with any field
not of an immutable type (None, bool, int, float, str, bytes, an enum, or a tuple or frozenset
of these) is converted at arrival instead, so `recent` returns what the event held when it
was logged.
"""
from __future__ import annotations

import dataclasses
import enum
from collections import deque
from typing import Any, Callable, Iterable

from fognode.node.events import Event


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, enum.Enum):
        return _plain(v.value)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_plain(x) for x in v]
    return str(v)


def to_json(ev: Event, at: float, seq: int) -> dict[str, Any]:
    d = {k: _plain(v) for k, v in ev.to_dict().items()}
    kind = d.pop("event")
    return {"seq": seq, "at": round(at, 3), "event": kind, "data": d}


_SCALARS = (type(None), bool, int, float, str, bytes, enum.Enum)
_EXACT = frozenset({str, int, bytes, type(None), bool, float})     # the common case, one set lookup
_FIELDS: dict[type, tuple[str, ...]] = {}       # Event subclass -> its field names


def _immutable(ev: Event) -> bool:
    """Every field of `ev` is a scalar, an enum, or a tuple or frozenset of them."""
    names = _FIELDS.get(type(ev))
    if names is None:
        names = _FIELDS[type(ev)] = tuple(f.name for f in dataclasses.fields(ev))
    for name in names:
        v = getattr(ev, name)
        if type(v) in _EXACT or isinstance(v, _SCALARS):
            continue
        if not isinstance(v, (tuple, frozenset)) or not all(isinstance(x, _SCALARS) for x in v):
            return False
    return True


class _Logged:
    """One logged event, held as the Event until its JSON is first read (module doc)."""
    __slots__ = ("seq", "at", "kind", "held")

    def __init__(self, seq: int, at: float, kind: str, held: Event | dict[str, Any]) -> None:
        self.seq, self.at, self.kind, self.held = seq, at, kind, held

    def item(self) -> dict[str, Any]:
        if isinstance(self.held, Event):
            self.held = to_json(self.held, self.at, self.seq)
        return self.held


class EventLog:
    def __init__(self, keep: int) -> None:
        self._items: deque[_Logged] = deque(maxlen=max(1, keep))
        self.keep = keep
        self.seq = 0
        self.kinds: set[str] = set()
        self.followers: set[Callable[[dict[str, Any]], None]] = set()   # called with each new item

    def add(self, ev: Event, at: float) -> None:
        self.seq += 1
        kind = ev.kind()
        self.kinds.add(kind)
        if self.followers or not _immutable(ev):
            logged = _Logged(self.seq, at, kind, to_json(ev, at, self.seq))
        else:
            logged = _Logged(self.seq, at, kind, ev)
        if self.keep:
            self._items.append(logged)
        if self.followers:
            item = logged.item()
            for f in list(self.followers):
                f(item)

    def recent(self, kinds: Iterable[str] = (), limit: int = 100) -> list[dict[str, Any]]:
        if not limit:
            return []
        want = set(kinds)
        items = [i for i in self._items if not want or i.kind in want]
        return [i.item() for i in items[-limit:]]


def known_kinds() -> set[str]:
    """Names of every Event subclass imported in this process (the types --type accepts)."""
    out: set[str] = set()
    todo = list(Event.__subclasses__())
    while todo:
        c = todo.pop()
        out.add(c.kind())
        todo += c.__subclasses__()
    return out
