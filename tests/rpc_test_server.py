"""A real process serving a small MethodTable on a control socket, for CLI end-to-end tests.

    python tests/rpc_test_server.py SOCKET_PATH [--warm-until FILE]

Prints `ready SOCKET_PATH` on stdout once the socket accepts connections, then serves until
SIGTERM or SIGINT (stop accepting, exit 0). The methods below stand in for the daemon's roles.
With --warm-until, it answers as a warming-up daemon does (NODE_NOT_READY) until FILE exists.
"""
from __future__ import annotations

import hashlib
import signal
import sys
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from fognode.node.errors import RpcError
from fognode.node.rpc.methods import MethodTable, rpc_method
from fognode.node.rpc.server import RpcServer

DOWN_SINCE = 1796380262.0  # 2026-12-04 10:31:02 UTC: when the demo market role went down
PEERS = [
    {"peer_id": "12D3KooWAlpha", "address": "/ip4/127.0.0.1/tcp/4001", "latency_ms": 1.5},
    {"peer_id": "12D3KooWBravo", "address": "/ip4/127.0.0.1/tcp/4002", "latency_ms": 2.25,
     "roles": ["ledger", "fl"]},
]


class NodeDemo:
    @rpc_method("node.info")
    async def info(self) -> dict[str, Any]:
        """Show this node's peer id, addresses, version, roles and uptime."""
        return {"peer_id": "12D3KooWSelf", "version": "0.1.0", "uptime": 12.5,
                "addresses": ["/ip4/127.0.0.1/tcp/4000", "/ip4/10.0.0.2/tcp/4000"],
                "roles": {"ledger": {"health": "healthy", "restarts": 0},
                          "fl": {"health": "stopped", "restarts": 2}}}

    @rpc_method("node.peers")
    async def peers(self) -> list[dict[str, Any]]:
        """List the connected peers."""
        return PEERS


class WalletDemo:
    @rpc_method("wallet.send")
    async def send(self, to: str, amount: int, memo: str = "", *, urgent: bool = False) -> dict[str, Any]:
        """Send AMOUNT micro-units to address TO.

        Returns the transfer's id. AMOUNT must be positive.
        """
        if amount <= 0:
            raise RpcError(201, f"amount must be positive, got {amount}", {"amount": amount})
        tx = hashlib.blake2b(f"{to}:{amount}:{memo}".encode(), digest_size=8).digest()
        return {"tx": tx, "to": to, "amount": amount, "memo": memo, "urgent": urgent}

    @rpc_method("wallet.balance")
    async def balance(self, address: str | None = None) -> int:
        """The balance of ADDRESS (default: the node's own wallet)."""
        return 1000 if address is None else len(address)


class Demo:
    def __init__(self) -> None:
        self.never = trio.Event()

    @rpc_method("demo.tags")
    async def tags(self, tags: list[str], weights: dict[str, float] | None = None,
                   anything: Any = None) -> dict[str, Any]:
        """Echo TAGS, the optional weights map and any JSON value."""
        return {"tags": tags, "weights": weights, "anything": anything}

    @rpc_method("demo.crash")
    async def crash(self) -> None:
        """Fail with an unexpected exception."""
        raise ZeroDivisionError("division by zero")

    @rpc_method("demo.hang")
    async def hang(self) -> None:
        """Never answer (for client timeouts)."""
        await self.never.wait()

    @rpc_method("demo.nothing")
    async def nothing(self) -> None:
        """Return null."""

    @rpc_method("demo.filter")
    async def filter(self, region: str = "", online: bool | None = None, color: bool = True) -> dict[str, Any]:
        """Echo the filters: a text option, a tri-state flag and a flag that defaults to true.

        This description is deliberately long so that help output has something to wrap: it
        goes on for a while about nothing in particular, in words of ordinary length, until it
        is clearly longer than any terminal line one would use.
        """
        return {"region": region, "online": online, "color": color}


class MarketDemo:
    """A role that is down (withdrawn with a reason, as the supervisor does after a crash)."""

    @rpc_method("market.offers")
    async def offers(self, limit: int = 10) -> list[Any]:
        """List the offers."""
        return []


async def warm_until(server: RpcServer, flag: Path) -> None:
    while not flag.exists():
        await trio.sleep(0.02)  # poll interval for a file the test creates
    server.warm_up(None)


async def serve(path: Path, flag: Path | None = None) -> None:
    table = MethodTable()
    table.add_object(NodeDemo(), "node")
    table.add_object(WalletDemo(), "ledger")
    table.add_object(Demo(), "demo")
    table.add_object(MarketDemo(), "market")
    table.remove_owner("market", reason="crashed (RuntimeError: boom; restarting in 4 s)", since=DOWN_SINCE)
    server = RpcServer(table, path, CollectorRegistry(), idle_timeout=10.0)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            if flag is not None:
                server.warm_up("waiting for the test's flag file")
                nursery.start_soon(warm_until, server, flag)
            await nursery.start(server.serve)
            print(f"ready {path}", flush=True)
            async for _ in signals:
                server.stop_accepting()
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(serve, Path(sys.argv[1]), Path(sys.argv[3]) if sys.argv[2:3] == ["--warm-until"] else None)
