"""A deterministic in-memory simulation of the ledger's sans-IO cores (issue 11 item 7).

N nodes, each a validator and a replica sharing one state (as service.py runs them), and
clients driving orders with the real `VoteCollector` and its retry policy (`decide`), talk
through a simulated network that drops, duplicates and reorders messages, all drawn from one
seeded `random.Random`: a seed is a reproducible run, and a run takes milliseconds.

What travels, as in the daemon:
- order requests {order, prev} to validators (a validator applies `prev` first, like
  service.py `_order_reply`), votes and rejections back to the client;
- certificates gossiped by the client that formed them to every node;
- anti-entropy: a node pulls another node's apply log after its cursor (sync.py), also over
  the lossy network, so a dropped gossip message is healed by a later pull.

`run_until_quiet()` delivers until nothing is in flight, with `heal()` a lossless final sync
round; the tests then check what must hold whatever the network did (one root everywhere,
never two certificates for one (sender, sequence), every certified order applied).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from nacl.signing import SigningKey

from fognode.ledger.actions import Commit, PersistLock, SendRejection, SendVote
from fognode.ledger.client import Decision, VoteCollector
from fognode.ledger.genesis import Genesis
from fognode.ledger.messages import Certificate, Order, Rejection, SignedOrder, TransferOrder, Vote
from fognode.ledger.receipts import default_registry
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.state import LedgerState
from fognode.ledger.validator import LockTable, Validator


@dataclass(frozen=True)
class Faults:
    drop: float = 0.0        # probability a message is lost
    duplicate: float = 0.0   # probability a message is delivered twice
    reorder: bool = False    # deliver a random message in flight instead of the oldest


@dataclass(frozen=True)
class Msg:
    src: str
    dst: str
    kind: str                # "order", "reply", "cert", "pull", "log"
    body: Any


class SimNode:
    """One validator + replica over one state, with its apply log (what sync serves).
    `faulty`: a Byzantine validator that votes for every order it is asked about (it checks
    nothing and keeps no lock: it equivocates whenever asked to); its replica stays honest."""

    def __init__(self, name: str, key: SigningKey, genesis: Genesis, *, faulty: bool = False) -> None:
        self.name = name
        self.key = key
        self.faulty = faulty
        self.state = LedgerState(genesis)
        self.locks = LockTable()
        self.validator = Validator(genesis, key, self.state, self.locks, default_registry())
        self.history = MemoryHistory()
        self.replica = Replica(self.state, self.history)
        self.log: list[Certificate] = []
        self.cursors: dict[str, int] = {}

    def apply(self, peer: str, certs: list[Certificate]) -> None:
        """As service.py `_apply_batch`: begin, run the replica core, 'write', end."""
        self.state.begin()
        for cert in certs:
            for a in self.replica.receive(peer, cert):
                if isinstance(a, Commit):
                    o = a.delta.cert.order.order
                    self.history.txs[(o.sender, o.sequence)] = a.delta.cert.tx_id
                    self.log.append(a.delta.cert)
        self.state.end()
        self.replica.committed()

    def answer(self, peer: str, so: SignedOrder, prev: Certificate | None, now: float) -> Vote | Rejection:
        if prev is not None:
            self.apply(peer, [prev])
        if self.faulty:
            return Vote.sign(self.key, so.tx_id)
        for a in self.validator.receive(peer, so, now):
            if isinstance(a, PersistLock):
                continue             # in memory: the lock is in the table already
            if isinstance(a, SendVote):
                return a.vote
            if isinstance(a, SendRejection):
                return a.rejection
        raise AssertionError("the validator core answered nothing")


@dataclass
class Submission:
    """One order a client drives to a certificate (or gives up on)."""

    client: str
    so: SignedOrder
    prev: Certificate | None
    collector: VoteCollector
    deadline: float
    asking: set[bytes] = field(default_factory=set)
    outcome: Decision | None = None


class Sim:
    def __init__(self, genesis: Genesis, validator_keys: list[SigningKey], seed: int, faults: Faults,
                 *, now: float, retry_interval: float = 1.0, sync_every: int = 25, faulty: frozenset[str] = frozenset(),
                 skew: dict[str, float] | None = None) -> None:
        self.genesis = genesis
        self.rng = random.Random(seed)
        self.faults = faults
        self.now = now
        self.retry_interval = retry_interval
        self.sync_every = sync_every
        self.nodes = {f"v{i}": SimNode(f"v{i}", k, genesis, faulty=f"v{i}" in faulty)
                      for i, k in enumerate(validator_keys)}
        self.skew = dict(skew or {})      # node -> offset of its clock from the simulation's time
        self.by_key = {bytes(n.key.verify_key): n.name for n in self.nodes.values()}
        self.in_flight: list[Msg] = []
        self.submissions: list[Submission] = []
        self.certified: list[Certificate] = []
        self.last_cert: dict[bytes, Certificate] = {}     # sender -> its latest certificate (client side)
        self.steps = 0
        self.delivered = 0
        self.dropped = 0

    # -- the network -------------------------------------------------------------------------------

    def send(self, msg: Msg) -> None:
        if self.rng.random() < self.faults.drop:
            self.dropped += 1
            return
        self.in_flight.append(msg)
        if self.rng.random() < self.faults.duplicate:
            self.in_flight.append(msg)

    def step(self) -> bool:
        """Deliver one message (and every `sync_every` steps start a pull); False when idle."""
        self.steps += 1
        if self.steps % self.sync_every == 0:
            self.anti_entropy()
        if not self.in_flight:
            return self._retry_round()
        i = self.rng.randrange(len(self.in_flight)) if self.faults.reorder else 0
        self.deliver(self.in_flight.pop(i))
        return True

    def deliver(self, m: Msg) -> None:
        self.delivered += 1
        if m.kind == "order":
            so, prev = m.body
            reply = self.nodes[m.dst].answer(m.src, so, prev, self.now + self.skew.get(m.dst, 0.0))
            self.send(Msg(m.dst, m.src, "reply", (so.tx_id, bytes(self.nodes[m.dst].key.verify_key), reply)))
        elif m.kind == "reply":
            self._take_reply(*m.body)
        elif m.kind == "cert":
            self.nodes[m.dst].apply(m.src, [m.body])
        elif m.kind == "pull":
            after = m.body
            self.send(Msg(m.dst, m.src, "log", (after, self.nodes[m.dst].log[after:after + 64])))
        elif m.kind == "log":
            after, certs = m.body
            node = self.nodes[m.dst]
            if node.cursors.get(m.src, 0) == after:       # a stale or duplicated answer is ignored
                node.apply(m.src, certs)
                node.cursors[m.src] = after + len(certs)

    def anti_entropy(self) -> None:
        for node in self.nodes.values():
            peer = self.rng.choice([n for n in self.nodes if n != node.name])
            self.send(Msg(node.name, peer, "pull", node.cursors.get(peer, 0)))

    def heal(self) -> None:
        """Lossless full syncs between every pair (the network recovered)."""
        for node in self.nodes.values():
            for peer in self.nodes.values():
                if peer is not node:
                    node.apply(peer.name, peer.log)

    def run_until_quiet(self, max_steps: int = 100_000) -> None:
        while self.step():
            if self.steps > max_steps:
                raise AssertionError(f"no quiet after {max_steps} steps")
        self.heal()

    # -- clients -------------------------------------------------------------------------------------

    def submit(self, client: str, key: SigningKey, make: Any, *, timeout: float = 30.0,
               sequence: int | None = None) -> Submission:
        """Sign `make(sequence)` for `key` and start asking the committee. The sequence is the
        one after the client's last certificate (its own replica's view, as submit.py), which
        travels along as `prev`; `sequence` overrides it (a faulty client)."""
        sender = bytes(key.verify_key)
        last = self.last_cert.get(sender)
        seq = sequence if sequence is not None else (last.order.order.sequence + 1 if last else 0)
        so = SignedOrder.sign(key, make(seq))
        prev = last if last is not None and last.order.order.sequence == seq - 1 else None
        committee = self.nodes["v0"].state.committee_for(so.order.epoch)
        sub = Submission(client, so, prev, VoteCollector(so, committee), self.now + timeout)
        self.submissions.append(sub)
        self._ask(sub)
        return sub

    def _ask(self, sub: Submission) -> None:
        for v in sub.collector.unasked(b"", sub.asking):
            sub.asking.add(v)
            self.send(Msg(sub.client, self.by_key[v], "order", (sub.so, sub.prev)))

    def _take_reply(self, tx_id: bytes, validator: bytes, reply: Vote | Rejection) -> None:
        for sub in self.submissions:
            if sub.so.tx_id != tx_id or sub.outcome is not None:
                continue
            sub.asking.discard(validator)
            if isinstance(reply, Rejection):
                sub.collector.add_rejection(validator, reply)
            elif sub.collector.add_vote(reply) is not None:
                sub.outcome = Decision.CERTIFIED
                cert = sub.collector.certificate
                assert cert is not None
                self.certified.append(cert)
                self.last_cert[cert.order.order.sender] = cert
                for name in self.nodes:
                    self.send(Msg(sub.client, name, "cert", cert))

    def _retry_round(self) -> bool:
        """The network is idle: time moves on by `retry_interval`; every open submission
        decides (client.py) and asks again. False when no submission is open."""
        open_subs = [s for s in self.submissions if s.outcome is None]
        if not open_subs:
            return False
        self.now += self.retry_interval
        for sub in open_subs:
            sub.asking.clear()                  # the replies of the last round are lost or in
            decision = sub.collector.decide(self.now, sub.deadline)
            if decision is Decision.RETRY:
                self._ask(sub)
            else:
                sub.outcome = decision
        return True


def transfer_to(genesis: Genesis, sender: SigningKey, recipient: bytes, amount: int, epoch: int = 0) -> Any:
    """`make(sequence)` for a transfer."""
    def make(seq: int) -> Order:
        return TransferOrder(chain=genesis.chain_id, epoch=epoch, sender=bytes(sender.verify_key), sequence=seq,
                             fee=genesis.fee, recipient=recipient, amount=amount, memo="")
    return make
