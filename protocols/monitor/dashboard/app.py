"""The dashboard's request handler: token check, pages, assets and `/api/rpc/<method>`.

Every path but the monitor's open /metrics and /health lands here (http.py's fallback):
- the token (cookie.py) is checked first: `?token=` that matches sets the cookie and redirects
  to the same path without it; a request without a valid token gets 401 and a page saying
  where to find the token (`fognode-cli monitor dashboard` prints the URL);
- `GET /api/rpc/<method>?params=<JSON array or object>` calls an allow-listed read method
  (access.py) in the daemon's own method table, in-process, under CALL_TIMEOUT: the result as
  `{"result": ...}`, or `{"error": {code, message, data}}` with 400 (bad params, naming them),
  403 (not a read method), 404 (no such method), 503 (its role is down), 422 (the method
  refused), 504 (too slow), 500 (a bug, logged);
- the pages (assets.PAGES) are one HTML shell whose JS renders the page of its path;
  `/assets/...` are the files of static/.
A Host header that is not this machine's loopback name gets 421 (DNS rebinding).
Every answer carries a strict Content-Security-Policy (scripts and styles from this server
only, no inline script), X-Frame-Options DENY, nosniff, no referrer and no caching.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import trio
from prometheus_client import CollectorRegistry, Counter

from fognode.node.errors import RpcError
from fognode.node.metrics import metric
from fognode.node.rpc.methods import INVALID_PARAMS, MethodTable, Progress
from fognode.node.rpc.server import encode_json, role_down_error
from fognode.protocols.monitor.dashboard.access import readable
from fognode.protocols.monitor.dashboard.assets import PAGES, load_assets
from fognode.protocols.monitor.dashboard.cookie import AccessToken, bearer_token, cookie_token, set_cookie
from fognode.protocols.monitor.dashboard.query import BadQuery, json_params, parse_query
from fognode.protocols.monitor.http import Request, Response

log = logging.getLogger("fognode.monitor.dashboard")

CALL_TIMEOUT = 10.0
JSON = "application/json"
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def _json(status: int, value: Any, extra: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, JSON, encode_json(value).encode(), SECURITY_HEADERS + extra)


def _error(status: int, code: int, message: str, data: Any = None) -> Response:
    return _json(status, {"error": {"code": code, "message": message,
                                    **({"data": data} if data is not None else {})}})


class Dashboard:
    """Serves the dashboard of one node. `methods` gives the daemon's RPC method table."""

    def __init__(self, token: AccessToken, methods: Callable[[], MethodTable], registry: CollectorRegistry,
                 *, host: str, call_timeout: float = CALL_TIMEOUT) -> None:
        self.token = token
        self.methods = methods
        self.host = host
        self.call_timeout = call_timeout
        self.assets = load_assets()
        self.m_requests = metric(registry, Counter, "fognode_monitor_dashboard_requests_total",
                                 "Dashboard requests answered, by HTTP status", ["status"])

    def url(self, port: int) -> str:
        """The URL an operator opens (with the token: it sets the cookie)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}/?token={self.token.value}"

    async def handle(self, req: Request) -> Response:
        resp = await self._answer(req)
        self.m_requests.labels(str(resp.status)).inc()
        return resp

    def _host_ok(self, host_header: str | None) -> bool:
        if host_header is None:
            return True  # HTTP/1.0 without Host: not a browser on another origin
        name = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        return name in LOOPBACK_NAMES or name == self.host or name == f"[{self.host}]"

    async def _answer(self, req: Request) -> Response:
        if not self._host_ok(req.headers.get("host")):
            return Response(421, "text/plain", b"this dashboard answers only to its loopback address\n",
                            SECURITY_HEADERS)
        api = req.path.startswith("/api/")
        try:
            params = parse_query(req.query, ("params",) if api else ("token",))
        except BadQuery as e:
            if api:
                return _error(400, INVALID_PARAMS, str(e), {"param": e.param})
            return Response(400, "text/plain; charset=utf-8", (str(e) + "\n").encode(), SECURITY_HEADERS)
        if "token" in params:
            if not self.token.matches(params["token"]):
                return self._unauthorized("the token in the URL is wrong (a restart makes a new one)", api)
            return Response(303, "text/plain", b"", SECURITY_HEADERS + (
                ("Location", req.path), ("Set-Cookie", set_cookie(self.token.value))))
        presented = cookie_token(req.headers.get("cookie")) or bearer_token(req.headers.get("authorization"))
        if not self.token.matches(presented):
            why = "wrong token (a restart of the node makes a new one)" if presented else "no token"
            return self._unauthorized(why, api)
        if api:
            if not req.path.startswith("/api/rpc/"):
                return _error(404, -32601, f"no API path {req.path} (only /api/rpc/<method>)")
            try:
                return await self._call(req.path[len("/api/rpc/"):], json_params(params.get("params")))
            except BadQuery as e:
                return _error(400, INVALID_PARAMS, str(e), {"param": e.param})
        if req.path in PAGES:
            ctype, body = self.assets["/assets/index.html"]
            return Response(200, ctype, body, SECURITY_HEADERS)
        asset = self.assets.get(req.path)
        if asset is None:
            return Response(404, "text/plain", f"no page {req.path}\n".encode(), SECURITY_HEADERS)
        return Response(200, asset[0], asset[1], SECURITY_HEADERS)

    def _unauthorized(self, why: str, api: bool) -> Response:
        text = (f"401 unauthorized: {why}. This dashboard is opened with the URL that "
                f"`fognode-cli monitor dashboard` prints (its token is in the data dir's {self.token.path.name}, "
                f"readable by the node's user only).")
        challenge = (("WWW-Authenticate", 'Bearer realm="fognode dashboard"'),)
        if api:
            return _json(401, {"error": {"code": 401, "message": text}}, challenge)
        return Response(401, "text/plain; charset=utf-8", (text + "\n").encode(), SECURITY_HEADERS + challenge)

    async def _call(self, method: str, params: Any) -> Response:
        """Call a read method in-process; see the module docstring for the statuses."""
        table = self.methods()
        if not readable(method):
            known = table.get(method) is not None or table.withdrawn_owner(method) is not None
            if known:
                return _error(403, -32601, f"{method} is not a read method: the dashboard is read-only")
            return _error(404, -32601, f"no readable method {method!r}")
        spec = table.get(method)
        if spec is None:
            owner = table.withdrawn_owner(method)
            if owner is not None:
                e = role_down_error(method, owner, table.down(owner))
                return _error(503, e.code, e.message, e.data)
            return _error(404, -32601, f"method not found: {method!r}")
        try:
            kwargs = spec.bind(params)
            if spec.progress is not None:
                kwargs[spec.progress] = Progress(None)
            with trio.move_on_after(self.call_timeout) as scope:
                result = await spec.handler(**kwargs)
            if scope.cancelled_caught:
                return _error(504, -32001, f"{method} did not answer within {self.call_timeout:g} s")
            return _json(200, {"result": result})
        except RpcError as e:
            return _error(400 if e.code == INVALID_PARAMS else 422, e.code, e.message, e.data)
        except Exception as e:
            log.error("dashboard: %s failed: %s: %s", method, type(e).__name__, e, exc_info=True)
            return _error(500, -32603, f"internal error in {method}: {type(e).__name__}: {e}")
