"""The dashboard over real HTTP against a real daemon: the token cookie (0600 file, new at each
start, 401 without it or with a wrong one), the allow-listed in-process API and its 400s naming
the parameter, the security headers, and the open /metrics beside it."""
from __future__ import annotations

import http.client
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from fognode.tools.devnet import DevnetNode, wait_until

from tests.monitor.conftest import MonitoredNet

pytestmark = pytest.mark.slow


def get(node: DevnetNode, target: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", node.metrics_port, timeout=15)
    conn.request("GET", target, headers=headers or {})
    resp = conn.getresponse()
    resp.body = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


def api(node: DevnetNode, token: str, method: str, query: str = "") -> tuple[int, Any]:
    r = get(node, f"/api/rpc/{method}{query}", {"Authorization": f"Bearer {token}"})
    return r.status, json.loads(r.body)  # type: ignore[attr-defined]


def test_token_cookie_api_and_bad_input(monitored_net: MonitoredNet) -> None:
    net = monitored_net(1)
    node = net.nodes[0]
    d = node.rpc("monitor.dashboard")
    url = urlsplit(d["url"])
    assert url.hostname == "127.0.0.1" and url.port == node.metrics_port
    token = url.query.removeprefix("token=")
    cookie_file = Path(d["token_file"])
    assert cookie_file == node.datadir / "monitor.cookie"
    assert stat.S_IMODE(os.stat(cookie_file).st_mode) == 0o600 and cookie_file.read_text().strip() == token

    # no token, a wrong one (URL, cookie, bearer): 401 on pages, assets and the API alike
    for target, headers in [("/", {}), ("/fl", {}), ("/assets/app.js", {}), ("/api/rpc/node.info", {}),
                            ("/?token=" + "x" * len(token), {}), ("/", {"Cookie": "fognode_dashboard=nope"}),
                            ("/api/rpc/node.info", {"Authorization": "Bearer nope"})]:
        r = get(node, target, headers)
        assert r.status == 401, (target, headers, r.status)
        assert b"fognode-cli monitor dashboard" in r.body  # type: ignore[attr-defined]
    # the token in the URL: a cookie for this server only, then the same path without the token
    r = get(node, f"/fl?token={token}")
    assert r.status == 303 and r.getheader("Location") == "/fl"
    cookie = r.getheader("Set-Cookie") or ""
    assert cookie.startswith(f"fognode_dashboard={token};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = get(node, "/fl", {"Cookie": f"fognode_dashboard={token}"})
    assert page.status == 200 and b'src="/assets/app.js"' in page.body  # type: ignore[attr-defined]
    csp = page.getheader("Content-Security-Policy") or ""
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.getheader("X-Frame-Options") == "DENY" and page.getheader("X-Content-Type-Options") == "nosniff"

    # the API: results of read methods, computed in-process
    status, body = api(node, token, "node.info")
    assert status == 200 and body["result"]["peer_id"] == node.peer_id
    status, body = api(node, token, "monitor.figures")
    assert status == 200 and body["result"]["t"] > 0
    wait_until(lambda: api(node, token, "monitor.figures")[1]["result"]["loop_lag"]["count"] > 0, timeout=15,
               what="the first loop-lag probe (every 0.25 s)")
    status, body = api(node, token, "wallet.history", "?params=" + quote('{"limit": 5}'))
    assert status == 200 and body["result"] == []
    # malformed query parameters: 400 naming the parameter
    for query, param in [("?params=%7Bnot-json", "params"), ("?params=7", "params"), ("?limit=5", "limit"),
                         ("?params=[]&params=[]", "params"), ("?params", "params")]:
        status, body = api(node, token, "wallet.history", query)
        assert status == 400 and body["error"]["data"]["param"] == param, (query, body)
        assert repr(param) in body["error"]["message"]
    status, body = api(node, token, "wallet.history", "?params=" + quote('{"limt": 5}'))
    assert status == 400 and "'limt'" in body["error"]["message"] and "limit" in body["error"]["message"]
    status, body = api(node, token, "wallet.history", "?params=" + quote('{"limit": "many"}'))
    assert status == 400 and "limit" in body["error"]["message"]
    r = get(node, "/?token=a&token=b")
    assert r.status == 400 and b"'token'" in r.body  # type: ignore[attr-defined]
    # read-only: no action through the dashboard, whatever the token
    for method, code in [("node.stop", 403), ("wallet.send", 403), ("fl.start", 403), ("no.such", 404)]:
        status, body = api(node, token, method)
        assert status == code, (method, status, body)
    assert node.alive()
    status, body = api(node, token, "fl.status", "?params=" + quote('["00"]'))
    assert status == 422 and "error" in body                  # the method's own refusal
    # another origin reaching 127.0.0.1 by name (DNS rebinding): refused before the token matters
    with socket.create_connection(("127.0.0.1", node.metrics_port), timeout=15) as s:
        s.sendall(f"GET /api/rpc/node.info HTTP/1.1\r\nHost: evil.example:{node.metrics_port}\r\n"
                  f"Authorization: Bearer {token}\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 421")
    # Prometheus and health probes stay open, as before
    assert get(node, "/metrics").status == 200 and get(node, "/health").status == 200

    # a restart makes a new token; the old one no longer opens anything
    net.stop(0)
    assert not cookie_file.exists()
    net.start(0)
    new = urlsplit(node.rpc("monitor.dashboard")["url"]).query.removeprefix("token=")
    assert new != token and cookie_file.read_text().strip() == new
    assert api(node, token, "node.info")[0] == 401 and api(node, new, "node.info")[0] == 200
