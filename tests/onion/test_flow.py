"""SENDME flow control: the sender stops at its window and resumes on SENDMEs; overruns and
wrong SENDMEs tear the circuit down."""
from __future__ import annotations

import os

import pytest

from fognode.protocols.onion.actions import CircuitClosed, SendCell, SendCells
from fognode.protocols.onion.cells import Cell, CellCommand, RelayCommand, RelayMsg
from fognode.protocols.onion.circuit import CircuitState
from fognode.protocols.onion.errors import CircuitProtocolError, TeardownReason
from fognode.protocols.onion.flow import FlowParams, RecvWindow, SendWindow
from fognode.protocols.onion.relay import RelayParams
from tests.onion.sim import SimNet
from tests.onion.test_circuits import PATH, open_circuit, open_stream

SMALL = FlowParams(circuit_window=8, circuit_increment=4, stream_window=6, stream_increment=3)


def _relay_cells(actions: list) -> int:
    return sum(a.count if isinstance(a, SendCells) else 1 for a in actions
               if isinstance(a, SendCells) or (isinstance(a, SendCell) and a.cell.command is CellCommand.RELAY))


def test_send_window_unit() -> None:
    w = SendWindow(4, 2, authenticated=True)
    for i in range(4):
        assert w.can_send()
        w.on_sent(bytes([i]) * 16)
    assert not w.can_send()
    w0 = SendWindow(4, 2, True)
    w0.on_sent(b"a" * 16)
    w0.on_sent(b"b" * 16)
    with pytest.raises(CircuitProtocolError, match="wrong tag"):
        w0.on_sendme(b"x" * 16)
    w.on_sendme(bytes([1]) * 16)            # the tag of the 2nd cell
    assert w.window == 2
    with pytest.raises(CircuitProtocolError, match="wrong tag"):
        w.on_sendme(bytes([9]) * 16)
    w2 = SendWindow(4, 2, authenticated=False)
    with pytest.raises(CircuitProtocolError, match="past 4"):
        w2.on_sendme(b"")
    r = RecvWindow(4, 2)
    for _ in range(4):
        r.on_received()
    assert r.window == 0
    assert [r.on_consumed() for _ in range(4)] == [False, True, False, True]
    assert r.window == 4


def test_recv_window_overrun_is_a_window_error() -> None:
    r = RecvWindow(2, 2)
    r.window = 0
    with pytest.raises(CircuitProtocolError) as e:
        r.on_received()
    assert e.value.reason is TeardownReason.WINDOW


def test_sender_stops_at_the_window_and_resumes_on_sendme() -> None:
    net = SimNet(5, params=RelayParams(flow=SMALL))
    circ = net.build("n0", PATH, flow=SMALL)
    net.run()
    sid = open_stream(net, circ, "sink.fog:80")
    data = os.urandom(4066 * 20)
    acts = circ.send(sid, data, net.now)
    assert _relay_cells(acts) == 6                     # the stream window (6) binds first
    assert circ.queued_bytes(sid) == 4066 * 14
    assert circ.mux.circ_send.window == 2
    net.dispatch("n0", acts)
    net.run()                                          # SENDMEs come back; the rest flows
    sunk = net.nodes["n3"].sunk
    assert bytes(next(iter(sunk.values()))) == data
    assert circ.queued_bytes(sid) == 0 and circ.state is CircuitState.OPEN


def test_circuit_window_binds_across_streams() -> None:
    net = SimNet(5, params=RelayParams(flow=SMALL))
    circ = net.build("n0", PATH, flow=SMALL)
    net.run()
    s1, s2 = open_stream(net, circ, "sink.fog:80"), open_stream(net, circ, "sink.fog:80")
    a1 = circ.send(s1, os.urandom(4066 * 5), net.now)
    a2 = circ.send(s2, os.urandom(4066 * 5), net.now)
    assert _relay_cells(a1) + _relay_cells(a2) == 8    # circuit window 8 < 2 x stream window 6
    net.dispatch("n0", a1 + a2)
    net.run()
    assert sum(len(v) for v in net.nodes["n3"].sunk.values()) == 4066 * 10


def test_relay_tears_down_a_client_that_overruns_the_window() -> None:
    net = SimNet(5, params=RelayParams(flow=SMALL))
    circ = net.build("n0", PATH, flow=SMALL)
    net.run()
    sid = open_stream(net, circ, "stall.fog:80")      # the last hop's reader never reads
    cells = []
    for _ in range(SMALL.stream_window + 1):          # a greedy client ignoring its windows
        body, _tag = circ.onion.seal_forward(2, RelayMsg(RelayCommand.DATA, sid, b"x" * 100).encode())
        cells.append(circ._cell(CellCommand.RELAY, body))
    net.dispatch("n0", cells)
    net.run()
    assert net.nodes["n3"].relay.circuits == [] and net.nodes["n1"].relay.circuits == []
    assert circ.state is CircuitState.CLOSED


def test_forged_sendme_from_the_last_hop_tears_down() -> None:
    net = SimNet(5)
    circ = open_circuit(net)
    open_stream(net, circ)
    relay3 = net.nodes["n3"].relay.circuits[0]
    body, _ = relay3.hop.originate(RelayMsg(RelayCommand.SENDME, 0, b"\x01\x10" + b"\x00" * 16).encode())
    net.queue.append(("n3", "n2", Cell(relay3.prev[1], CellCommand.RELAY, body).frame()))
    net.run()
    closed = net.client_events("n0", CircuitClosed)
    assert [c.reason for c in closed] == [TeardownReason.WINDOW]
