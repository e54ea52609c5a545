"""`executor.InFlight`: what the FL role's reputation reports wait on, so that the signed
observations an aggregator makes for a round's participants go out after the round result it
publishes in the same step (executor.py `report_outcome`). Real trio tasks, a virtual clock."""
from __future__ import annotations

import trio

from fognode.protocols.fl.executor import InFlight


async def test_a_waiter_resumes_only_once_everything_in_flight_ended(autojump_clock: trio.abc.Clock) -> None:
    flight = InFlight()
    order: list[str] = []

    async def publish(name: str, seconds: float) -> None:
        await trio.sleep(seconds)
        order.append(name)
        flight.end()

    async def report() -> None:
        assert await flight.idle(10.0)
        order.append("report")

    async with trio.open_nursery() as nursery:
        for name, seconds in (("result", 0.3), ("plan", 0.1)):
            flight.begin()
            nursery.start_soon(publish, name, seconds)
        nursery.start_soon(report)
    assert order == ["plan", "result", "report"]
    assert flight.count == 0
    # nothing in flight: no wait at all
    with trio.fail_after(0.001):
        assert await flight.idle(10.0)


async def test_the_wait_is_bounded(autojump_clock: trio.abc.Clock) -> None:
    flight = InFlight()
    flight.begin()              # a publish that never ends (a stuck gossip layer)
    start = trio.current_time()
    assert not await flight.idle(2.0)
    assert trio.current_time() - start == 2.0
    flight.end()
    assert await flight.idle(2.0)
