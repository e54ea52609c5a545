"""A local network of real daemon processes on 127.0.0.1 (`fognode devnet`, tests, benchmarks).

Each node has its own data dir under one root, one shared genesis, a fixed port chosen at
creation (so a restarted node comes back at the same address with the same peer id), and
bootstraps to node 0 (node 0 to node 1).

`create()` records the devnet in `<root>/devnet.json` (ports, metrics ports, regions, peer
ids) and writes each node's real settings (listen address, bootstrap peers, metrics port,
region) into its `node.toml`, so `fognode run --datadir <root>/nodeN` alone restarts that node
as the devnet ran it. `Devnet.open(root)` resumes a recorded devnet without touching its
genesis or ledgers; `create()` refuses a root that already holds one (DevnetExists).

Between `create()` and `start()` a node's `host` (the address it listens on) and `launcher` (a
command prefix, e.g. `ip netns exec NS` to run it in a network namespace) may be changed; the
command line then overrides the listen address written into its node.toml.
"""
from __future__ import annotations

import atexit
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import psutil
from nacl.signing import SigningKey

from fognode.ledger.address import decode_address
from fognode.ledger.wallet import default_wallet_address
from fognode.node.datadir import CONFIG, LOCK, SOCKET, load_identity, write_atomic, write_genesis
from fognode.tools.genesis import dev_chain_id, dev_genesis
from fognode.node.peerid import peer_id_from_pubkey
from fognode.node.rpc.client import DaemonUnreachable, RpcClient

T = TypeVar("T")

MANIFEST = "devnet.json"


class DevnetExists(Exception):
    """The root already holds a devnet (or data dirs); writing a new genesis would orphan
    their ledgers. The message says how to resume it or start afresh."""


def set_config_keys(text: str, values: dict[str, dict[str, Any]], note: str) -> str:
    """A node.toml text with `values` ({section: {key: value}}) set: an existing `key = ...`
    line of the section is replaced (its comment kept, `note` prepended), a missing key is
    added under its section header, a missing section at the end. Values are written as JSON,
    which is valid TOML for strings, integers and lists of strings."""
    lines = text.splitlines()
    for section, keys in values.items():
        header = f"[{section}]"
        start = next((i for i, ln in enumerate(lines) if ln.strip() == header), None)
        if start is None:
            lines += ["", header]
            start = len(lines) - 1
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        for key, value in keys.items():
            new_value = json.dumps(value)
            for i in range(start + 1, end):
                m = re.match(r"^(\s*)([A-Za-z0-9_]+)(\s*=\s*)(.*?)(\s+#\s?(.*))?$", lines[i])
                if m and m.group(2) == key:
                    comment = f"  # {note}" + (f"; {m.group(6)}" if m.group(6) else "")
                    lines[i] = f"{m.group(1)}{key}{m.group(3)}{new_value}{comment}"
                    break
            else:
                lines.insert(start + 1, f"{key} = {new_value}  # {note}")
                end += 1
    return "\n".join(lines) + "\n"


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


PORT_SPAN = 12000            # ports free_port draws from, just below the ephemeral range
_reserved: dict[int, socket.socket] = {}     # port -> its reservation, held while this process lives


@atexit.register
def _release_reservations() -> None:
    """Close the port reservations at exit (the kernel would; this keeps ResourceWarning quiet)."""
    for held in _reserved.values():
        held.close()
    _reserved.clear()


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for bind(port 0) and outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _reserve(port: int) -> socket.socket | None:
    """Hold an abstract unix socket named after `port` (one name per machine and network
    namespace; released when this process exits, however it exits), or None if another process
    holds it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(f"\0fognode-port-{port}")
    except OSError:
        s.close()
        return None
    return s


def _bindable(host: str, port: int) -> bool:
    """Whether nothing holds `port` on `host` (a plain bind: a lingering connection counts)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port for a node to listen on later, safe across concurrent processes (pytest-xdist
    workers, two test runs, devnets): it lies below the kernel's ephemeral range, so no
    bind(port 0) and no outgoing connection takes it meanwhile, and it is reserved machine-wide
    for the life of this process (an abstract unix socket named after it), so no other caller
    of free_port in any process gets it, while this process may use it again (a restarted
    node keeps its address). Where the ephemeral range cannot be read or leaves no room (not
    Linux), the kernel's choice: bind port 0."""
    low = _ephemeral_low()
    if low >= 2048:
        first = max(1024, low - PORT_SPAN)
        span = low - first
        start = random.randrange(span)
        for k in range(span):
            port = first + (start + k) % span
            if port in _reserved:
                continue
            held = _reserve(port)
            if held is None:
                continue
            if _bindable(host, port):
                _reserved[port] = held
                return port
            held.close()
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
    metrics_port: int = 0          # Prometheus endpoint port; 0: none
    region: str = ""               # node.region ("" leaves the node.toml default)

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
                 init_args: list[str] | None = None, metrics: bool = False,
                 regions: list[str] | None = None) -> None:
        """`metrics`: give each node its own Prometheus port (else none); `regions`: node i
        gets regions[i % len(regions)] (a single entry: every node)."""
        self.root = root
        self.n = n
        self.metrics = metrics
        self.regions = list(regions or [])
        self.extra_args = list(extra_args or [])
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("FOGNODE_PASSPHRASE", "")
        self.host = host
        self.init_args = list(init_args or [])
        self.nodes: list[DevnetNode] = []

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def create(self) -> None:
        """`fognode init` each data dir, then write one shared genesis into all of them, each
        node's settings into its node.toml, and the devnet into `<root>/devnet.json`.

        Raises DevnetExists if the root already holds a devnet or initialised data dirs (their
        ledgers belong to another genesis)."""
        if self.manifest_path.exists():
            raise DevnetExists(
                f"{self.root} already holds a devnet ({MANIFEST}); resume it with `fognode devnet --dir "
                f"{self.root}`, or start afresh with another --dir (or after `rm -r {self.root}`)")
        taken = [d for d in (self.root / f"node{i}" for i in range(self.n)) if (d / "identity.key").exists()]
        if taken:
            raise DevnetExists(
                f"{taken[0]} is already an initialised data dir (not recorded in {self.manifest_path}): "
                f"refusing to write a new genesis over its ledger; start afresh with another --dir "
                f"(or after `rm -r {self.root}`)")
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
                                         self.host, metrics_port=free_port(self.host) if self.metrics else 0,
                                         region=self.regions[i % len(self.regions)] if self.regions else ""))
        wallets = [decode_address(default_wallet_address(n.datadir) or "") for n in self.nodes]
        genesis = dev_genesis(dev_chain_id(), keys, wallets)
        for node in self.nodes:
            write_genesis(node.datadir, genesis)
            self.write_node_config(node)
        self.write_manifest(genesis["chain_id"])

    def bootstrap(self, node: DevnetNode) -> list[str]:
        """Node 0 bootstraps to node 1, every other node to node 0."""
        if len(self.nodes) < 2:
            return []
        return [self.nodes[1 if node.index == 0 else 0].addr]

    def settings(self, node: DevnetNode) -> dict[str, dict[str, Any]]:
        """The config keys the devnet sets for `node` (also given as flags by `command`)."""
        values: dict[str, dict[str, Any]] = {
            "overlay": {"listen": [f"/ip4/{node.host}/tcp/{node.port}"], "bootstrap": self.bootstrap(node)},
            "protocols.monitor": {"port": node.metrics_port},
            # every node of a devnet shares one machine: each would count the others' CPU as
            # its owner's and suspend its harvest work, so owner-busy is off
            "protocols.harvest": {"owner_busy_pct": 0.0, "idle_owner_busy_pct": 0.0},
            "protocols.onion": {"socks_port": 0},     # one SOCKS port per machine: set per node if wanted
        }
        if node.region:
            values["node"] = {"region": node.region}
        return values

    def write_node_config(self, node: DevnetNode) -> None:
        """Write the devnet's settings for `node` into its node.toml."""
        path = node.datadir / CONFIG
        text = path.read_text() if path.exists() else ""
        write_atomic(path, set_config_keys(text, self.settings(node), "set by fognode devnet").encode(), 0o644)

    def write_manifest(self, chain_id: str) -> None:
        data = {"version": 1, "chain_id": chain_id, "host": self.host, "nodes": [
            {"index": n.index, "port": n.port, "metrics_port": n.metrics_port, "region": n.region,
             "peer_id": n.peer_id} for n in self.nodes]}
        write_atomic(self.manifest_path, (json.dumps(data, indent=2) + "\n").encode(), 0o644)

    @classmethod
    def open(cls, root: Path, **kwargs: Any) -> "Devnet":
        """The devnet recorded in `<root>/devnet.json`, ready to start again: same ports, peer
        ids, genesis and ledgers. FileNotFoundError if there is none; ValueError if it is
        unreadable or a data dir is missing."""
        try:
            data = json.loads((root / MANIFEST).read_text())
            entries = data["nodes"]
            net = cls(root, len(entries), host=str(data.get("host", "127.0.0.1")),
                      metrics=any(e.get("metrics_port") for e in entries), **kwargs)
            for e in entries:
                node = DevnetNode(int(e["index"]), root / f"node{int(e['index'])}", int(e["port"]),
                                  str(e["peer_id"]), net.host, metrics_port=int(e.get("metrics_port", 0)),
                                  region=str(e.get("region", "")))
                if not (node.datadir / "identity.key").exists():
                    raise ValueError(f"{node.datadir} is missing or not initialised")
                net.nodes.append(node)
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{root / MANIFEST} is not a devnet record: {type(e).__name__}: {e}") from None
        return net

    def command(self, node: DevnetNode) -> list[str]:
        cmd = [*node.launcher, sys.executable, "-m", "fognode.tools.fognode", "run", "--datadir", str(node.datadir),
               "--listen", f"/ip4/{node.host}/tcp/{node.port}", "--metrics-port", str(node.metrics_port)]
        for addr in self.bootstrap(node):
            cmd += ["--bootstrap", addr]
        if node.region:
            cmd += ["--region", node.region]
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
        """Poll node.info until this devnet's process of node i answers; raise with the log tail
        if the process died or timed out. An answer counts only when the data dir's lock holds
        that process's pid (or that of a process under it): another daemon on the same data dir (`fognode run --datadir D/nodeN`
        left running) answers on the same socket while the new process fails on the lock."""
        node = self.nodes[i]

        def ready() -> dict[str, Any] | None:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"node {i} exited with {node.proc.returncode}:\n{self.log_tail(i)}")
            try:
                info: dict[str, Any] = node.rpc("node.info", timeout=5.0)
            except DaemonUnreachable:
                return None
            if node.proc is not None and not self._holds_lock(i, node.proc.pid):
                return None     # not ours: ours exits on the lock, the next poll says so
            return info

        try:
            return wait_until(ready, timeout=timeout, what=f"node {i} to answer node.info")
        except TimeoutError as e:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"node {i} exited with {node.proc.returncode}:\n{self.log_tail(i)}") from None
            raise TimeoutError(f"{e}\n{self.log_tail(i)}") from None

    def _holds_lock(self, i: int, pid: int) -> bool:
        """Whether the daemon holding node i's data dir lock (its pid is in the lock file) is
        process `pid` or runs under it (a launcher such as `ip netns exec` may fork)."""
        try:
            holder = int((self.nodes[i].datadir / LOCK).read_text().strip())
            return holder == pid or pid in {p.pid for p in psutil.Process(holder).parents()}
        except (OSError, ValueError, psutil.Error):
            return False

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
