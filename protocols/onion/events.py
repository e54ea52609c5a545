"""Onion events on the node's event bus (the seed's `CircuitEstablished` and
`HiddenServiceDeployed`)."""
from __future__ import annotations

from dataclasses import dataclass

from fognode.node.events import Event


@dataclass(frozen=True)
class CircuitEstablished(Event):
    """One of this node's circuits is built (every hop answered)."""

    circuit: str              # "<guard peer id>:<circuit id hex>" as onion.circuits shows it
    hops: int
    build_time: float         # seconds
    purpose: str              # "general", "rendezvous", "intro", "service-rendezvous"


@dataclass(frozen=True)
class HiddenServiceDeployed(Event):
    """A hidden service of this node published its descriptor (first time, or after its
    introduction points changed), or this node deployed hosted data (`onion.deploy`: no
    introduction points nor ports of its own; `shards` hosts keep it)."""

    name: str
    address: str              # <label>.fog
    intro_points: int
    ports: tuple[int, ...]
    shards: int = 0           # hosted data: the number of shards (hosts); 0 for a port-mapped service
