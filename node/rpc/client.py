"""A small synchronous JSON-RPC client for the control socket (CLI, devnet, tests, benchmarks)."""
from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path
from typing import Any, Callable

from fognode.node.errors import FognodeError, RpcError


class DaemonUnreachable(FognodeError):
    """No daemon answers on the socket; the message names the path tried and why."""

    def __init__(self, path: Path, why: str) -> None:
        self.path = path
        self.why = why
        super().__init__(f"no daemon at {path} ({why})")


class RpcClient:
    """One connection to a daemon's control socket. Not thread-safe; use one per thread."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._ids = itertools.count(1)

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(str(self.path))
            except FileNotFoundError:
                s.close()
                raise DaemonUnreachable(self.path, "no such socket file") from None
            except ConnectionRefusedError:
                s.close()
                raise DaemonUnreachable(self.path, "connection refused") from None
            except PermissionError:
                s.close()
                raise DaemonUnreachable(self.path, "permission denied") from None
            except OSError as e:
                s.close()
                raise DaemonUnreachable(self.path, e.strerror or str(e)) from None
            self._sock = s
        return self._sock

    def _readline(self) -> bytes:
        s = self._connect()
        while b"\n" not in self._buf:
            try:
                chunk = s.recv(1 << 16)
            except socket.timeout:
                self.close()
                raise DaemonUnreachable(self.path, f"no answer within {self.timeout} s") from None
            if not chunk:
                self.close()
                raise DaemonUnreachable(self.path, "the daemon closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def call(self, method: str, params: Any = None, *,
             on_progress: Callable[[Any], None] | None = None) -> Any:
        """Call `method`; return its result or raise RpcError (code, message) / DaemonUnreachable.
        A streaming method's `rpc.progress` notifications go to `on_progress` (else dropped)."""
        req: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            req["params"] = params
        s = self._connect()
        try:
            s.sendall(json.dumps(req).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close()
            raise DaemonUnreachable(self.path, "the daemon closed the connection") from None
        resp = json.loads(self._readline())
        while isinstance(resp, dict) and resp.get("method") == "rpc.progress" and "id" not in resp:
            if on_progress is not None:
                on_progress((resp.get("params") or {}).get("value"))
            resp = json.loads(self._readline())
        if "error" in resp:
            e = resp["error"]
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
