"""The control socket's own methods, `help` and `rpc.discover`, served from its MethodTable
(node/rpc/server.py registers them under the owner "node")."""
from __future__ import annotations

from importlib import metadata
from typing import Any

from fognode.node.errors import RpcError
from fognode.node.rpc.methods import INVALID_PARAMS, MethodTable, rpc_method


class Builtins:
    """`help` and `rpc.discover`, served by the RpcServer itself from its MethodTable."""

    def __init__(self, table: MethodTable) -> None:
        self._table = table

    def _entry(self, name: str) -> dict[str, Any]:
        spec = self._table.get(name)
        assert spec is not None
        return {"role": self._table.owner(name), **spec.describe()}

    @rpc_method("help")
    async def help(self, method: str | None = None) -> Any:
        """List every method with its role, summary and usage; with METHOD, describe that one.

        `help` returns a list of {name, role, summary, usage}. `help wallet.send` (or
        `help "wallet send"`) returns the full description: usage, params with their JSON
        schema, defaults, the result schema and the whole docstring.
        """
        if method is None:
            return [{"name": s.name, "role": self._table.owner(s.name), "summary": s.summary,
                     "usage": s.usage()} for s in self._table.all()]
        name = ".".join(method.split())
        if self._table.get(name) is None:
            close = self._table.suggest(name)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `help` lists them all"
            raise RpcError(INVALID_PARAMS, f"help: no method named {method!r}{hint}")
        return self._entry(name)

    @rpc_method("rpc.discover")
    async def discover(self) -> dict[str, Any]:
        """Describe every method in machine-readable form (OpenRPC-like).

        Returns {openrpc, info: {title, version}, methods: [...], unavailable: [...]}; each
        method carries its name, role, summary, description, usage, params (name, required,
        positional, JSON schema, default) and result schema. `unavailable` lists the methods of
        roles that are down, each with `down: {reason, since}` (since: Unix time). `fognode-cli`
        builds its commands from this.
        """
        try:
            version = metadata.version("fognode")
        except metadata.PackageNotFoundError:
            version = "unknown"
        unavailable = []
        for spec, owner in self._table.withdrawn():
            down = self._table.down(owner)
            unavailable.append({"role": owner, **spec.describe(),
                                "down": {"reason": down.reason if down else "not running",
                                         "since": down.since if down else None,
                                         **({"disabled": True} if down and down.disabled else {})}})
        return {
            "openrpc": "1.2.6",
            "info": {"title": "fognode control socket", "version": version},
            "methods": [self._entry(n) for n in self._table.names()],
            "unavailable": unavailable,
        }
