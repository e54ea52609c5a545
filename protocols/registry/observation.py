"""Reputation observations: signed statements "observer saw subject serve `service` well/badly".

Wire form::

    {"v": 1, "observer": <peer id>, "pubkey": <32 bytes>, "subject": <peer id>,
     "service": <str>, "ok": <bool>, "weight": <float in (0, 100]>, "evidence": <<= 64 bytes>,
     "ts": <unix s>, "sig": <64 bytes>}

signed by the observer's peer key over the map without `sig`. One gossip message carries one
observation in that form, or a batch of up to MAX_BATCH observations by the same observer
(`encode_observations`: {"v": 1, "batch": [<observation bytes>, ...]}, each still signed on
its own, so a batch is only a way to send them together: an FL aggregator reports every
participant of a round at once). Nodes older than batches refuse one as malformed.
`own_observation` signs this node's own report (`Outcome`) after checking it. `ObservationBook` is the
sans-IO store: it refuses self-observations, replays and duplicates (same observer and evidence
id), stale or future ones, and caps each observer with a token bucket (one token per
observation, alone or in a batch; this node keeps its own reports within the cap by making the
excess wait, merged: pending.py); accepted observations
are summed into per-service local trust (satisfied minus unsatisfied weight, EigenTrust's
s_ij) that `eigentrust.global_trust` turns into global scores.
"""
from __future__ import annotations

import dataclasses
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nacl.signing import SigningKey

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.wire import SIG_LEN, Fields, digest, pack, sign, unpack, verify
from fognode.protocols.registry.errors import Rejected, RejectReason
from fognode.protocols.registry.peerid import PUBKEY_LEN, peer_id_from_pubkey, peer_id_matches

if TYPE_CHECKING:   # numpy is imported by `local_trust`, its one user here
    import numpy as np

OBSERVATION_VERSION = 1
MAX_OBSERVATION_BYTES = 1024
MAX_SERVICE = 32
MAX_EVIDENCE = 64
MAX_WEIGHT = 100.0
ALL_SERVICES = "*"     # the score over every service together

# service -> (observer, subject) -> (satisfied weight, unsatisfied weight)
Sums = dict[str, dict[tuple[str, str], tuple[float, float]]]
MAX_BATCH = 32         # observations in one gossip message
MAX_BATCH_BYTES = MAX_BATCH * (MAX_OBSERVATION_BYTES + 8) + 64


@dataclass(frozen=True)
class Observation:
    observer: str
    pubkey: bytes
    subject: str
    service: str
    ok: bool
    weight: float
    evidence: bytes
    ts: int
    sig: bytes

    def body(self) -> dict[str, Any]:
        return {"v": OBSERVATION_VERSION, "observer": self.observer, "pubkey": self.pubkey,
                "subject": self.subject, "service": self.service, "ok": self.ok,
                "weight": self.weight, "evidence": self.evidence, "ts": self.ts}

    def encode(self) -> bytes:
        return pack({**self.body(), "sig": self.sig})

    def id(self) -> bytes:
        return digest(pack(self.body()))


def sign_observation(key: SigningKey, *, subject: str, service: str, ok: bool, weight: float,
                     evidence: bytes, ts: int) -> Observation:
    """An observation by `key`'s node; LocalProtocolError-free validation is the caller's."""
    pubkey = bytes(key.verify_key)
    o = Observation(peer_id_from_pubkey(pubkey), pubkey, subject, service, bool(ok),
                    float(weight), bytes(evidence), int(ts), b"")
    return dataclasses.replace(o, sig=sign(key, o.body()))


@dataclass(frozen=True)
class Outcome:
    """This node's report that `subject` served `service` well (`ok`) or badly
    (api.ReputationService.report_outcome says what each field means)."""

    subject: str
    service: str
    ok: bool
    weight: float = 1.0
    evidence: bytes = b""


def own_observation(key: SigningKey, me: str, out: Outcome, ts: int) -> Observation:
    """`out` signed by this node (`me`, `key`). Raises LocalProtocolError as `check_outcome`."""
    check_outcome(me, out)
    return sign_observation(key, subject=out.subject, service=out.service, ok=out.ok,
                            weight=out.weight, evidence=out.evidence, ts=ts)


def check_outcome(me: str, out: Outcome) -> None:
    """Raises LocalProtocolError for a report by `me` about itself, or with a bad service
    name, weight or evidence."""
    if out.subject == me:
        raise LocalProtocolError("report_outcome: a node may not rate itself")
    if not out.service or out.service == ALL_SERVICES or len(out.service) > MAX_SERVICE:
        raise LocalProtocolError(f"report_outcome: bad service name {out.service!r}")
    if not 0.0 < out.weight <= MAX_WEIGHT:
        raise LocalProtocolError(f"report_outcome: weight {out.weight} is not in (0, {MAX_WEIGHT}]")
    if len(out.evidence) > MAX_EVIDENCE:
        raise LocalProtocolError(f"report_outcome: evidence id over {MAX_EVIDENCE} bytes")


def evidence_key(observer: str, subject: str, service: str, evidence: bytes) -> bytes | None:
    """What makes an observation with an evidence id a duplicate: the same observer, subject,
    service and evidence id (None without evidence: then only the same signed body is)."""
    return digest(pack([observer, subject, service, evidence])) if evidence else None


def encode_observations(obs: list[Observation]) -> list[bytes]:
    """Gossip messages carrying `obs` (one observer's): one observation as itself, more as
    batches of up to MAX_BATCH."""
    if len(obs) == 1:
        return [obs[0].encode()]
    return [pack({"v": OBSERVATION_VERSION, "batch": [o.encode() for o in obs[i:i + MAX_BATCH]]})
            for i in range(0, len(obs), MAX_BATCH)]


def decode_observations(data: bytes, *, peer: str | None = None) -> list[Observation]:
    """The observations of one gossip message (one, or a batch: module docstring), each
    decoded and authenticated by `decode_observation`; raises `Rejected` for the message if
    any of them is refused, or for a malformed batch (OVERSIZE, MALFORMED)."""
    if len(data) > MAX_BATCH_BYTES:
        raise Rejected(RejectReason.OVERSIZE,
                       f"observation batch is {len(data)} bytes, over {MAX_BATCH_BYTES}", peer=peer)
    try:
        raw = unpack(data, max_size=MAX_BATCH_BYTES, what="observation batch")
    except RemoteProtocolError:
        raw = None
    if not (isinstance(raw, dict) and "batch" in raw):
        return [decode_observation(data, peer=peer)]    # one (or its own refusal)
    try:
        f = Fields(raw, "observation batch", versions={OBSERVATION_VERSION}, peer=peer)
        items = f.list("batch", max_len=MAX_BATCH)
        f.done()
    except RemoteProtocolError as e:
        raise Rejected(RejectReason.MALFORMED, str(e), peer=peer) from None
    if len(items) < 2 or not all(isinstance(x, bytes) for x in items):
        raise Rejected(RejectReason.MALFORMED,
                       "observation batch must hold 2 or more observations as bytes", peer=peer)
    return [decode_observation(x, peer=peer) for x in items]


def decode_observation(data: bytes, *, peer: str | None = None) -> Observation:
    """Decode and authenticate an observation; raises `Rejected` (OVERSIZE, MALFORMED,
    UNSIGNED, FOREIGN_KEY, BAD_SIGNATURE)."""
    if len(data) > MAX_OBSERVATION_BYTES:
        raise Rejected(RejectReason.OVERSIZE,
                       f"observation is {len(data)} bytes, over {MAX_OBSERVATION_BYTES}", peer=peer)
    try:
        raw = unpack(data, max_size=MAX_OBSERVATION_BYTES, what="observation")
        f = Fields(raw, "observation", versions={OBSERVATION_VERSION}, peer=peer)
        if not f.has("sig"):
            raise Rejected(RejectReason.UNSIGNED, "observation carries no signature", peer=peer)
        o = Observation(
            observer=f.str("observer", max_len=128),
            pubkey=f.bytes("pubkey", size=PUBKEY_LEN),
            subject=f.str("subject", max_len=128),
            service=f.str("service", max_len=MAX_SERVICE),
            ok=f.bool("ok"),
            weight=f.float("weight", lo=0.0, hi=MAX_WEIGHT),
            evidence=f.bytes("evidence", max_len=MAX_EVIDENCE),
            ts=f.int("ts", lo=0, hi=2**63 - 1),
            sig=f.bytes("sig", max_len=SIG_LEN),
        )
        f.done()
    except Rejected:
        raise
    except RemoteProtocolError as e:
        raise Rejected(RejectReason.MALFORMED, str(e), peer=peer) from None
    if not o.sig:
        raise Rejected(RejectReason.UNSIGNED, "observation has an empty signature", peer=peer)
    if o.weight <= 0.0 or not o.service or o.service == ALL_SERVICES:
        raise Rejected(RejectReason.MALFORMED,
                       "observation needs a positive weight and a service name other than '*'", peer=peer)
    if not peer_id_matches(o.observer, o.pubkey):
        raise Rejected(RejectReason.FOREIGN_KEY,
                       f"observation claims observer {o.observer} but carries another key", peer=peer)
    signed = {k: v for k, v in raw.items() if k != "sig"}
    if not verify(o.pubkey, signed, o.sig) or pack(o.body()) != pack(signed):
        raise Rejected(RejectReason.BAD_SIGNATURE,
                       f"observation by {o.observer} is not signed by its key (or not canonical)",
                       peer=peer)
    return o


class TokenBucket:
    """`rate` tokens per second up to `burst`; time is an argument."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.at = rate, burst, burst, now

    def level(self, now: float) -> float:
        """The tokens there are at `now` (refilled up to then)."""
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        return self.tokens

    def take(self, now: float) -> bool:
        if self.level(now) >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True)
class LocalTrust:
    """Summed local trust of one service as a sparse matrix (COO): s[rows[k], cols[k]] = vals[k]."""

    peers: tuple[str, ...]
    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray


class ObservationBook:
    """Accepted observations, summed per (service, observer, subject). Sans-IO.

    `add(o, now)` returns nothing or raises `Rejected` (SELF_OBSERVATION, RATE_LIMITED,
    DUPLICATE, EXPIRED, FUTURE, CAPACITY); every refusal is also counted in `rejected`.
    """

    def __init__(self, *, rate_per_minute: float = 60.0, burst: int = 120,
                 max_age: float = 24 * 3600.0, max_clock_skew: float = 300.0,
                 max_pairs: int = 1_000_000, max_observers: int = 100_000,
                 remember_ids: int = 200_000, max_recent: int = 50_000) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self.max_age = max_age
        self.max_clock_skew = max_clock_skew
        self.max_pairs = max_pairs
        self.max_observers = max_observers
        self.remember_ids = remember_ids
        self.rejected: Counter[RejectReason] = Counter()
        self.accepted = 0
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        # cells are immutable tuples, replaced on every add: `frozen_sums` is a shallow copy
        self._sums: Sums = {}
        self._pairs = 0
        self.changed = False       # set on every accepted observation; the role clears it
        # the latest accepted observations (signed bytes) by local counter, for sync
        self.max_recent = max_recent
        self._recent: OrderedDict[int, bytes] = OrderedDict()
        self._counter = 0

    def _refuse(self, reason: RejectReason, msg: str, peer: str) -> Rejected:
        self.rejected[reason] += 1
        return Rejected(reason, msg, peer=peer)

    def add(self, o: Observation, now: float, *, quiet_duplicate: bool = False) -> None:
        """`quiet_duplicate`: a duplicate is refused without being counted (sync relays
        observations we may already hold)."""
        if o.observer == o.subject:
            raise self._refuse(RejectReason.SELF_OBSERVATION,
                               f"{o.observer} reported on itself ({o.service})", o.observer)
        if o.ts < now - self.max_age:
            raise self._refuse(RejectReason.EXPIRED, f"observation from {o.ts} is too old", o.observer)
        if o.ts > now + self.max_clock_skew:
            raise self._refuse(RejectReason.FUTURE, f"observation dated {o.ts} is in the future",
                               o.observer)
        dedup = evidence_key(o.observer, o.subject, o.service, o.evidence) or o.id()
        if dedup in self._seen:
            if quiet_duplicate:
                raise Rejected(RejectReason.DUPLICATE, "already counted", peer=o.observer)
            raise self._refuse(RejectReason.DUPLICATE,
                               "observation (or its evidence id) was already counted", o.observer)
        bucket = self._buckets.get(o.observer)
        if bucket is None:
            if len(self._buckets) >= self.max_observers:
                self._buckets.popitem(last=False)
            bucket = self._buckets[o.observer] = TokenBucket(self.rate, self.burst, now)
        self._buckets.move_to_end(o.observer)
        if not bucket.take(now):
            raise self._refuse(RejectReason.RATE_LIMITED,
                               f"observer {o.observer} is over {self.rate * 60:.0f} observations/min",
                               o.observer)
        per = self._sums.setdefault(o.service, {})
        pair = (o.observer, o.subject)
        cell = per.get(pair)
        if cell is None:
            if self._pairs >= self.max_pairs:
                raise self._refuse(RejectReason.CAPACITY,
                                   f"observation table is full ({self.max_pairs} pairs)", o.observer)
            cell = (0.0, 0.0)
            self._pairs += 1
        good, bad = cell
        per[pair] = (good + o.weight, bad) if o.ok else (good, bad + o.weight)
        self.remember([dedup])
        self.accepted += 1
        self.changed = True
        self._counter += 1
        self._recent[self._counter] = o.encode()
        while len(self._recent) > self.max_recent:
            self._recent.popitem(last=False)

    def budget(self, observer: str, now: float) -> float:
        """The observations `observer` may have accepted now (its bucket's tokens)."""
        bucket = self._buckets.get(observer)
        return self.burst if bucket is None else bucket.level(now)

    def seen(self, key: bytes) -> bool:
        """Whether an observation with this dedup key (`evidence_key`) was counted."""
        return key in self._seen

    def remember(self, keys: list[bytes]) -> None:
        """Count these dedup keys as seen (the most recent `remember_ids` are kept)."""
        for k in keys:
            self._seen[k] = None
            self._seen.move_to_end(k)
        while len(self._seen) > self.remember_ids:
            self._seen.popitem(last=False)

    def add_all(self, obs: list[Observation], now: float) -> list[tuple[int, Rejected]]:
        """`add` each of `obs`; the refused ones as (index in `obs`, why)."""
        refused = []
        for i, o in enumerate(obs):
            try:
                self.add(o, now)
            except Rejected as e:
                refused.append((i, e))
        return refused

    def changed_since(self, after: int, limit: int) -> tuple[list[bytes], int, bool]:
        """Signed observations accepted after local counter `after` (only the latest
        `max_recent` are kept): (observations, next cursor, more remain)."""
        page: list[bytes] = []
        nxt = min(after, self._counter)
        more = False
        for c, raw in self._recent.items():
            if c <= after:
                continue
            if len(page) == limit:
                more = True
                break
            page.append(raw)
            nxt = c
        return page, nxt, more

    def services(self) -> list[str]:
        return sorted(self._sums)

    def pair_count(self) -> int:
        return self._pairs

    def frozen_sums(self) -> Sums:
        """The summed local trust as it is now, unchanged by later observations: one dict copy
        per service (its cells are immutable), cheap enough for the event loop, so that
        `local_trust` can build the matrices from it in a worker thread."""
        return {s: dict(per) for s, per in self._sums.items()}

    def local_trust(self, service: str) -> LocalTrust:
        """s_ij for `service` (ALL_SERVICES: summed over all); see `local_trust`."""
        return local_trust(self._sums, service)


def local_trust(sums: Sums, service: str) -> LocalTrust:
    """s_ij = satisfied - unsatisfied weight for `service` (ALL_SERVICES: summed over all).
    Pure (reads `sums` only): may run in a worker thread on `ObservationBook.frozen_sums()`.
    The first call imports numpy (not imported with this module: a daemon's start does not
    pay for it)."""
    import numpy as np

    cells: dict[tuple[str, str], float]
    if service == ALL_SERVICES:
        cells = {}
        for per in sums.values():
            for pair, (good, bad) in per.items():
                cells[pair] = cells.get(pair, 0.0) + good - bad
    else:
        cells = {pair: good - bad for pair, (good, bad) in sums.get(service, {}).items()}
    index: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for i, j in cells:
        rows.append(index.setdefault(i, len(index)))
        cols.append(index.setdefault(j, len(index)))
    return LocalTrust(tuple(index), np.array(rows, dtype=np.int64),
                      np.array(cols, dtype=np.int64),
                      np.fromiter(cells.values(), dtype=np.float64, count=len(cells)))
