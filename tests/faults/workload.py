"""A Jepsen-style transfer workload against a devnet: one client thread per node sends tokens
from that node's wallet over its RPC socket and records every operation with its outcome and
(monotonic) start and end times; checkers read the replicas' certificates back.

Clients pace themselves (`PACE` seconds between operations, a workload rate, not a wait for a
condition) and stop at the end of their current operation when told to. An operation's outcome
is "final" (certified), "in_flight" (NotCertified: the order stays in flight) or "error"
(anything else: a checker fails the test on it). `check_history` is the checker of the
replicas once the network healed and they converged.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fognode.ledger.errors import LEDGER_NOT_CERTIFIED
from fognode.node.errors import RpcError
from fognode.tools.devnet import Devnet, DevnetNode

PACE = 0.2                 # seconds between one client's operations
SEND_TIMEOUT = 4.0         # wallet.send --timeout: how long a send waits for its certificate


@dataclass(frozen=True)
class Op:
    node: int
    start: float
    end: float
    outcome: str             # "final" | "in_flight" | "error"
    tx: str = ""
    sequence: int = -1
    error: str = ""


@dataclass
class Client:
    """Sends `amount` from `node`'s default wallet to `to`, again and again, in a thread."""

    node: DevnetNode
    to: str
    amount: str = "1"
    ops: list[Op] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"client-{self.node.index}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.ops.append(self.send_once())
            self.stop.wait(PACE)

    def send_once(self, timeout: float = SEND_TIMEOUT) -> Op:
        t0 = time.monotonic()
        try:
            res = self.node.rpc("wallet.send", {"to": self.to, "amount": self.amount, "timeout": timeout},
                                timeout=timeout + 20)
            return Op(self.node.index, t0, time.monotonic(), "final", res["tx"], int(res["sequence"]))
        except RpcError as e:
            if e.code == LEDGER_NOT_CERTIFIED and isinstance(e.data, dict):
                rejections = e.data.get("rejections") or {}
                return Op(self.node.index, t0, time.monotonic(), "in_flight", str(e.data.get("tx", "")),
                          error=f"{e}; rejections: {rejections}" if rejections else str(e))
            return Op(self.node.index, t0, time.monotonic(), "error", error=f"{e.code}: {e}")
        except Exception as e:   # a dead socket, a timeout: recorded, the checker fails on it
            return Op(self.node.index, t0, time.monotonic(), "error", error=f"{type(e).__name__}: {e}")

    def since(self, t: float, outcome: str) -> list[Op]:
        """Operations of this client started at or after `t` with `outcome`."""
        return [o for o in list(self.ops) if o.start >= t and o.outcome == outcome]

    def join(self, timeout: float) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                raise TimeoutError(f"client of node {self.node.index} still sending after {timeout} s")


def summary(clients: list[Client], t: float) -> str:
    """Per client: outcomes of its operations started since `t`, and the last one's error."""
    out = []
    for c in clients:
        ops = [o for o in list(c.ops) if o.start >= t]
        counts = {k: sum(1 for o in ops if o.outcome == k) for k in ("final", "in_flight", "error")}
        last = ops[-1].error[:600] if ops and ops[-1].error else ""
        out.append(f"node {c.node.index}: {counts} {last}")
    return "\n".join(out)


def start_clients(net: Devnet, wallets: list[str]) -> list[Client]:
    """One client per node, node i paying wallet i+1 (mod n)."""
    clients = [Client(n, wallets[(n.index + 1) % len(wallets)]) for n in net.nodes]
    for c in clients:
        c.start()
    return clients


def certificates(node: DevnetNode, wallets: list[str]) -> dict[tuple[str, int], set[str]]:
    """Every certificate `node`'s replica holds that touches one of `wallets`, as
    (sender, sequence) -> transaction ids (more than one id is a double certification)."""
    out: dict[tuple[str, int], set[str]] = {}
    for w in wallets:
        for h in node.rpc("wallet.history", {"address": w, "limit": 1000, "verbose": True}):
            if h["status"] == "final":      # (an order of this node's wallet in flight is listed too)
                out.setdefault((h["sender"], int(h["sequence"])), set()).add(h["tx"])
    return out


def merged(maps: list[dict[tuple[str, int], set[str]]]) -> dict[tuple[str, int], set[str]]:
    out: dict[tuple[str, int], set[str]] = {}
    for m in maps:
        for k, v in m.items():
            out.setdefault(k, set()).update(v)
    return out


def flat(certs: dict[tuple[str, int], set[str]]) -> set[tuple[str, int, str]]:
    return {(sender, seq, tx) for (sender, seq), txs in certs.items() for tx in txs}


def state_of(node: DevnetNode) -> dict[str, Any]:
    r: dict[str, Any] = node.rpc("ledger.state_root")
    return r


def converged(net: Devnet) -> bool:
    """Whether every replica has applied as many certificates and has the same state root."""
    states = [state_of(n) for n in net.nodes]
    return len({s["state_root"] for s in states}) == 1 and len({s["applied"] for s in states}) == 1


def check_history(net: Devnet, wallets: list[str], clients: list[Client]) -> None:
    """After convergence: `ledger.verify` passes and no fork was seen on every replica, every
    replica holds the same certificates, none twice for a (sender, sequence), every final send
    is there, and every order a send left in flight either completed as itself or is still in
    flight (no later send of its wallet was final, and no certificate holds its sequence)."""
    for n in net.nodes:
        v = n.rpc("ledger.verify")
        assert v["ok"], (n.index, v)
        assert n.rpc("ledger.stats")["forks"] == 0, n.index
    maps = [certificates(n, wallets) for n in net.nodes]
    for i, m in enumerate(maps[1:], 1):
        assert m == maps[0], f"replica {i} holds other certificates than replica 0"
    everything = merged(maps)
    doubles = {k: v for k, v in everything.items() if len(v) > 1}
    assert not doubles, f"(sender, sequence) certified twice: {doubles}"
    seq_of = {tx: seq for (_, seq), txs in everything.items() for tx in txs}
    for c in clients:
        last_seq = -1           # the wallet's latest sequence certified by this client's sends
        ops = list(c.ops)
        for k, op in enumerate(ops):
            if op.outcome == "final":
                assert op.tx in seq_of, f"node {op.node}: final transfer {op.tx} lost"
                assert everything[(wallets[op.node], op.sequence)] == {op.tx}
                last_seq = op.sequence
            elif op.outcome == "in_flight" and op.tx in seq_of:
                last_seq = max(last_seq, seq_of[op.tx])     # completed later, as itself
            elif op.outcome == "in_flight":
                # not certified: it must still be in flight, as itself. A later final send
                # would have driven it first, and nothing else holds its sequence
                later = [o for o in ops[k + 1:] if o.outcome == "final"]
                assert not later, f"node {op.node}: order {op.tx} was dropped, yet {later[0].tx} was certified"
                other = everything.get((wallets[op.node], last_seq + 1))
                assert not other, f"node {op.node}: order {op.tx} in flight, but its sequence holds {other}"
