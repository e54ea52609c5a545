"""Client circuits and relay cores wired in memory (sim.py): a 3-hop circuit end to end,
what relays know, teardown on tamper/replay/reorder, garbage, timeouts, link failures."""
from __future__ import annotations

import os
import struct

import pytest

from fognode.protocols.onion.actions import CircuitBuilt, CircuitClosed, PeerFault, StreamConnected, StreamEnded
from fognode.protocols.onion.cells import CELL_SIZE, BODY_LEN, Cell, CellCommand, decode_cell
from fognode.protocols.onion.circuit import CircuitState, ClientCircuit
from fognode.protocols.onion.errors import TeardownReason
from fognode.protocols.onion.ntor import keypair
from fognode.protocols.onion.relay import RelayParams
from tests.onion.sim import Intercept, SimNet

PATH = ["n1", "n2", "n3"]


def open_circuit(net: SimNet, client: str = "n0", path: list[str] = PATH) -> ClientCircuit:
    circ = net.build(client, path)
    net.run()
    assert circ.state is CircuitState.OPEN
    return circ


def open_stream(net: SimNet, circ: ClientCircuit, target: str = "echo.fog:80", client: str = "n0") -> int:
    sid, acts = circ.open_stream(target, net.now)
    net.dispatch(client, acts)
    net.run()
    return sid


def send(net: SimNet, circ: ClientCircuit, sid: int, data: bytes, client: str = "n0") -> None:
    net.dispatch(client, circ.send(sid, data, net.now))


@pytest.mark.parametrize("coalesce", [False, True])
def test_three_hop_circuit_carries_streams_end_to_end(coalesce: bool) -> None:
    """Also with each link's queued cells delivered as one frame (coalesce): the cores then
    forward and open runs of many cells (RelayRun, SendCells)."""
    net = SimNet(6)
    net.coalesce = coalesce
    circ = open_circuit(net)
    built = net.client_events("n0", CircuitBuilt)
    assert [b.path for b in built] == [tuple(PATH)]
    s1, s2 = open_stream(net, circ), open_stream(net, circ)
    assert {e.stream_id for e in net.client_events("n0", StreamConnected)} == {s1, s2}
    d1, d2 = os.urandom(300_000), os.urandom(50_000)
    send(net, circ, s1, d1)
    send(net, circ, s2, d2)
    net.run()
    assert net.received("n0", circ.key, s1) == d1
    assert net.received("n0", circ.key, s2) == d2
    net.dispatch("n0", circ.end_stream(s1, net.now))
    net.run()
    mux = net.nodes["n3"].relay.circuits[0].mux
    assert mux is not None and s1 not in mux.streams


def test_each_relay_knows_only_its_two_neighbours() -> None:
    net = SimNet(6)
    circ = open_circuit(net)
    sid = open_stream(net, circ)
    send(net, circ, sid, b"hello")
    net.run()
    views = {p: n.relay.snapshot(net.now) for p, n in net.nodes.items()}
    assert [(v.prev, v.next) for v in views["n1"]] == [("n0", "n2")]
    assert [(v.prev, v.next) for v in views["n2"]] == [("n1", "n3")]
    assert [(v.prev, v.next) for v in views["n3"]] == [("n2", None)]
    assert views["n0"] == [] and views["n4"] == [] and views["n5"] == []
    # the relay's whole circuit table names no other peer than its neighbours
    for p, n in net.nodes.items():
        for key, c in n.relay._links.items():
            assert key[0] in {c.prev[0], c.next[0] if c.next else None}
    # and the cells a middle relay forwards never carry the stream's plaintext
    seen: list[bytes] = []

    def spy(src: str, dst: str, f: bytes) -> list[bytes]:
        if (src, dst) == ("n1", "n2"):
            seen.append(f)
        return [f]
    net.intercept = spy
    send(net, circ, sid, b"SECRET-PAYLOAD-" * 20)
    net.run()
    assert seen and all(b"SECRET-PAYLOAD-" not in f for f in seen)


def _relay_frames_only(src: str, dst: str, frame: bytes) -> bool:
    return decode_cell(frame[2:]).command is CellCommand.RELAY


def _assert_torn_down(net: SimNet, circ: ClientCircuit) -> None:
    assert circ.state is CircuitState.CLOSED
    closed = net.client_events("n0", CircuitClosed)
    assert len(closed) == 1 and closed[0].reason in (TeardownReason.INTEGRITY, TeardownReason.DESTROYED)
    for p in PATH:
        assert net.nodes[p].relay.circuits == [], f"{p} still holds the circuit"


def _tamper_once(link: tuple[str, str], how: str) -> Intercept:
    done: list[bool] = []
    held: list[bytes] = []

    def intercept(src: str, dst: str, frame: bytes) -> list[bytes]:
        if (src, dst) != link or done or not _relay_frames_only(src, dst, frame):
            return [frame]
        if how == "flip":
            done.append(True)
            b = bytearray(frame)
            b[2 + 5 + 1000] ^= 0x01
            return [bytes(b)]
        if how == "replay":
            done.append(True)
            return [frame, frame]
        if not held:                       # reorder: hold one frame, send it after the next
            held.append(frame)
            return []
        done.append(True)
        return [frame, held[0]]
    return intercept


def _exercise(net: SimNet, circ: ClientCircuit, sid: int) -> None:
    for _ in range(3):
        if circ.state is not CircuitState.OPEN:
            return
        send(net, circ, sid, os.urandom(5000))
        net.run()


@pytest.mark.parametrize("coalesce", [False, True])
def test_tampered_replayed_or_reordered_cells_tear_the_circuit_down(coalesce: bool) -> None:
    for link in [("n1", "n2"), ("n3", "n2"), ("n2", "n1")]:          # forward and backward links
        for how in ("flip", "replay", "reorder"):
            net = SimNet(5)
            net.coalesce = coalesce
            circ = open_circuit(net)
            sid = open_stream(net, circ)
            net.intercept = _tamper_once(link, how)
            _exercise(net, circ, sid)
            _assert_torn_down(net, circ)
            ended = net.client_events("n0", StreamEnded)
            assert [e.stream_id for e in ended] == [sid], (link, how)


def test_garbage_short_oversize_and_stray_cells_keep_the_relay_up() -> None:
    net = SimNet(5)
    junk = [
        struct.pack(">H", 514) + os.urandom(514),                             # short
        struct.pack(">H", 9000) + os.urandom(9000),                           # oversize
        struct.pack(">H", CELL_SIZE) + struct.pack(">IB", 7, 99) + os.urandom(BODY_LEN),   # bad command
        Cell(0x1234, CellCommand.RELAY, os.urandom(BODY_LEN)).frame(),        # unknown circuit
        Cell(0x1234, CellCommand.CREATE, os.urandom(BODY_LEN)).frame(),       # bad handshake type
        Cell(0x1235, CellCommand.CREATED, os.urandom(BODY_LEN)).frame(),
    ]
    for f in junk:
        net.queue.append(("n4", "n1", f))
    net.run()
    faults = net.client_events("n1", PeerFault)
    assert len(faults) >= 5 and all(f.peer == "n4" for f in faults)
    assert any(f.penalize for f in faults)
    circ = open_circuit(net)                     # n1 still relays
    sid = open_stream(net, circ)
    send(net, circ, sid, b"still alive")
    net.run()
    assert net.received("n0", circ.key, sid) == b"still alive"


def test_random_relay_bodies_on_a_live_circuit_tear_down_only_that_circuit() -> None:
    net = SimNet(6)
    victim, other = open_circuit(net), open_circuit(net, "n5", ["n1", "n2", "n4"])
    net.queue.append(("n0", "n1", Cell(victim.key[1], CellCommand.RELAY, os.urandom(BODY_LEN)).frame()))
    net.run()
    assert victim.state is CircuitState.CLOSED and other.state is CircuitState.OPEN
    sid = open_stream(net, other, client="n5")
    send(net, other, sid, b"ok", client="n5")
    net.run()
    assert net.received("n5", other.key, sid) == b"ok"


def test_replayed_create_is_refused() -> None:
    net = SimNet(4)
    frames: list[bytes] = []

    def keep(s: str, d: str, f: bytes) -> list[bytes]:
        if (s, d) == ("n0", "n1"):
            frames.append(f)
        return [f]
    net.intercept = keep
    open_circuit(net)
    create = frames[0]
    net.intercept = None
    net.queue.append(("n0", "n1", create))
    net.run()
    assert any(f.reason in ("duplicate_create", "handshake") for f in net.client_events("n1", PeerFault))
    assert len(net.nodes["n1"].relay.circuits) == 1


def test_build_timeout_and_pending_extend_expiry() -> None:
    net = SimNet(5)
    net.intercept = lambda s, d, f: [] if d == "n3" else [f]      # n3 never answers
    circ = net.build("n0", PATH, timeout=2.0)
    net.run()
    assert circ.state is CircuitState.BUILDING and len(circ.onion.hops) == 2
    net.tick(1.0)
    net.run()
    assert circ.state is CircuitState.BUILDING
    net.tick(2.5)
    net.run()
    closed = net.client_events("n0", CircuitClosed)
    assert [(c.reason, c.built, c.hops_done) for c in closed] == [(TeardownReason.TIMEOUT, False, 2)]
    assert closed[0].elapsed >= 2.0
    assert net.nodes["n1"].relay.circuits == [] and net.nodes["n2"].relay.circuits == []


def test_relay_gives_up_on_an_extend_that_never_answers() -> None:
    net = SimNet(5)
    net.intercept = lambda s, d, f: [] if d == "n3" else [f]
    circ = net.build("n0", PATH, timeout=1000.0)
    net.run()
    net.tick(31.0)                          # RelayParams.extend_timeout = 30 s
    net.run()
    assert circ.state is CircuitState.CLOSED
    assert net.nodes["n2"].relay.circuits == [] and net.nodes["n1"].relay.circuits == []


def test_link_failure_destroys_circuits_through_it() -> None:
    net = SimNet(5)
    circ = open_circuit(net)
    net.dispatch("n2", net.nodes["n2"].relay.link_failed("n3", net.now))
    net.run()
    assert circ.state is CircuitState.CLOSED
    assert net.nodes["n1"].relay.circuits == []


def test_extend_back_to_the_previous_hop_is_refused() -> None:
    net = SimNet(4)
    circ = net.build("n0", ["n1", "n2", "n1"])
    net.run()
    assert circ.state is CircuitState.CLOSED
    assert net.nodes["n1"].relay.circuits == [] and net.nodes["n2"].relay.circuits == []


def test_refused_target_ends_the_stream_not_the_circuit() -> None:
    net = SimNet(5)
    circ = open_circuit(net)
    sid = open_stream(net, circ, "elsewhere.fog:80")
    assert [(e.stream_id, e.reason) for e in net.client_events("n0", StreamEnded)] == [(sid, TeardownReason.REFUSED)]
    assert circ.state is CircuitState.OPEN


def test_relay_refuses_circuits_beyond_its_limit() -> None:
    net = SimNet(5, params=RelayParams(max_circuits=2))
    a, b = open_circuit(net), open_circuit(net)
    c = net.build("n0", PATH)
    net.run()
    assert c.state is CircuitState.CLOSED and a.state is b.state is CircuitState.OPEN
    net.dispatch("n0", a.close(net.now))
    net.run()
    assert len(net.nodes["n1"].relay.circuits) == 1
    assert open_circuit(net).state is CircuitState.OPEN


def test_onion_key_rotation_keeps_the_previous_key_for_a_period() -> None:
    net = SimNet(5)
    n2 = net.nodes["n2"]
    old = (n2.onion_public, n2.onion_secret)
    new_secret, new_public = keypair()
    stale = net.info("n2")                               # what clients learned before the rotation
    n2.relay.set_onion_keys({new_public: new_secret, old[0]: old[1]})
    assert open_circuit(net).state is CircuitState.OPEN  # the previous key still answers
    n2.relay.set_onion_keys({new_public: new_secret})    # one period later: rotated out
    cid = net.nodes["n0"].ids.allocate("n1")
    circ = ClientCircuit(cid, [net.info("n1"), stale, net.info("n3")], net.params.flow, net.now, 10.0)
    net.nodes["n0"].circuits[circ.key] = circ
    net.dispatch("n0", circ.start())
    net.run()
    assert circ.state is CircuitState.CLOSED and "handshake" in str(net.client_events("n0", CircuitClosed)[-1].detail)
    assert any(f.reason == "handshake" for f in net.client_events("n2", PeerFault))
