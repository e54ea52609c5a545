"""Which RPC methods the dashboard may call: reads only.

The dashboard is read-only (it has no actions): a page may call a method only if it is in
READ_METHODS, or belongs to a role of ROLE_PAGES and its verb is in READ_VERBS (so a role that
lands later, e.g. `market.offers`, shows without a dashboard change, while `market.cancel` or
`harvest.pause` never can be called). Streaming methods are called without a stream, bounded
by the dashboard's call timeout.
"""
from __future__ import annotations

READ_METHODS = frozenset({
    "rpc.discover", "node.info", "node.peers", "node.config",
    "monitor.health", "monitor.network", "monitor.figures", "monitor.series", "monitor.metrics", "monitor.alerts",
    "wallet.balance", "wallet.history", "wallet.address", "ledger.info", "ledger.stats", "stake.status",
    "fl.sessions", "fl.status", "registry.devices", "registry.show", "reputation.top", "reputation.show",
})

# Roles shown on their own page when their methods exist, and the verbs that only read.
ROLE_PAGES = ("harvest", "market", "onion")
READ_VERBS = frozenset({
    "status", "info", "stats", "show", "list", "sessions", "policy", "history", "offers", "requests",
    "contracts", "agreements", "payments", "jobs", "book", "circuits", "services", "relays", "descriptors",
})


def readable(method: str) -> bool:
    """May the dashboard call `method`?"""
    if method in READ_METHODS:
        return True
    role, _, verb = method.partition(".")
    return role in ROLE_PAGES and verb in READ_VERBS
