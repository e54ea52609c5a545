"""The dial circuit breaker's holds and probes (node/connmgr.py `DialBackoff`, sans-IO: time is
an argument) and the connection manager's one trim per unresponsive peer (session 32: a hold
doubled on every tick while a dead connection closed, and a role that needed a held validator
was refused for the rest of the hold after a network split healed)."""
from __future__ import annotations

import pytest
import trio

from fognode.node.connmgr import ConnectionManager, ConnectionPolicy, DialBackoff, DialBackoffError


def test_one_unresponsive_episode_is_one_hold() -> None:
    b = DialBackoff(backoff=30.0, backoff_max=600.0)
    assert b.hold("p", 0.0)
    for t in (0.5, 1.0, 10.0, 29.9):       # the trim asked for again while the connection closes
        assert not b.hold("p", t)
    assert b.remaining("p", 0.0) == 30.0
    assert not b.allowed("p", 29.9) and b.allowed("p", 30.0)


def test_a_new_hold_doubles_even_after_a_successful_dial_in_between() -> None:
    b = DialBackoff(backoff=30.0, backoff_max=100.0)
    b.hold("p", 0.0)
    b.record_success("p")                   # a probe or the peer's own dial reached it
    assert b.allowed("p", 1.0) and b.failures("p") == 0
    assert b.hold("p", 40.0)                # it stopped answering again: 60 s
    assert not b.allowed("p", 99.9) and b.allowed("p", 100.0)
    b.record_success("p")
    b.hold("p", 200.0)                      # 120 s, capped at 100
    assert b.remaining("p", 200.0) == 100.0


def test_a_dial_on_demand_probes_a_held_peer_once_per_interval() -> None:
    b = DialBackoff(backoff=30.0, probe_interval=5.0)
    b.hold("p", 0.0)
    with pytest.raises(DialBackoffError):
        b.check("p", 4.9, probe=True)       # the first probe comes one interval after the hold
    b.check("p", 5.0, probe=True)           # a probe: let through
    with pytest.raises(DialBackoffError):
        b.check("p", 9.9, probe=True)
    with pytest.raises(DialBackoffError):
        b.check("p", 12.0)                  # never without probe=True
    assert not b.allowed("p", 12.0)         # nor for the connection manager
    b.check("p", 10.0, probe=True)


def test_a_failed_probe_lengthens_the_background_wait_and_never_shortens_it() -> None:
    b = DialBackoff(backoff=30.0, backoff_max=600.0, probe_interval=5.0)
    b.hold("p", 0.0)
    b.check("p", 5.0, probe=True)
    b.record_failure("p", 8.0)              # the probe timed out: 6 failures, 60 s from now
    assert not b.allowed("p", 67.9) and b.allowed("p", 68.0)
    b.check("p", 10.0, probe=True)          # the next probe, one interval after the last
    b.record_failure("p", 13.0)             # 120 s
    assert b.remaining("p", 13.0) == 120.0


def test_the_breaker_opened_by_failures_is_probed_only_after_an_interval() -> None:
    b = DialBackoff(failures_before_backoff=5, backoff=30.0, probe_interval=5.0)
    for _ in range(5):
        b.record_failure("p", 0.0)
    with pytest.raises(DialBackoffError, match="5 failed dials in a row"):
        b.check("p", 0.0, probe=True)
    b.check("p", 5.0, probe=True)
    b.record_success("p")                   # no hold ever: forgotten outright
    b.check("p", 5.1)
    assert b.failures("p") == 0


def test_old_holds_are_forgotten() -> None:
    b = DialBackoff(backoff=30.0)
    b.hold("p", 0.0)
    b.record_success("p")
    b.forget_older_than(3000.0, 3600.0)
    assert b.hold("p", 3000.0) and b.remaining("p", 3000.0) == 60.0    # kept: doubled
    b.record_success("p")
    b.forget_older_than(3000.0 + 3601.0, 3600.0)
    assert b.hold("p", 7000.0) and b.remaining("p", 7000.0) == 30.0    # forgotten: from 30 s


async def test_an_unresponsive_peer_is_trimmed_and_held_once_while_its_connection_closes() -> None:
    """The connection manager's adapter: while the trim of a peer that stopped answering runs
    (closing a connection over a dead link can take as long as the split), further ticks
    neither trim it again nor extend its hold."""
    backoff = DialBackoff(backoff=30.0, backoff_max=600.0)
    closed = trio.Event()
    trims: list[str] = []

    async def trim(peer: str) -> None:
        trims.append(peer)
        await closed.wait()

    async def nothing(_peer: str = "") -> None:
        return None

    mgr = ConnectionManager(ConnectionPolicy(low=0, high=10), backoff,
                            connected=lambda: {"p": 0.0}, candidates=lambda: [], scores=lambda: {},
                            protected=lambda: frozenset(), dial=nothing, trim=trim, discover=nothing,
                            clock=trio.current_time, unresponsive=lambda: ["p"])
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            for _ in range(5):
                mgr.tick(nursery)
                await trio.sleep(0.01)
            assert trims == ["p"]
            assert backoff.remaining("p", t0) == pytest.approx(30.0, abs=0.1)
            closed.set()
            await trio.sleep(0.01)
            mgr.tick(nursery)                # closed, still listed: trimmed again, same hold
            await trio.sleep(0.01)
            assert trims == ["p", "p"]
            assert backoff.remaining("p", t0) == pytest.approx(30.0, abs=0.1)
