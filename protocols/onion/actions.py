"""What the onion cores ask their adapter to do, and what they report (frozen dataclasses).

A circuit is named by `CircKey` = (neighbour peer id, circuit id on that link): for a client
circuit the guard's link, for a relay circuit the link towards the client.

Order matters: RELAY cells are sealed with per-hop counters as they are produced, so the
adapter must write the `SendCell`s of one list in order, per peer, and carry out the whole
list before it calls the core again (a callback that answers an action, such as a local
service's reply to `StreamData`, waits until the list is done). A cell written out of order
fails integrity at its endpoint and tears the circuit down.
"""
from __future__ import annotations

from dataclasses import dataclass

from fognode.protocols.onion.cells import Cell, RelayCommand
from fognode.protocols.onion.errors import TeardownReason

CircKey = tuple[str, int]


@dataclass(frozen=True)
class SendCell:
    """Write `cell.frame()` on the relay stream to `peer` (open it if needed; a failure is
    reported back with `link_failed`)."""

    peer: str
    cell: Cell


@dataclass(frozen=True)
class SendCells:
    """Write `frames` on the relay stream to `peer`: `count` RELAY cells, each framed as
    `Cell.frame()` frames it, back to back (cells.frame_relay_cells): a burst of one circuit's
    cells, forwarded or sent as one, in order like `SendCell`s."""

    peer: str
    frames: bytes
    count: int


@dataclass(frozen=True)
class CircuitBuilt:
    circuit: CircKey
    path: tuple[str, ...]
    build_time: float


@dataclass(frozen=True)
class CircuitClosed:
    """The circuit is gone. `built` False: it failed while building, after `elapsed` s with
    `hops_done` hops answered (a TIMEOUT with at least one hop done is a censored sample for
    the build-time estimator, as in Tor; a failure with none done counts against the guard)."""

    circuit: CircKey
    reason: TeardownReason
    detail: str
    built: bool
    elapsed: float
    hops_done: int = 0


@dataclass(frozen=True)
class StreamConnected:
    circuit: CircKey
    stream_id: int


@dataclass(frozen=True)
class StreamData:
    circuit: CircKey
    stream_id: int
    data: bytes


@dataclass(frozen=True)
class StreamEnded:
    circuit: CircKey
    stream_id: int
    reason: TeardownReason


@dataclass(frozen=True)
class OpenStream:
    """Relay side: a client asked this (last) hop to connect `target` ("host:port"); answer
    with `stream_opened` or `stream_refused`."""

    circuit: CircKey
    stream_id: int
    target: str


@dataclass(frozen=True)
class PeerFault:
    """A neighbour sent something bad (garbage, a cell out of protocol). `penalize`: its
    fault for sure (charge it: overlay.penalize); otherwise only counted (e.g. a cell racing a
    DESTROY)."""

    peer: str
    reason: str
    detail: str
    penalize: bool


@dataclass(frozen=True)
class CircuitMessage:
    """A meeting-point message for the hidden-service layer arrived on one of our circuits
    (INTRO_ESTABLISHED, INTRODUCE2, INTRODUCE_ACK, RENDEZVOUS_ESTABLISHED, RENDEZVOUS2)."""

    circuit: CircKey
    command: RelayCommand
    data: bytes


@dataclass(frozen=True)
class PersistState:
    """Write `data` to the data dir file for `what` ("guards" or "build_times"), replacing it
    (atomically: write and rename); read back with GuardSet.load / BuildTimeEstimator.load."""

    what: str
    data: bytes


Action = (SendCell | SendCells | CircuitBuilt | CircuitClosed | StreamConnected | StreamData | StreamEnded
          | OpenStream | PeerFault | PersistState | CircuitMessage)
