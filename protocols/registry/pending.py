"""This node's own reports: sent within its observation budget, the rest merged while they wait (sans-IO).

Every node refuses a reporter's observations over `observation_rate_per_minute` (burst
`observation_burst`), counted one per observation whether it came alone or in a batch
(`ObservationBook`). A busy reporter (an FL aggregator reports every participant of every
round: 9 a round on 10 nodes, hundreds a minute with rounds of 0.3 s) would run over it and
lose reports. So a node never sends more than the rule allows, and loses nothing either: a
report its budget cannot send now waits here, and a later report on the same subject, service
and outcome (`ok`) is merged into the one that waits (weights summed). Each waiting entry
leaves, oldest first, as soon as the budget allows, as one observation:
- an entry that holds one report goes as that report (its own evidence id), as it always did;
- a merged entry goes with weight min(sum, MAX_WEIGHT) (what is over stays, and goes next)
  and an evidence id of its own: BLAKE2b-256 over a random nonce of this run, a serial number
  and the evidence ids of its reports, so no two observations it sends are duplicates (of each
  other or of an earlier run's).
EigenTrust sums the weights of an observer's observations per (subject, service) into s_ij,
so merging keeps every report's weight, only later. The dedup keys of the reports merged into
one observation are remembered as counted (`ObservationBook.remember`) when it is accepted,
so reporting the same evidence again is refused as a duplicate, as before.

Waiting is bounded: at most `max_waiting` reports (merged or not); past that a report is
refused as over the rate limit, as every report over it was before.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

from nacl.signing import SigningKey

from fognode.node.wire import digest, pack
from fognode.protocols.registry.errors import Rejected
from fognode.protocols.registry.observation import (MAX_WEIGHT, Observation, ObservationBook,
                                                    Outcome, check_outcome, evidence_key,
                                                    own_observation)

Key = tuple[str, str, bool]       # subject, service, ok


@dataclass
class Waiting:
    """One waiting entry: its reports' summed weight, evidence ids and dedup keys."""

    weight: float
    evidence: list[bytes]
    keys: list[bytes] = field(default_factory=list)
    sent: int = 0           # observations this entry has sent already (its weight over MAX_WEIGHT)


class PendingReports:
    """Reports waiting for the budget, by (subject, service, ok), oldest first."""

    def __init__(self, max_waiting: int = 10_000, nonce: bytes | None = None) -> None:
        self.max_waiting = max_waiting
        self._nonce = os.urandom(16) if nonce is None else nonce
        self._serial = 0
        self._entries: OrderedDict[Key, Waiting] = OrderedDict()
        self._keys: set[bytes] = set()
        self.reports = 0        # reports waiting (merged ones counted one by one)

    def __len__(self) -> int:
        """Waiting entries: the observations it takes to send them (weights up to MAX_WEIGHT)."""
        return len(self._entries)

    def waiting(self, key: bytes) -> bool:
        """Whether a report with this dedup key waits."""
        return key in self._keys

    def add(self, out: Outcome, key: bytes | None) -> bool:
        """Make `out` (with its dedup key, None without evidence) wait; False when full."""
        if self.reports >= self.max_waiting:
            return False
        k = (out.subject, out.service, out.ok)
        entry = self._entries.get(k)
        if entry is None:
            entry = self._entries[k] = Waiting(0.0, [])
        entry.weight += out.weight
        entry.evidence.append(out.evidence)
        if key is not None:
            entry.keys.append(key)
            self._keys.add(key)
        self.reports += 1
        return True

    def take(self, n: int) -> list[tuple[Outcome, list[bytes]]]:
        """Up to `n` observations' worth of the oldest entries: each as an Outcome to sign and
        the dedup keys of the reports it carries. An entry over MAX_WEIGHT stays, with the rest
        of its weight, behind the others."""
        out: list[tuple[Outcome, list[bytes]]] = []
        while self._entries and len(out) < n:
            k, e = next(iter(self._entries.items()))
            single = len(e.evidence) == 1 and e.sent == 0
            if single:
                evidence = e.evidence[0]
            else:
                self._serial += 1
                evidence = digest(pack([self._nonce, self._serial, e.evidence]))
            weight = min(e.weight, MAX_WEIGHT)
            out.append((Outcome(k[0], k[1], k[2], weight, evidence), e.keys))
            e.weight -= weight
            e.sent += 1
            self._keys.difference_update(e.keys)
            e.keys = []
            if e.weight > 1e-9:
                self._entries.move_to_end(k)
            else:
                del self._entries[k]
                self.reports -= len(e.evidence)
        return out


class OwnReports:
    """This node's reports (`report`) and their waiting ones (`send`, at each tick): signed
    with `key` as `me` and recorded in `book` (our own observations count against our budget
    there, as any observer's do). It spends the budget only down to `reserve` tokens (a tenth
    of the burst), so that gossip delays that bunch our observations up do not push them over
    another node's bucket for us."""

    def __init__(self, key: SigningKey, me: str, book: ObservationBook, *, reserve: int,
                 waiting: PendingReports | None = None) -> None:
        self.key = key
        self.me = me
        self.book = book
        self.reserve = reserve
        self.waiting = waiting or PendingReports()

    def report(self, outcomes: list[Outcome], now: float) -> tuple[list[Observation], list[str]]:
        """Check every report (LocalProtocolError for one about ourselves, or with a bad
        service, weight or evidence: none is recorded), make each wait, then `send`. Returns
        the observations sent now and why each refused report was (its evidence id already
        counted or waiting; too many reports waiting)."""
        for out in outcomes:
            check_outcome(self.me, out)
        refused = []
        for out in outcomes:
            key = evidence_key(self.me, out.subject, out.service, out.evidence)
            if key is not None and (self.book.seen(key) or self.waiting.waiting(key)):
                refused.append(f"about {out.subject}: its evidence id was already counted")
            elif not self.waiting.add(out, key):
                refused.append(f"about {out.subject}: over our observation rate limit, with "
                               f"{self.waiting.reports} reports waiting already")
        sent, errors = self.send(now)
        return sent, refused + [str(e) for e in errors]

    def send(self, now: float) -> tuple[list[Observation], list[Rejected]]:
        """Sign and record as many waiting entries as the budget allows now (oldest first);
        the observations to gossip, and the refusals of our own book (a full table)."""
        n = int(self.book.budget(self.me, now)) - self.reserve
        sent, errors = [], []
        for out, keys in self.waiting.take(max(0, n)):
            o = own_observation(self.key, self.me, out, int(now))
            try:
                self.book.add(o, now)
            except Rejected as e:
                errors.append(e)
                continue
            self.book.remember(keys)
            sent.append(o)
        return sent, errors
