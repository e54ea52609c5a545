"""A relay's state for one circuit, its tunables, and what it shows of a circuit (relay.py).

`RelayCircuit` is the relay core's record of one circuit: its two links (`prev` towards the
client, `next` once extended), its layer (`RelayHop`), the streams it serves as the last hop,
its padding and the circuit it is joined to at a meeting point. `RelayCircuitView` is what
`RelayCore.snapshot` shows of it (its neighbours and counters, nothing else), and
`RelayParams` the core's limits. Plain state, no logic.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fognode.protocols.onion.actions import CircKey
from fognode.protocols.onion.cells import RelayMsg
from fognode.protocols.onion.flow import FlowParams, StreamMux
from fognode.protocols.onion.padding import ConstantRate
from fognode.protocols.onion.relay_crypto import RelayHop


@dataclass(frozen=True)
class RelayParams:
    flow: FlowParams = field(default_factory=FlowParams)
    max_circuits: int = 4096
    extend_timeout: float = 30.0
    max_padding_rate: float = 20.0        # cells/s a client may ask for on the backward direction
    replay_cache: int = 65536             # client ephemeral keys remembered


@dataclass(frozen=True)
class RelayCircuitView:
    """What a relay knows of one circuit: its two neighbours, and counters."""

    prev: str
    next: str | None
    joined: str | None        # rendezvous: the neighbour on the joined circuit
    age: float
    cells_forward: int
    cells_backward: int
    streams: int


class RelayCircuit:
    def __init__(self, prev: CircKey, hop: RelayHop, now: float) -> None:
        self.prev = prev
        self.next: CircKey | None = None
        self.hop = hop
        self.created_at = now
        self.extend_since: float | None = None     # EXTEND sent on, CREATED not back yet
        self.mux: StreamMux | None = None
        self.padding: ConstantRate | None = None
        self.backlog: deque[RelayMsg] = deque()     # control messages waiting for a padding slot
        self.cells_forward = 0
        self.cells_backward = 0
        self.joined: RelayCircuit | None = None     # rendezvous: the other circuit, once joined
        self.through = False                        # joined, and a cell from prev passed across:
                                                    # the later ones are not for this relay (untried)
        self.meeting = False                        # registered in MeetingPoints
