"""The reward-pool RPC methods: `ledger.pool` and `ledger.pools` (what this replica holds) and
`pool.close` (an operator closing a pool by hand, e.g. one whose funder and coordinators are
gone; the refund goes to the funder whoever closes). Mixed into `LedgerRole` (protocol.py),
which is where the daemon finds a role's methods; `PoolRpc` declares what it uses of it."""
from __future__ import annotations

import abc
from typing import Any

from fognode.ledger.address import encode_address
from fognode.ledger.amounts import format_amount
from fognode.ledger.errors import LEDGER_BAD_POOL, LEDGER_POOL_UNKNOWN
from fognode.ledger.messages import Certificate
from fognode.ledger.rewardpool import RewardPool
from fognode.ledger.rewardpool_client import PoolClient
from fognode.ledger.rpc_params import order_errors, parse_address
from fognode.ledger.service import LedgerService
from fognode.node.errors import RpcError
from fognode.node.rpc.methods import rpc_method


def describe_pool(pool: bytes, p: RewardPool) -> dict[str, Any]:
    v = p.view()
    for k in ("amount", "paid", "held", "refunded"):
        v[k] = format_amount(v[k])
    return {"pool": pool.hex(), "funder": encode_address(p.funder), **v}


def parse_pool(text: str) -> bytes:
    try:
        b = bytes.fromhex(text)
    except ValueError:
        b = b""
    if len(b) != 32:
        raise RpcError(LEDGER_BAD_POOL, f"pool: expected 64 hex digits, got {text!r}")
    return b


class PoolRpc(abc.ABC):
    ctx: Any
    config: Any

    @abc.abstractmethod
    def _svc(self) -> LedgerService: ...

    @abc.abstractmethod
    def _wallet(self, wallet: str) -> bytes: ...

    @abc.abstractmethod
    def _result(self, cert: Certificate) -> dict[str, Any]: ...

    def _pools(self) -> PoolClient:
        s = self._svc()
        return PoolClient(s.submitter, s.state, self.ctx.clock, pending=lambda p: bool(s.replica.waiting_on_pool(p)))

    @rpc_method("ledger.pool")
    async def ledger_pool(self, pool: str) -> dict[str, Any]:
        """The reward pool POOL (hex id) as this replica holds it: funder, session, funded,
        paid, payouts, deadline, whether it is closed and what it refunded."""
        pid = parse_pool(pool)
        p = self._pools().pool(pid)
        if p is None:
            raise RpcError(LEDGER_POOL_UNKNOWN, f"no reward pool {pool} on this replica")
        return describe_pool(pid, p)

    @rpc_method("ledger.pools")
    async def ledger_pools(self, address: str = "") -> list[dict[str, Any]]:
        """The reward pools funded by ADDRESS (default: the node's wallet)."""
        pub = parse_address(address) if address else self._wallet("")
        return [describe_pool(k, p) for k, p in self._pools().pools_of(pub)]

    @rpc_method("pool.close")
    async def pool_close(self, pool: str, wallet: str = "", timeout: float = 0.0) -> dict[str, Any]:
        """Close the reward pool POOL (hex) on the payouts this replica applied: what was not
        paid goes back to its funder. The funder may close from the pool's deadline, anyone
        from the end of its grace period."""
        pid, w = parse_pool(pool), self._wallet(wallet)
        with order_errors():
            cert = await self._pools().close(pid, wallet=w, timeout=timeout or self.config.send_timeout)
        return self._result(cert)
