"""Introduction and rendezvous at the circuit layer: a client and a hidden service meet at a
rendezvous point through circuits of their own and talk end to end over a virtual hop; no
relay and neither end learns the other's address. (The payloads the hidden-service layer
encrypts are plain here: this tests the relays' mechanics.)"""
from __future__ import annotations

import os

import pytest
from nacl.signing import SigningKey

from fognode.protocols.onion.actions import CircuitClosed, CircuitMessage, PeerFault, StreamConnected
from fognode.protocols.onion.cells import Cell, CellCommand, RelayCommand, RelayMsg
from fognode.protocols.onion.circuit import CircuitState, ClientCircuit
from fognode.protocols.onion.ntor import ClientHandshake, keypair, server_handshake
from fognode.protocols.onion.rendezvous import COOKIE_LEN, establish_intro_data
from tests.onion.sim import SimNet
from tests.onion.test_circuits import open_circuit, send

CLIENT, SERVICE = "n0", "n7"
SVC_IDENT = bytes(SigningKey(b"s" * 32).verify_key)
SVC_SECRET, SVC_PUBLIC = keypair(b"e" * 32)          # the service's end-to-end (descriptor) key


def messages(net: SimNet, peer: str, cmd: RelayCommand) -> list[CircuitMessage]:
    return [a for p, a in net.events if p == peer and isinstance(a, CircuitMessage) and a.command is cmd]


def meet(net: SimNet) -> tuple[ClientCircuit, ClientCircuit, ClientCircuit, ClientCircuit]:
    """(service intro circuit, client rendezvous circuit, client intro circuit, service
    rendezvous circuit), joined at n6 with the introduction at n3."""
    auth = SigningKey(b"a" * 32)
    svc_intro = open_circuit(net, SERVICE, ["n1", "n2", "n3"])
    net.dispatch(SERVICE, svc_intro.send_meeting(
        RelayCommand.ESTABLISH_INTRO, establish_intro_data(auth, net.nodes["n3"].identity), net.now))
    net.run()
    assert messages(net, SERVICE, RelayCommand.INTRO_ESTABLISHED)

    cookie = os.urandom(COOKIE_LEN)
    rend = open_circuit(net, CLIENT, ["n4", "n5", "n6"])
    net.dispatch(CLIENT, rend.send_meeting(RelayCommand.ESTABLISH_RENDEZVOUS, cookie, net.now))
    hs = ClientHandshake.start(SVC_IDENT, SVC_PUBLIC)
    cli_intro = open_circuit(net, CLIENT, ["n5", "n2", "n3"])
    payload = b"n6|" + cookie + hs.onionskin()
    net.dispatch(CLIENT, cli_intro.send_meeting(RelayCommand.INTRODUCE1, bytes(auth.verify_key) + payload, net.now))
    net.run()
    assert messages(net, CLIENT, RelayCommand.RENDEZVOUS_ESTABLISHED)
    assert [m.data for m in messages(net, CLIENT, RelayCommand.INTRODUCE_ACK)] == [b"\x00"]
    (intro2,) = messages(net, SERVICE, RelayCommand.INTRODUCE2)
    assert intro2.data == payload

    rp, got_cookie, skin = intro2.data[:2].decode(), intro2.data[3:3 + COOKIE_LEN], intro2.data[3 + COOKIE_LEN:]
    reply, keys = server_handshake(SVC_IDENT, {SVC_PUBLIC: SVC_SECRET}, skin)
    svc_rend = open_circuit(net, SERVICE, ["n2", "n1", rp])
    net.dispatch(SERVICE, svc_rend.send_meeting(RelayCommand.RENDEZVOUS1, got_cookie + reply, net.now))
    svc_rend.add_virtual_hop(keys, serve=True)
    net.run()
    (rend2,) = messages(net, CLIENT, RelayCommand.RENDEZVOUS2)
    rend.add_virtual_hop(hs.finish(rend2.data), serve=False)
    return svc_intro, rend, cli_intro, svc_rend


@pytest.mark.parametrize("coalesce", [False, True])
def test_client_and_service_meet_and_stream_end_to_end(coalesce: bool) -> None:
    """With `coalesce` the rendezvous point passes runs of cells across the join."""
    net = SimNet(8, regions=4)
    _, rend, _, svc_rend = meet(net)
    net.coalesce = coalesce
    sid, acts = rend.open_stream("svc.fog:80", net.now)
    net.dispatch(CLIENT, acts)
    net.run()
    assert [e.stream_id for e in net.client_events(CLIENT, StreamConnected)] == [sid]
    data = os.urandom(1_500_000)                  # > both windows: SENDMEs cross the join both ways
    send(net, rend, sid, data, client=CLIENT)
    net.run()
    assert net.received(CLIENT, rend.key, sid) == data
    assert rend.mux.circ_send.sent > 256 and svc_rend.mux.circ_send.sent > 256
    # the rendezvous point joins two circuits and knows one neighbour on each
    views = net.nodes["n6"].relay.snapshot(net.now)
    assert sorted((v.prev, v.joined) for v in views) == [("n1", "n5"), ("n5", "n1")]
    # no relay's state names both ends; the client's circuits never touch the service and back
    for p, node in net.nodes.items():
        peers = {x for v in node.relay.snapshot(net.now) for x in (v.prev, v.next, v.joined) if x}
        assert not {CLIENT, SERVICE} <= peers, p
    assert SERVICE not in {h.peer_id for h in rend.path} and CLIENT not in {h.peer_id for h in svc_rend.path}
    # the rendezvous point forwards the stream's cells without reading them
    seen: list[bytes] = []

    def spy(s: str, d: str, f: bytes) -> list[bytes]:
        if d == "n6" or s == "n6":
            seen.append(f)
        return [f]
    net.intercept = spy
    send(net, rend, sid, b"PLAINTEXT-MARKER" * 50, client=CLIENT)
    net.run()
    assert seen and all(b"PLAINTEXT-MARKER" not in f for f in seen)


@pytest.mark.parametrize("coalesce", [False, True])
def test_tampering_across_the_join_tears_both_circuits_down(coalesce: bool) -> None:
    net = SimNet(8, regions=4)
    _, rend, _, svc_rend = meet(net)
    net.coalesce = coalesce
    sid, acts = rend.open_stream("svc.fog:80", net.now)
    net.dispatch(CLIENT, acts)
    net.run()

    def flip(s: str, d: str, f: bytes) -> list[bytes]:
        if (s, d) == ("n6", "n1"):
            b = bytearray(f)
            b[500] ^= 1
            return [bytes(b)]
        return [f]
    net.intercept = flip
    send(net, rend, sid, b"x" * 10, client=CLIENT)
    net.run()
    assert svc_rend.state is CircuitState.CLOSED and rend.state is CircuitState.CLOSED
    assert not any(v.joined for v in net.nodes["n6"].relay.snapshot(net.now))


def test_forged_intro_and_unknown_service() -> None:
    net = SimNet(8, regions=4)
    svc = open_circuit(net, SERVICE, ["n1", "n2", "n3"])
    wrong_ip = establish_intro_data(SigningKey(b"a" * 32), net.nodes["n4"].identity)   # signed for n4
    net.dispatch(SERVICE, svc.send_meeting(RelayCommand.ESTABLISH_INTRO, wrong_ip, net.now))
    net.run()
    assert svc.state is CircuitState.CLOSED
    assert [c.reason.value for p, c in net.events if p == SERVICE and isinstance(c, CircuitClosed)] == ["destroyed"]
    cli = open_circuit(net, CLIENT, ["n5", "n2", "n3"])
    net.dispatch(CLIENT, cli.send_meeting(RelayCommand.INTRODUCE1, b"k" * 32 + b"hello", net.now))
    net.run()
    assert [m.data for m in messages(net, CLIENT, RelayCommand.INTRODUCE_ACK)] == [b"\x01"]
    rend = open_circuit(net, CLIENT, ["n4", "n5", "n6"])
    net.dispatch(CLIENT, rend.send_meeting(RelayCommand.RENDEZVOUS1, b"c" * 20 + b"reply", net.now))
    net.run()
    assert rend.state is CircuitState.CLOSED          # no such cookie


def test_the_rendezvous_point_may_be_the_services_own_node() -> None:
    # the client does not know which node hosts the service and may pick it as its rendezvous
    # point: the service's circuit leaves through two relays and comes back to its own relay core,
    # which joins it to the client's circuit (before, the service's path selection refused a
    # path ending at itself and the client waited for RENDEZVOUS2 until its step timed out)
    net = SimNet(8, regions=4)
    auth = SigningKey(b"a" * 32)
    svc_intro = open_circuit(net, SERVICE, ["n1", "n2", "n3"])
    net.dispatch(SERVICE, svc_intro.send_meeting(
        RelayCommand.ESTABLISH_INTRO, establish_intro_data(auth, net.nodes["n3"].identity), net.now))
    cookie = os.urandom(COOKIE_LEN)
    rend = open_circuit(net, CLIENT, ["n4", "n5", SERVICE])
    net.dispatch(CLIENT, rend.send_meeting(RelayCommand.ESTABLISH_RENDEZVOUS, cookie, net.now))
    hs = ClientHandshake.start(SVC_IDENT, SVC_PUBLIC)
    cli_intro = open_circuit(net, CLIENT, ["n5", "n2", "n3"])
    net.dispatch(CLIENT, cli_intro.send_meeting(RelayCommand.INTRODUCE1, bytes(auth.verify_key) + cookie
                                                + hs.onionskin(), net.now))
    net.run()
    assert [m.data for m in messages(net, CLIENT, RelayCommand.INTRODUCE_ACK)] == [b"\x00"]
    (intro2,) = messages(net, SERVICE, RelayCommand.INTRODUCE2)
    got_cookie, skin = intro2.data[:COOKIE_LEN], intro2.data[COOKIE_LEN:]
    reply, keys = server_handshake(SVC_IDENT, {SVC_PUBLIC: SVC_SECRET}, skin)
    svc_rend = open_circuit(net, SERVICE, ["n2", "n1", SERVICE])
    net.dispatch(SERVICE, svc_rend.send_meeting(RelayCommand.RENDEZVOUS1, got_cookie + reply, net.now))
    svc_rend.add_virtual_hop(keys, serve=True)
    net.run()
    (rend2,) = messages(net, CLIENT, RelayCommand.RENDEZVOUS2)
    rend.add_virtual_hop(hs.finish(rend2.data), serve=False)
    sid, acts = rend.open_stream("svc.fog:80", net.now)
    net.dispatch(CLIENT, acts)
    net.run()
    assert [e.stream_id for e in net.client_events(CLIENT, StreamConnected)] == [sid]
    data = os.urandom(600_000)
    send(net, rend, sid, data, client=CLIENT)
    net.run()
    assert net.received(CLIENT, rend.key, sid) == data
    # the service node's relay core holds the join: the client's side and its own circuit's
    views = net.nodes[SERVICE].relay.snapshot(net.now)
    assert sorted((v.prev, v.joined) for v in views) == [("n1", "n5"), ("n5", "n1")]


def test_a_run_across_the_join_with_a_cell_for_the_meeting_point_stays_in_step() -> None:
    """A run of cells reaching the rendezvous point as one frame, the first a padding DROP for
    the meeting point itself (sent before the client learnt of the join: it tries its tag until
    a cell passes across, relay_crypto.py) and the others for the far end: the DROP is taken
    there, the rest pass into the joined circuit, and the stream still works after (every
    keystream and counter in step). A cell for the meeting point after one for the far end
    (which no client sends) is passed on untried and tears both circuits down at the far end."""
    net = SimNet(8, regions=4)
    _, rend, _, svc_rend = meet(net)
    net.coalesce = True
    far, meeting = len(rend.onion.hops) - 1, len(rend.path) - 1

    def burst(dests: tuple[int, ...]) -> None:
        frames = b""
        for dest in dests:
            body, _ = rend.onion.seal_forward(dest, RelayMsg(RelayCommand.DROP).encode())
            frames += Cell(rend.key[1], CellCommand.RELAY, body).frame()
        net.queue.append((CLIENT, rend.path[0].peer_id, frames))
        net.run()
    burst((meeting, far, far, far))
    assert rend.state is CircuitState.OPEN and svc_rend.state is CircuitState.OPEN
    assert not [a for p, a in net.events if isinstance(a, PeerFault)]
    sid, acts = rend.open_stream("svc.fog:80", net.now)
    net.dispatch(CLIENT, acts)
    net.run()
    data = os.urandom(100_000)
    send(net, rend, sid, data, client=CLIENT)
    net.run()
    assert net.received(CLIENT, rend.key, sid) == data
    burst((far, meeting, far))
    assert rend.state is CircuitState.CLOSED and svc_rend.state is CircuitState.CLOSED
    assert not any(v.joined for v in net.nodes["n6"].relay.snapshot(net.now))
