"""Carrying out the onion cores' actions: ONE table from action type to handler method.

`ActionHandler` names one method per action type of `actions.Action`; `carry_out(handler,
actions)` runs a list of them, in order, through `HANDLERS`. The trio adapter (protocol.py)
and the in-memory network of the tests (tests/onion/sim.py) both implement `ActionHandler`, so
both carry actions out through this table; a new action type without an entry fails
tests/onion/test_dispatch.py, one without a method fails type checking. No trio, no I/O.

The order rule of actions.py applies: a handler must not call back into a core while the list
is being carried out (queue the call and make it after `carry_out` returns).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Protocol, get_args

from fognode.protocols.onion.actions import (Action, CircuitBuilt, CircuitClosed, CircuitMessage, OpenStream,
                                             PeerFault, PersistState, SendCell, SendCells, StreamConnected,
                                             StreamData, StreamEnded)


class ActionHandler(Protocol):
    """Who carries the onion cores' actions out. A StreamData/StreamEnded/StreamConnected is for
    a client circuit when the client owns its circuit key, else for a stream this relay serves."""

    def send_cell(self, a: SendCell) -> None: ...
    def send_cells(self, a: SendCells) -> None: ...
    def circuit_built(self, a: CircuitBuilt) -> None: ...
    def circuit_closed(self, a: CircuitClosed) -> None: ...
    def stream_connected(self, a: StreamConnected) -> None: ...
    def stream_data(self, a: StreamData) -> None: ...
    def stream_ended(self, a: StreamEnded) -> None: ...
    def open_stream(self, a: OpenStream) -> None: ...
    def peer_fault(self, a: PeerFault) -> None: ...
    def persist_state(self, a: PersistState) -> None: ...
    def circuit_message(self, a: CircuitMessage) -> None: ...


Run = Callable[[ActionHandler, Any], None]

HANDLERS: Mapping[type, Run] = {
    SendCell: lambda h, a: h.send_cell(a),
    SendCells: lambda h, a: h.send_cells(a),
    CircuitBuilt: lambda h, a: h.circuit_built(a),
    CircuitClosed: lambda h, a: h.circuit_closed(a),
    StreamConnected: lambda h, a: h.stream_connected(a),
    StreamData: lambda h, a: h.stream_data(a),
    StreamEnded: lambda h, a: h.stream_ended(a),
    OpenStream: lambda h, a: h.open_stream(a),
    PeerFault: lambda h, a: h.peer_fault(a),
    PersistState: lambda h, a: h.persist_state(a),
    CircuitMessage: lambda h, a: h.circuit_message(a),
}

ACTION_TYPES: frozenset[type] = frozenset(get_args(Action))


def carry_out(handler: ActionHandler, actions: Iterable[Action]) -> None:
    """Hand each action, in order, to its method of `handler`."""
    send_cell, send_cells = handler.send_cell, handler.send_cells
    for a in actions:
        t = type(a)
        if t is SendCells:             # most actions: no table lookup
            send_cells(a)
            continue
        if t is SendCell:
            send_cell(a)
            continue
        run = HANDLERS.get(t)
        if run is None:
            raise TypeError(f"no handler for onion action {type(a).__name__} (add it to dispatch.HANDLERS)")
        run(handler, a)
