"""The client side of a node: builds circuits, routes their cells, learns from the outcomes.

Tor's circuit manager in small (Arti's tor-circmgr over tor-guardmgr): `build` refreshes the
guard set, picks the first usable guard and a path (pathsel.py), allocates the circuit id on
the guard's link and starts a `ClientCircuit` whose deadline is the adaptive build timeout
(cbt.py, scaled by hops / 3 for other lengths, as Arti does). Outcomes feed back: a circuit
built at the configured length adds its build time to the estimator; one that times out after
at least one hop adds a censored sample; one that fails before its first hop answers counts
against its guard (backoff, then the next guard in order); a built one clears the guard's
failures. When the guard set changes, or every `PERSIST_EVERY` observations of build times,
the manager emits `PersistState` so the adapter writes them to the data dir.

The adapter routes a cell read from `peer` to `receive` when `owns((peer, circ_id))`, and to
the relay core otherwise (circuit ids never collide: one CircIdAllocator serves both).
"""
from __future__ import annotations

import random
from typing import Sequence

from fognode.protocols.onion.actions import Action, CircKey, CircuitBuilt, CircuitClosed, PersistState
from fognode.protocols.onion.cbt import BuildTimeEstimator
from fognode.protocols.onion.cells import Cell, RelayRun
from fognode.protocols.onion.circuit import ClientCircuit
from fognode.protocols.onion.config import OnionConfig
from fognode.protocols.onion.errors import TeardownReason
from fognode.protocols.onion.links import CircIdAllocator
from fognode.protocols.onion.pathsel import GuardSet, RelayInfo, select_path

PERSIST_EVERY = 20
GUARD_FAULTS = (TeardownReason.TIMEOUT, TeardownReason.HANDSHAKE, TeardownReason.LINK, TeardownReason.DESTROYED,
                TeardownReason.REFUSED, TeardownReason.PROTOCOL)


class OnionClient:
    def __init__(self, self_peer: str, ids: CircIdAllocator, config: OnionConfig, guards: GuardSet,
                 build_times: BuildTimeEstimator, rng: random.Random | None = None) -> None:
        self.self_peer = self_peer
        self.ids = ids
        self.config = config
        self.guards = guards
        self.build_times = build_times
        self.rng = rng or random.SystemRandom()
        self.circuits: dict[CircKey, ClientCircuit] = {}
        self._observed = 0

    def owns(self, key: CircKey) -> bool:
        return key in self.circuits

    def build(self, relays: Sequence[RelayInfo], now: float, *, hops: int | None = None,
              last: RelayInfo | None = None, padding_rate: float | None = None,
              exclude: Sequence[str] = ()) -> tuple[ClientCircuit, list[Action]]:
        """Start a circuit over a fresh path avoiding `exclude` after the guard (PathError if
        there is none): (circuit, actions). A fixed `last` hop that is one of our guards is
        not used as the guard too: the next usable guard is."""
        n = hops or self.config.hops
        out: list[Action] = []
        if self.guards.refresh(relays, now, self.rng, self.self_peer):
            out.append(PersistState("guards", self.guards.to_bytes()))
        guard = self.guards.choose([r for r in relays if last is None or r.peer_id != last.peer_id], now)
        path = select_path(relays, n, guard, self.rng, self_peer=self.self_peer, last=last,
                           exclude=[p for p in exclude if p != guard.peer_id])
        timeout = self.build_times.timeout() * max(n, 1) / 3
        circ = ClientCircuit(self.ids.allocate(guard.peer_id), path, self.config.flow(), now, timeout,
                             self.config.padding_rate if padding_rate is None else padding_rate)
        self.circuits[circ.key] = circ
        return circ, out + self._observe(circ.start())

    def receive(self, peer: str, cell: Cell, now: float) -> list[Action]:
        circ = self.circuits.get((peer, cell.circ_id))
        return self._observe(circ.receive(cell, now)) if circ is not None else []

    def receive_run(self, peer: str, run: RelayRun, now: float) -> list[Action]:
        circ = self.circuits.get((peer, run.circ_id))
        return self._observe(circ.receive_run(run, now)) if circ is not None else []

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        for circ in list(self.circuits.values()):
            out += self._observe(circ.tick(now))
        return out

    def next_wakeup(self) -> float | None:
        times = [t for c in self.circuits.values() if (t := c.next_wakeup()) is not None]
        return min(times) if times else None

    def link_failed(self, peer: str, now: float) -> list[Action]:
        out: list[Action] = []
        for key, circ in list(self.circuits.items()):
            if key[0] == peer:
                out += self._observe(circ.link_lost(now))
        return out

    def close(self, key: CircKey, now: float) -> list[Action]:
        circ = self.circuits.get(key)
        return self._observe(circ.close(now)) if circ is not None else []

    def _observe(self, actions: list[Action]) -> list[Action]:
        extra: list[Action] = []
        for a in actions:
            if isinstance(a, CircuitBuilt):
                self.guards.mark_ok(a.path[0])
                if len(a.path) == self.config.hops:
                    self.build_times.note_built(a.build_time)
                    extra += self._maybe_persist()
            elif isinstance(a, CircuitClosed):
                circ = self.circuits.pop(a.circuit, None)
                self.ids.release(*a.circuit)
                if a.built or circ is None:
                    continue
                if a.reason is TeardownReason.TIMEOUT and a.hops_done > 0:
                    self.build_times.note_timeout(a.elapsed)
                    extra += self._maybe_persist()
                if a.hops_done == 0 and a.reason in GUARD_FAULTS:
                    self.guards.mark_failed(a.circuit[0], a.elapsed + circ.started)
                    extra.append(PersistState("guards", self.guards.to_bytes()))
        return actions + extra

    def _maybe_persist(self) -> list[Action]:
        self._observed += 1
        if self._observed % PERSIST_EVERY:
            return []
        return [PersistState("build_times", self.build_times.to_bytes())]
