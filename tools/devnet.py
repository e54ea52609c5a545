"""A local network of real daemon processes on 127.0.0.1 (`fognode devnet`, tests, benchmarks).

Each node has its own data dir under one root, one shared genesis, a fixed port chosen at
creation (so a restarted node comes back at the same address with the same peer id), and
bootstraps to node 0. Between `create()` and `start()` a node's `host` (the address it listens
on) and `launcher` (a command prefix, e.g. `ip netns exec NS` to run it in a network namespace)
may be changed.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from nacl.signing import SigningKey

from fognode.ledger.address import decode_address
from fognode.ledger.wallet import default_wallet_address
from fognode.node.datadir import SOCKET, load_identity, write_genesis
from fognode.node.genesis import dev_chain_id, dev_genesis
from fognode.node.peerid import peer_id_from_pubkey
from fognode.node.rpc.client import DaemonUnreachable, RpcClient

T = TypeVar("T")


def wait_until(predicate: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # the condition may fail while the network converges
            last_error = e
        if time.monotonic() > deadline:
            extra = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)  # poll interval, not a wait for an event


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class DevnetNode:
    index: int
    datadir: Path
    port: int
    peer_id: str
    host: str = "127.0.0.1"
    args: list[str] = field(default_factory=list)
    launcher: list[str] = field(default_factory=list)   # command prefix, e.g. `ip netns exec NS`
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.datadir / SOCKET

    @property
    def addr(self) -> str:
        return f"/ip4/{self.host}/tcp/{self.port}/p2p/{self.peer_id}"

    @property
    def log_path(self) -> Path:
        return self.datadir / "daemon.log"

    def rpc(self, method: str, params: Any = None, *, timeout: float = 30.0) -> Any:
        with RpcClient(self.socket, timeout=timeout) as c:
            return c.call(method, params)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Devnet:
    """N daemon processes. Use as a context manager; every wait is bounded."""

    def __init__(self, root: Path, n: int, *, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, host: str = "127.0.0.1",
                 init_args: list[str] | None = None) -> None:
        self.root = root
        self.n = n
        self.extra_args = list(extra_args or [])
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("FOGNODE_PASSPHRASE", "")
        self.host = host
        self.init_args = list(init_args or [])
        self.nodes: list[DevnetNode] = []

    def create(self) -> None:
        """`fognode init` each data dir, then write one shared genesis into all of them."""
        self.root.mkdir(parents=True, exist_ok=True)
        keys: list[SigningKey] = []
        for i in range(self.n):
            d = self.root / f"node{i}"
            if not (d / "identity.key").exists():
                r = subprocess.run([sys.executable, "-m", "fognode.tools.fognode", "init", "--datadir", str(d),
                                    *self.init_args], env=self.env, capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    raise RuntimeError(f"fognode init --datadir {d} failed: {r.stderr.strip()}")
            key = load_identity(d)
            keys.append(key)
            self.nodes.append(DevnetNode(i, d, free_port(self.host), peer_id_from_pubkey(bytes(key.verify_key)),
                                         self.host))
        wallets = [decode_address(default_wallet_address(n.datadir) or "") for n in self.nodes]
        genesis = dev_genesis(dev_chain_id(), keys, wallets)
        for node in self.nodes:
            write_genesis(node.datadir, genesis)

    def command(self, node: DevnetNode) -> list[str]:
        cmd = [*node.launcher, sys.executable, "-m", "fognode.tools.fognode", "run", "--datadir", str(node.datadir),
               "--listen", f"/ip4/{node.host}/tcp/{node.port}", "--metrics-port", "0"]
        if node.index != 0:
            cmd += ["--bootstrap", self.nodes[0].addr]
        return cmd + self.extra_args + node.args

    def start(self, i: int, *, wait: bool = True, timeout: float = 30.0) -> DevnetNode:
        node = self.nodes[i]
        if node.alive():
            raise RuntimeError(f"node {i} is already running (pid {node.proc.pid})")  # type: ignore[union-attr]
        log = open(node.log_path, "ab")
        node.proc = subprocess.Popen(self.command(node), env=self.env, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        if wait:
            self.wait_ready(i, timeout=timeout)
        return node

    def start_all(self, *, timeout: float = 60.0) -> None:
        for i in range(self.n):
            self.start(i, wait=False)
        deadline = time.monotonic() + timeout
        for i in range(self.n):
            self.wait_ready(i, timeout=max(0.1, deadline - time.monotonic()))

    def wait_ready(self, i: int, *, timeout: float = 30.0) -> dict[str, Any]:
        """Poll node.info until it answers; raise with the log tail if the process died or timed out."""
        node = self.nodes[i]

        def ready() -> dict[str, Any] | None:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"node {i} exited with {node.proc.returncode}:\n{self.log_tail(i)}")
            try:
                info: dict[str, Any] = node.rpc("node.info", timeout=5.0)
                return info
            except DaemonUnreachable:
                return None

        try:
            return wait_until(ready, timeout=timeout, what=f"node {i} to answer node.info")
        except TimeoutError as e:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"node {i} exited with {node.proc.returncode}:\n{self.log_tail(i)}") from None
            raise TimeoutError(f"{e}\n{self.log_tail(i)}") from None

    def log_tail(self, i: int, lines: int = 40) -> str:
        try:
            return "\n".join(self.nodes[i].log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, i: int, *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Send `sig` and wait for exit; SIGKILL after `timeout`. Returns the exit code."""
        node = self.nodes[i]
        if node.proc is None:
            return None
        if node.proc.poll() is None:
            node.proc.send_signal(sig)
            try:
                node.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(timeout=10)
        rc = node.proc.returncode
        node.proc = None
        return rc

    def kill(self, i: int) -> None:
        self.stop(i, sig=signal.SIGKILL)

    def stop_all(self, *, timeout: float = 10.0) -> dict[int, int | None]:
        for node in self.nodes:
            if node.alive():
                node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        return {node.index: self.stop(node.index, timeout=timeout) for node in self.nodes}

    def __enter__(self) -> "Devnet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
