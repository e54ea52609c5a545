"""Constant-rate padding: one cell per slot on the guard link whatever the load; data rides
the slots; the last hop pads the way back at the negotiated rate."""
from __future__ import annotations

import os

from fognode.protocols.onion.cells import decode_cell
from fognode.protocols.onion.circuit import CircuitState
from fognode.protocols.onion.padding import ConstantRate
from tests.onion.sim import SimNet
from tests.onion.test_circuits import PATH, open_stream


def test_slot_clock() -> None:
    c = ConstantRate(10.0, 0.0)
    assert c.due(0.05) == 0
    assert c.due(0.1) == 1
    assert c.due(0.35) == 2
    assert abs(c.next_at - 0.4) < 1e-9
    assert c.due(10.0) == 4                    # a late tick catches up at most 4 slots


def _run_padded(data: bytes) -> tuple[list[int], list[int], bytes]:
    """Cells per second on the guard link (forward, backward) for 5 s, and what came back."""
    net = SimNet(5)
    circ = net.build("n0", PATH, padding_rate=10.0)
    net.run()
    assert circ.state is CircuitState.OPEN
    counts: dict[tuple[str, str], int] = {}

    def count(src: str, dst: str, frame: bytes) -> list[bytes]:
        counts[(src, dst)] = counts.get((src, dst), 0) + 1
        return [frame]
    sid, acts = circ.open_stream("echo.fog:80", net.now)
    assert acts == []                           # even BEGIN waits for a slot
    fwd, back = [], []
    net.intercept = count
    for second in range(5):
        if second == 1 and data:
            net.dispatch("n0", circ.send(sid, data, net.now))
        counts.clear()
        for step in range(1, 21):
            net.tick(second + step * 0.05 + 0.025)
            net.run()
        fwd.append(counts.get(("n0", "n1"), 0))
        back.append(counts.get(("n1", "n0"), 0))
    return fwd, back, net.received("n0", circ.key, sid)


def test_padding_hides_when_and_how_much_is_sent() -> None:
    idle_f, idle_b, _ = _run_padded(b"")
    data = os.urandom(4066 * 12)
    busy_f, busy_b, echoed = _run_padded(data)
    assert idle_f == busy_f == [10] * 5          # the same shape on the guard link
    assert idle_b == busy_b                      # and back, padded by the last hop (its slots
    assert all(9 <= n <= 11 for n in idle_b)     # start on its own clock: +-1 per window)
    assert echoed == data                        # 12 cells out and back within the slots


def test_drop_cells_reach_the_last_hop_and_are_discarded() -> None:
    net = SimNet(5)
    circ = net.build("n0", PATH, padding_rate=5.0)
    net.run()
    seen: list[int] = []

    def spy(s: str, d: str, f: bytes) -> list[bytes]:
        if (s, d) == ("n2", "n3"):
            seen.append(decode_cell(f[2:]).command)
        return [f]
    net.intercept = spy
    net.tick(1.0)
    net.run()
    assert len(seen) >= 4 and circ.state is CircuitState.OPEN
    assert net.nodes["n3"].relay.circuits[0].padding is not None       # negotiated
    assert not net.client_events("n3", object)


def test_no_padding_by_default() -> None:
    net = SimNet(5)
    circ = net.build("n0", PATH)
    net.run()
    sid = open_stream(net, circ)
    before = net.delivered
    net.tick(5.0)
    net.run()
    assert net.delivered == before and circ.next_wakeup() is None
