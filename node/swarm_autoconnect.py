"""Bite 19: py-libp2p 0.8.1's swarm carries a connection manager of its own, `AutoConnector`,
and this module switches it off so that ours (node/connmgr.py) is the only one that dials.

The symptom: `AutoConnector.maybe_connect` aims at the midpoint of the swarm's low and high
watermarks whenever high > low, so `low_watermark=0` does not stop it (checked: with
`peers_low = 0` and a second peer's address in the peerstore, one `maybe_connect` dialled it).
It runs every `auto_connect_interval` and again on every disconnect, dials up to half the
hard cap (far above `peers_high`, which our connmgr then trims again), and ignores our dial
backoff, our trims and an operator's `node.disconnect`.

`ConnmgrDecides` takes the AutoConnector's place on the swarm before the swarm starts. It has
the six methods py-libp2p calls on it (swarm.py: start, stop, run_background_task,
maybe_connect, record_disconnect; kad_dht.py: set_discovery_callback), and none of them dials.
tests/node/test_host.py pins that list against the installed py-libp2p."""
from __future__ import annotations

from typing import Any, Awaitable, Callable

# the AutoConnector methods py-libp2p 0.8.1 calls (swarm.py, kad_dht.py)
CALLED_BY_LIBP2P = ("start", "stop", "run_background_task", "maybe_connect",
                    "record_disconnect", "set_discovery_callback")


class ConnmgrDecides:
    """Stands in for py-libp2p's AutoConnector: the overlay's connection manager decides
    whom to dial, so every call py-libp2p makes here leaves the connections as they are."""

    _is_connecting = False        # read by Swarm._schedule_auto_connect

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def run_background_task(self, nursery: Any) -> None:
        return None

    async def maybe_connect(self) -> None:
        return None

    def record_disconnect(self, peer_id: Any) -> None:
        return None

    def set_discovery_callback(self, callback: Callable[[], Awaitable[None]] | None) -> None:
        return None


def disable_auto_connector(swarm: Any) -> None:
    """Put `ConnmgrDecides` in the place of the swarm's AutoConnector (before it runs)."""
    swarm.auto_connector = ConnmgrDecides()
