"""The recent events of the node's bus, as JSON-ready maps (for `monitor.events`).

`to_json(ev)` turns any Event into `{seq, at, event: type, data: {fields}}` of plain JSON values: bytes as hex, tuples as lists, enums as
their values, anything else unknown as its str(). `EventLog` keeps the last `keep` of them,
each with a sequence number and the wall-clock time it was seen, and hands every new one to
its `followers` (callbacks that must not block: `monitor.events --follow` queues them).
"""
from __future__ import annotations

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


class EventLog:
    def __init__(self, keep: int) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=max(1, keep))
        self.keep = keep
        self.seq = 0
        self.kinds: set[str] = set()
        self.followers: set[Callable[[dict[str, Any]], None]] = set()   # called with each new item

    def add(self, ev: Event, at: float) -> dict[str, Any]:
        self.seq += 1
        item = to_json(ev, at, self.seq)
        self.kinds.add(ev.kind())
        if self.keep:
            self._items.append(item)
        for f in list(self.followers):
            f(item)
        return item

    def recent(self, kinds: Iterable[str] = (), limit: int = 100) -> list[dict[str, Any]]:
        want = set(kinds)
        items = [i for i in self._items if not want or i["event"] in want]
        return items[-limit:] if limit else []


def known_kinds() -> set[str]:
    """Names of every Event subclass imported in this process (the types --type accepts)."""
    out: set[str] = set()
    todo = list(Event.__subclasses__())
    while todo:
        c = todo.pop()
        out.add(c.kind())
        todo += c.__subclasses__()
    return out
