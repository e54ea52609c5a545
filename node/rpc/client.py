"""The one synchronous JSON-RPC client of the control socket: fognode-cli, the devnet, tests and
benchmarks all talk to a daemon through `RpcClient`.

One blocking unix-socket connection, opened on the first call; calls are sequential. Replies are
matched by id; a streaming method's `rpc.progress` notifications for the call go to its
`on_progress` callback as they arrive; a connection-level error line (id null: the server is
busy, or the request line was too long) ends the call as an RpcError. What can go wrong on the
way is a `DaemonUnreachable` naming the socket path and why, with `connected` telling "nothing
answered" from "something accepted and then did not answer". Imports only the standard library
and fognode.node.errors, so the CLI that uses it starts fast.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path
from typing import Any, Callable

from fognode.node.errors import FognodeError, RpcError

SUN_PATH_MAX = 107          # sockaddr_un.sun_path is 108 bytes including the terminating NUL
_KEEP = -1.0                # `call(timeout=...)`: keep the connection's timeout


class DaemonUnreachable(FognodeError):
    """No daemon answers on the socket; the message names the path tried and why.
    `connected`: something accepted the connection but did not answer in time, or hung up."""

    def __init__(self, path: Path, why: str, *, connected: bool = False) -> None:
        self.path = path
        self.why = why
        self.connected = connected
        super().__init__(f"the daemon at {path} {why}" if connected else f"no daemon at {path} ({why})")


class RpcClient:
    """One connection to a daemon's control socket. Not thread-safe; use one per thread."""

    def __init__(self, path: str | Path, *, timeout: float | None = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._ids = itertools.count(1)

    def connect(self) -> None:
        """Open the connection now (the first call does it otherwise). Raises DaemonUnreachable."""
        self._connect()

    def _fail(self, why: str, *, connected: bool = False) -> DaemonUnreachable:
        self.close()
        return DaemonUnreachable(self.path, why, connected=connected)

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        n = len(os.fsencode(str(self.path)))
        if n > SUN_PATH_MAX:
            raise DaemonUnreachable(self.path, f"the path is {n} bytes, over the {SUN_PATH_MAX}-byte unix "
                                               f"socket limit")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        self._sock = s
        try:
            s.connect(str(self.path))
        except FileNotFoundError:
            raise self._fail("no such socket file") from None
        except ConnectionRefusedError:
            raise self._fail("connection refused") from None
        except PermissionError:
            raise self._fail("permission denied: the socket is mode 0600, run as the daemon's user") from None
        except socket.timeout:
            raise self._fail(f"no answer within {self.timeout:g} s") from None
        except OSError as e:
            raise self._fail(e.strerror or str(e)) from None
        return s

    def _readline(self, method: str) -> Any:
        s = self._connect()
        while b"\n" not in self._buf:
            try:
                chunk = s.recv(1 << 16)
            except socket.timeout:
                raise self._fail(f"did not answer {method} within {s.gettimeout():g} s (--timeout)",
                                 connected=True) from None
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                raise self._fail("closed the connection without answering", connected=True)
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            raise RpcError(0, f"the daemon sent a line that is not JSON: {line[:80]!r}") from None

    def call(self, method: str, params: Any = None, *, on_progress: Callable[[Any], None] | None = None,
             timeout: float | None = _KEEP) -> Any:
        """Call `method`; return its result, or raise RpcError (code, message, data) /
        DaemonUnreachable. `on_progress(value)` gets the call's progress notifications (a
        streaming method's); `timeout` (seconds between two lines, None: no limit) replaces
        the connection's for this call and the ones after it."""
        id_ = next(self._ids)
        req: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            req["params"] = params
        s = self._connect()
        if timeout is None or timeout >= 0:
            s.settimeout(timeout)
        try:
            s.sendall(json.dumps(req).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            raise self._fail("closed the connection without answering", connected=True) from None
        except socket.timeout:
            raise self._fail(f"did not take {method} within {s.gettimeout():g} s", connected=True) from None
        while True:
            resp = self._readline(method)
            if not isinstance(resp, dict):
                continue
            if resp.get("id") == id_:
                break
            if resp.get("id") is None and "error" in resp:
                break                       # a connection-level error: busy, line too long
            p = resp.get("params")
            if resp.get("method") == "rpc.progress" and isinstance(p, dict) and p.get("id") == id_:
                if on_progress is not None:
                    on_progress(p.get("value"))
        if "error" in resp:
            e = resp["error"] if isinstance(resp["error"], dict) else {"message": resp["error"]}
            raise RpcError(int(e.get("code", 0)), str(e.get("message", "")), e.get("data"))
        return resp.get("result")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buf = b""

    def __enter__(self) -> "RpcClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
