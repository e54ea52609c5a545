"""Arbitrary cells into a relay core and a client circuit: they never raise, only drop, count
or tear the one circuit down; the relay keeps serving afterwards."""
from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from fognode.protocols.onion.actions import CircuitClosed
from fognode.protocols.onion.cells import BODY_LEN, Cell, CellCommand, RelayCommand, RelayMsg, RelayRun
from fognode.protocols.onion.circuit import CircuitState
from fognode.protocols.onion.errors import TeardownReason
from tests.onion.sim import SimNet
from tests.onion.test_circuits import PATH, open_circuit, open_stream, send

cells_st = st.lists(st.tuples(st.sampled_from(["live", "other", "random"]), st.sampled_from(list(CellCommand)),
                              st.binary(max_size=64), st.booleans()), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(cells_st, st.booleans())
def test_relay_survives_arbitrary_cells(cells: list[tuple[str, CellCommand, bytes, bool]], coalesce: bool) -> None:
    """`coalesce`: a link's cells arrive as one frame (RelayRuns of the live circuit's cells)."""
    net = SimNet(5)
    circ = open_circuit(net)
    net.coalesce = coalesce
    live = circ.key[1]
    for which, cmd, head, full in cells:
        cid = {"live": live, "other": live ^ 0x55, "random": int.from_bytes(os.urandom(4), "big") or 1}[which]
        body = head + (os.urandom(BODY_LEN - len(head)) if full else b"")
        net.queue.append(("n0", "n1", Cell(cid, cmd, body).frame()))
        net.queue.append(("n4", "n2", Cell(cid, cmd, body).frame()))
    net.run()
    fresh = open_circuit(net)                       # the relays still build and carry circuits
    sid = open_stream(net, fresh)
    send(net, fresh, sid, b"after the storm")
    net.run()
    assert net.received("n0", fresh.key, sid) == b"after the storm"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(CellCommand)), st.binary(max_size=BODY_LEN)), min_size=1, max_size=8))
def test_client_circuit_survives_arbitrary_cells(cells: list[tuple[CellCommand, bytes]]) -> None:
    net = SimNet(5)
    circ = open_circuit(net)
    for cmd, body in cells:
        acts = circ.receive(Cell(circ.key[1], cmd, body), net.now)
        net.dispatch("n0", acts)
    net.run()
    closed = net.client_events("n0", CircuitClosed)
    assert circ.state is CircuitState.CLOSED or not closed
    if circ.state is CircuitState.CLOSED:
        assert len(closed) == 1
        if closed[0].reason is not TeardownReason.DESTROYED:      # else the guard sent it: it knows
            assert all(n.relay.circuits == [] for p, n in net.nodes.items() if p in PATH)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=2, max_size=8))
def test_client_circuit_survives_an_arbitrary_run(heads: list[bytes]) -> None:
    """Random RELAY bodies as one run (cells.RelayRun) into an open circuit: no exception, the
    circuit is torn down once (the first body verifies at no hop) and the path with it."""
    net = SimNet(5)
    circ = open_circuit(net)
    bodies = b"".join(h + os.urandom(BODY_LEN - len(h)) for h in heads)
    before = circ.cells_received
    net.dispatch("n0", circ.receive_run(RelayRun(circ.key[1], bodies, len(heads)), net.now))
    net.run()
    closed = net.client_events("n0", CircuitClosed)
    assert circ.state is CircuitState.CLOSED and [c.reason for c in closed] == [TeardownReason.INTEGRITY]
    assert circ.cells_received == before + 1          # the rest after the teardown: dropped
    assert all(n.relay.circuits == [] for p, n in net.nodes.items() if p in PATH)


def test_relay_message_commands_out_of_place_tear_down() -> None:
    for cmd in (RelayCommand.CONNECTED, RelayCommand.EXTENDED, RelayCommand.DATA):
        net = SimNet(5)
        circ = open_circuit(net)
        sid = 0 if cmd is RelayCommand.EXTENDED else 1
        body, _ = circ.onion.seal_forward(1, RelayMsg(cmd, sid, b"").encode())     # to the middle hop
        net.dispatch("n0", [circ._cell(CellCommand.RELAY, body)])
        net.run()
        assert circ.state is CircuitState.CLOSED, cmd
