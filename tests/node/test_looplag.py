"""The event-loop lag probe (node/looplag.py) on a real trio loop."""
from __future__ import annotations

import logging
import time

import pytest
import trio
from prometheus_client import CollectorRegistry

from fognode.node.looplag import watch_loop_lag


def test_a_blocked_loop_shows_as_lag_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    reg = CollectorRegistry()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: watch_loop_lag(reg, interval=0.05, warn_lag=0.3))
            await trio.sleep(0.3)            # a few on-time probes
            time.sleep(0.5)                  # a blocking call holds the loop
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()

    with caplog.at_level(logging.WARNING, logger="fognode.daemon"):
        trio.run(main)
    count = reg.get_sample_value("fognode_node_event_loop_lag_seconds_count")
    late = count - reg.get_sample_value("fognode_node_event_loop_lag_seconds_bucket", {"le": "0.25"})
    assert count >= 6 and late == 1          # exactly the probe the blocking call delayed
    assert reg.get_sample_value("fognode_node_event_loop_lag_seconds_sum") >= 0.4
    warnings = [r.getMessage() for r in caplog.records if "woke" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("the event loop woke 0.")
