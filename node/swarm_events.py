"""Connection events from py-libp2p's swarm to the overlay's bookkeeping (node/host.py): a new
connection is first admitted by the resource manager (over its peer's or subnet's limit it is
closed at once), then handed to the overlay; a closed one is released, then handed over."""
from __future__ import annotations

from typing import Any, Callable

from fognode.node.resources import ResourceGate


class SwarmNotifee:
    """py-libp2p's notifee interface; handed the resource gate and the overlay's two steps."""

    def __init__(self, resources: ResourceGate, on_connected: Callable[[Any], None],
                 on_disconnected: Callable[[Any], None]) -> None:
        self.resources = resources
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def connected(self, network: Any, conn: Any) -> None:
        if not self.resources.admit_connection(conn):   # over its peer's or subnet's limit
            await conn.close()
            return
        self._on_connected(conn)

    async def disconnected(self, network: Any, conn: Any) -> None:
        self.resources.connection_closed(conn)
        self._on_disconnected(conn)

    async def listen(self, network: Any, ma: Any) -> None:
        pass

    async def listen_close(self, network: Any, ma: Any) -> None:
        pass
