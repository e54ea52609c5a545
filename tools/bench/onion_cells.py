"""Cells per second through the onion circuit layer's cores, against a plain copy of the same
bytes measured in the same run.

    .venv/bin/python -m fognode.tools.bench.onion_cells [--seconds 1.0]

Rows (each timed for about --seconds, single thread, no sockets):
- copy: `bytes(bytearray(cell))` of one 4096-byte cell: the bound of any per-cell work in
  Python (an allocation and a memcpy);
- 1 AEAD: one ChaCha20-Poly1305 seal of a cell body: the unit of crypto work;
- 3 layers fwd / back: the crypto alone (relay_crypto.py) for one cell crossing three hops:
  the client seals for hop 3 and adds two layers, the two middle relays strip theirs untried
  and the last opens it (forward), or the reverse (backward);
- 3 layers fwd, 514-byte cells: the same sequence of calls on Tor-sized bodies (509 bytes),
  to show what the per-cell overhead costs at Tor's size (cells.py docstring);
- middle relay: one link frame of 64 RELAY cells of one circuit through the framer and a
  middle relay's core to its framed output, cell by cell (as before session 24) and as runs
  of RUN_MAX cells and of 64 (cells.RelayRun: a run's buffers past the allocator's mmap
  threshold cost more than they save);
- full cores: ClientCircuit.send -> framed cells -> CellFramer -> three RelayCores -> the last
  hop delivers, with the authenticated SENDMEs flowing back: everything but the sockets (the
  cells of one action list for one neighbour go as one link frame, as a link writer sends them).
MB/s counts payload (4066 bytes per DATA cell; 498 at 514 bytes). The rows are measured in
--rounds interleaved rounds and each row's best round counts, so a loaded machine (this one
runs several jobs at once) disturbs every row alike rather than whichever ran during a spike.
"""
from __future__ import annotations

import argparse
import os
import random
import time
from typing import Callable

from nacl.signing import SigningKey

from fognode.protocols.onion.actions import Action, OpenStream, SendCell, SendCells, StreamData
from fognode.protocols.onion import cells
from fognode.protocols.onion.cells import (BODY_LEN, CELL_SIZE, MAX_DATA, Cell, CellCommand, CellError, CellFramer,
                                           RelayCommand, RelayMsg, RelayRun)
from fognode.protocols.onion.circuit import ClientCircuit
from fognode.protocols.onion.flow import FlowParams
from fognode.protocols.onion.links import CircIdAllocator
from fognode.protocols.onion.ntor import derive_keys, keypair
from fognode.protocols.onion.pathsel import RelayInfo
from fognode.protocols.onion.relay import RelayCircuit, RelayCore
from fognode.protocols.onion.relay_crypto import ClientOnion, RelayHop, aead_open, aead_seal, stream_xor


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Units per CPU second of `fn` (which returns the units it did) over about `seconds` of
    this process's CPU time (not wall time: on a loaded machine the process waits for a core)."""
    fn()
    done, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        done += fn()
    return done / elapsed


Row = tuple[str, Callable[[], int], int]        # (name, one batch -> units done, payload bytes per unit)


def crypto_rows() -> list[Row]:
    cell = os.urandom(CELL_SIZE)
    key, nonce = os.urandom(32), os.urandom(12)
    plain = RelayMsg(RelayCommand.DATA, 1, os.urandom(MAX_DATA)).encode()
    keys = [derive_keys(os.urandom(32)) for _ in range(3)]
    client, relays = ClientOnion(), [RelayHop(k) for k in keys]
    for k in keys:
        client.add_hop(k)

    def copy() -> int:
        for _ in range(100):
            bytes(bytearray(cell))
        return 100

    def one_aead() -> int:
        for _ in range(100):
            aead_seal(plain, nonce, key)
        return 100

    def forward() -> int:
        for _ in range(20):
            body, _ = client.seal_forward(2, plain)
            body = relays[1].pass_forward(relays[0].pass_forward(body))    # middle hops: untried
            relays[2].from_previous(body)
        return 20

    def backward() -> int:
        for _ in range(20):
            body, _ = relays[2].originate(plain)
            body = relays[1].from_next(body)
            body = relays[0].from_next(body)
            client.open_backward(body, first=2)
        return 20

    small = os.urandom(509 - 16)
    hop_keys = [(os.urandom(32), os.urandom(32)) for _ in range(3)]

    def forward_514() -> int:
        for i in range(20):
            n = i.to_bytes(12, "big")
            body = aead_seal(small, n, hop_keys[2][1])
            for k in (1, 0):
                body = stream_xor(hop_keys[k][0], n, body)
            for k in range(3):
                if aead_open(body, n, hop_keys[k][1]) is None:
                    body = stream_xor(hop_keys[k][0], n, body)
        return 20

    return [("copy of a 4096-byte cell", copy, MAX_DATA),
            ("1 ChaCha20-Poly1305 seal (4075 B)", one_aead, MAX_DATA),
            ("3 layers forward (client + 3 relays)", forward, MAX_DATA),
            ("3 layers backward (3 relays + client)", backward, MAX_DATA),
            ("3 layers forward, 514-byte cells", forward_514, 498)]


def forwarding_rows() -> list[Row]:
    """A middle relay passing on one link frame of 64 RELAY cells of one circuit: framer,
    relay core, framed output joined for the link write; cell by cell (CellFramer.feed,
    RelayCore.receive, one SendCell each) against runs (feed_runs, receive_run, SendCells of at
    most `run` cells: cells.RUN_MAX is what the node uses)."""
    core = RelayCore("me", os.urandom(32), {}, CircIdAllocator("me"))
    circ = RelayCircuit(("prev", 5), RelayHop(derive_keys(os.urandom(32))), 0.0)
    circ.next = ("next", 7)
    core._links[circ.prev] = core._by_prev[circ.prev] = core._links[circ.next] = circ
    frame = b"".join(Cell(5, CellCommand.RELAY, os.urandom(BODY_LEN)).frame() for _ in range(64))

    def by_cell() -> int:
        out: list[Action] = []
        for c in CellFramer().feed(frame):
            assert isinstance(c, Cell)
            out += core.receive("prev", c, 0.0)
        b"".join([a.cell.frame() for a in out if isinstance(a, SendCell)])
        return 64

    def by_run(run: int) -> Callable[[], int]:
        def go() -> int:
            saved, cells.RUN_MAX = cells.RUN_MAX, run
            try:
                out: list[Action] = []
                for r in CellFramer().feed_runs(frame):
                    assert isinstance(r, RelayRun)
                    out += core.receive_run("prev", r, 0.0)
            finally:
                cells.RUN_MAX = saved
            b"".join([a.frames for a in out if isinstance(a, SendCells)])
            return 64
        return go

    return [("middle relay, 64-cell frame, cell by cell", by_cell, MAX_DATA)] + [
        (f"middle relay, 64-cell frame, runs of {n}{' (RUN_MAX)' if n == cells.RUN_MAX else ''}", by_run(n), MAX_DATA)
        for n in (cells.RUN_MAX, 64)]


class Bench:
    """Client n0 -> n1 -> n2 -> n3, delivering frames by direct calls (no queue fairness)."""

    def __init__(self) -> None:
        rng = random.Random(1)
        self.relays: dict[str, RelayCore] = {}
        self.infos: list[RelayInfo] = []
        for name in ("n1", "n2", "n3"):
            ident = bytes(SigningKey(rng.randbytes(32)).verify_key)
            sk, pk = keypair(rng.randbytes(32))
            self.relays[name] = RelayCore(name, ident, {pk: sk}, CircIdAllocator(name, rng))
            self.infos.append(RelayInfo(name, ident, pk))
        self.framers: dict[tuple[str, str], CellFramer] = {}
        self.ids = CircIdAllocator("n0", rng)
        self.circ = ClientCircuit(self.ids.allocate("n1"), self.infos, FlowParams(), 0.0, 60.0)
        self.delivered = 0
        self.run("n0", self.circ.start())
        self.sid, acts = self.circ.open_stream("sink.fog:80", 0.0)
        self.run("n0", acts)

    def run(self, origin: str, actions: list[Action]) -> None:
        """Carry out `origin`'s actions; the cells of one action list for one neighbour go as
        one link frame (as a link writer batches them), split by that link's CellFramer."""
        work = [(origin, actions)]
        while work:
            src, acts = work.pop(0)
            frames: dict[str, list[bytes]] = {}
            for a in acts:
                if isinstance(a, SendCells):
                    frames.setdefault(a.peer, []).append(a.frames)
                elif isinstance(a, SendCell):
                    frames.setdefault(a.peer, []).append(a.cell.frame())
                elif isinstance(a, OpenStream):
                    work.append((src, self.relays[src].stream_opened(a.circuit, a.stream_id, 0.0)))
                elif isinstance(a, StreamData):
                    self.delivered += len(a.data)
                    work.append((src, self.relays[src].stream_consumed(a.circuit, a.stream_id, 0.0)))
            for dst, parts in frames.items():
                framer = self.framers.get((src, dst))
                if framer is None:
                    framer = self.framers[(src, dst)] = CellFramer()
                for item in framer.feed_runs(b"".join(parts)):
                    assert not isinstance(item, CellError)
                    if dst == "n0":
                        work.append(("n0", self.circ.receive_run(item, 0.0) if isinstance(item, RelayRun)
                                     else self.circ.receive(item, 0.0)))
                    elif isinstance(item, RelayRun):
                        work.append((dst, self.relays[dst].receive_run(src, item, 0.0)))
                    else:
                        work.append((dst, self.relays[dst].receive(src, item, 0.0)))

    def push(self, cells: int) -> int:
        before = self.delivered
        self.run("n0", self.circ.send(self.sid, os.urandom(MAX_DATA * cells), 0.0))
        assert self.delivered - before == MAX_DATA * cells, "data lost in the bench"
        return cells


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per row")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each row's best counts")
    a = ap.parse_args(argv)
    bench = Bench()
    rows = crypto_rows() + forwarding_rows() + [("full cores, 3 hops, SENDMEs (no sockets)", lambda: bench.push(16),
                                                  MAX_DATA)]
    best = [0.0] * len(rows)
    for _ in range(a.rounds):                 # interleaved: load on the machine hits every row alike
        for i, (_name, fn, _payload) in enumerate(rows):
            best[i] = max(best[i], rate(fn, a.seconds / a.rounds))
    copy_rate = best[0]
    print(f"cell size {CELL_SIZE} bytes (body {BODY_LEN}, {MAX_DATA} payload bytes per DATA cell); "
          f"best of {a.rounds} interleaved rounds\n")
    print("| what | cells/s | payload MB/s | vs copy |")
    print("|---|---:|---:|---:|")
    for (name, _fn, payload), r in zip(rows, best):
        print(f"| {name} | {r:,.0f} | {r * payload / 1e6:,.1f} | {r / copy_rate:.4f} |")


if __name__ == "__main__":
    main()
