"""The client-side circuit manager over the simulated network: adaptive timeout learned from
builds, one guard used while it works, the next one after it fails, state to persist."""
from __future__ import annotations

import random

from fognode.protocols.onion.actions import CircuitClosed, PersistState
from fognode.protocols.onion.cbt import BuildTimeEstimator, CbtParams
from fognode.protocols.onion.circuit import CircuitState
from fognode.protocols.onion.config import OnionConfig
from fognode.protocols.onion.errors import TeardownReason
from fognode.protocols.onion.manager import OnionClient
from fognode.protocols.onion.pathsel import GuardSet
from tests.onion.sim import SimNet


def setup(n: int = 8) -> tuple[SimNet, OnionClient]:
    net = SimNet(n, regions=4)
    node = net.nodes["n0"]
    cfg = OnionConfig(build_timeout_initial=5.0)
    node.client = OnionClient("n0", node.ids, cfg, GuardSet(3, cfg.guard_lifetime, 30.0),
                              BuildTimeEstimator(cfg.cbt_params()), random.Random(4))
    return net, node.client


def relays(net: SimNet) -> list:
    return [n.info() for p, n in net.nodes.items() if p != "n0"]


def test_builds_teach_the_timeout_and_stay_on_one_guard() -> None:
    net, client = setup()
    rng = random.Random(9)
    guards_used = set()
    t = 0.0
    for i in range(120):
        t += 10.0
        net.now = t
        circ, acts = client.build(relays(net), t)
        net.dispatch("n0", acts)
        net.now = t + 0.2 / (1 - rng.random()) ** (1 / 4)       # this build's latency (Pareto)
        net.run()
        assert circ.state is CircuitState.OPEN
        assert "n0" not in (h.peer_id for h in circ.path) and len({h.peer_id for h in circ.path}) == 3
        guards_used.add(circ.path[0].peer_id)
        net.dispatch("n0", client.close(circ.key, net.now))
        net.run()
    assert guards_used == {client.guards.peers[0]}
    assert not client.build_times.learning
    assert 0.2 < client.build_times.timeout() < 1.0 < 5.0
    persisted = [a.what for p, a in net.events if isinstance(a, PersistState)]
    assert persisted.count("guards") == 1 and persisted.count("build_times") == 6
    assert client.circuits == {} and all(n.relay.circuits == [] for n in net.nodes.values())


def test_a_dead_guard_is_backed_off_and_the_next_one_used() -> None:
    net, client = setup()
    circ, acts = client.build(relays(net), 0.0)
    dead = circ.path[0].peer_id
    net.intercept = lambda s, d, f: [] if d == dead else [f]
    net.dispatch("n0", acts)
    net.run()
    net.tick(6.0)                                   # past the 5 s fallback timeout
    net.run()
    closed = [a for p, a in net.events if isinstance(a, CircuitClosed)]
    assert [(c.reason, c.hops_done) for c in closed] == [(TeardownReason.TIMEOUT, 0)]
    assert client.build_times.censored == type(client.build_times.censored)()   # no hop done: not a sample
    nxt, acts = client.build(relays(net), 7.0, exclude=[dead])     # the guard choice is the backoff's
    assert nxt.path[0].peer_id == client.guards.peers[1] != dead
    net.dispatch("n0", acts)
    net.run()
    assert nxt.state is CircuitState.OPEN
    net.intercept = None
    later, acts = client.build(relays(net), 100.0)  # the backoff (30 s) is over: back to the first
    assert later.path[0].peer_id == dead


def test_link_failure_closes_the_guards_circuits() -> None:
    net, client = setup()
    circ, acts = client.build(relays(net), 0.0)
    net.dispatch("n0", acts)
    net.run()
    net.dispatch("n0", client.link_failed(circ.path[0].peer_id, 1.0))
    assert circ.state is CircuitState.CLOSED and client.circuits == {}
    assert [a.reason for p, a in net.events if isinstance(a, CircuitClosed)] == [TeardownReason.LINK]


def test_timeout_after_a_hop_is_a_censored_sample() -> None:
    net, client = setup()
    client.build_times = BuildTimeEstimator(CbtParams(initial_timeout=2.0))
    circ, acts = client.build(relays(net), 0.0)
    third = circ.path[2].peer_id
    net.intercept = lambda s, d, f: [] if d == third else [f]
    net.dispatch("n0", acts)
    net.run()
    net.tick(3.0)
    net.run()
    assert list(client.build_times.censored) == [3.0]
