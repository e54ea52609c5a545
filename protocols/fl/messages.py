"""FL wire messages: frozen dataclasses, `to_wire()` maps and one validating decoder each.

Gossip (topic `fognode/fl/sessions/1`) carries small control messages in an envelope
`{"v": 1, "type": <kind>, "body": {...}}`: session announcements (signed by the starter),
opt-ins, round plans, round results (with the aggregator's signed receipt), round failures and
session ends. Streams carry tensors: `UpdateHeader` then raw chunks on `/fognode/fl/update/1.0.0`,
`ModelRequest` / `ModelResponse` then raw chunks on `/fognode/fl/model/1.0.0`.

Every decoder raises RemoteProtocolError (through `Fields`) naming the message and field.

Reward evidence: opt-ins carry the wallet a node's rewards go to, plans carry those wallets
and the coordinator's signed `RoundHeader` (round_header.py) over the plan's election and
participants; `plan_problem` is the participant's check of a plan against its header.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.peerid import peer_id_matches, pubkey_from_peer_id
from fognode.node.wire import DIGEST_LEN, PUBKEY_LEN, SIG_LEN, Fields, digest, pack, sign, verify
from fognode.protocols.fl.session.election import aggregator_order
from fognode.protocols.fl.rewards.merkle import leaf_hash, merkle_root
from fognode.protocols.fl.rewards.receipts import RoundReceipt, decode_round_receipt
from fognode.protocols.fl.rewards.round_header import RoundHeader
from fognode.protocols.fl.transfer.tensors import WIRE_DTYPES, TensorHeader, decode_header

VERSION = 1
MAX_NAME = 64
MAX_PARAMS = 16
MAX_PARTICIPANTS = 256
MAX_CAPS = 32
MAX_PEER_ID = 128
MAX_REASON = 200

MAX_COORDINATORS = 16     # fallback coordinators an announcement may name

GOSSIP_TYPES = ("announce", "optin", "plan", "result", "failed", "ended")


# --- shared pieces -------------------------------------------------------------------------

def _peer(f: Fields, key: str) -> str:
    v = f.str(key, max_len=MAX_PEER_ID)
    if not v:
        f._fail(f"field {key!r} must be a peer id")
    return v


def _hash(f: Fields, key: str) -> bytes:
    return f.bytes(key, size=DIGEST_LEN)


def _number_map(f: Fields, key: str, *, allow_str: bool = False) -> dict[str, Any]:
    raw = f.map(key, max_len=MAX_PARAMS)
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not 0 < len(k) <= MAX_NAME:
            f._fail(f"field {key!r}: bad parameter name {k!r}")
        if isinstance(v, bool) or (allow_str and isinstance(v, str) and len(v) <= MAX_NAME):
            out[k] = v
        elif isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = v
        else:
            f._fail(f"field {key!r}: parameter {k!r} must be a finite number")
    return out


@dataclass(frozen=True)
class SelectionCriteria:
    """Who may take part: empty region / capabilities and zero minimums mean "any"."""

    region: str = ""
    capabilities: tuple[str, ...] = ()
    min_reputation: float = 0.0
    charging_only: bool = False
    min_cores: int = 0
    min_memory_mb: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"region": self.region, "caps": list(self.capabilities),
                "min_rep": self.min_reputation, "charging": self.charging_only,
                "cores": self.min_cores, "mem": self.min_memory_mb}

    @classmethod
    def decode(cls, f: Fields) -> "SelectionCriteria":
        caps = f.list("caps", max_len=MAX_CAPS)
        if not all(isinstance(c, str) and 0 < len(c) <= MAX_NAME for c in caps):
            f._fail("field 'caps' must be a list of capability names")
        c = cls(region=f.str("region", max_len=MAX_NAME), capabilities=tuple(caps),
                min_reputation=f.float("min_rep", lo=0.0, hi=1.0),
                charging_only=f.bool("charging"), min_cores=f.int("cores", lo=0, hi=4096),
                min_memory_mb=f.int("mem", lo=0, hi=2**32))
        f.done()
        return c


@dataclass(frozen=True)
class PrivacyOptions:
    """Central DP (per-update clipping to `dp_clip`, Gaussian noise of std `dp_noise * dp_clip`
    on the aggregate, accounted at `dp_delta`; off when dp_clip == 0) and secure aggregation."""

    dp_clip: float = 0.0
    dp_noise: float = 0.0
    dp_delta: float = 1e-5
    secagg: bool = False

    @property
    def dp(self) -> bool:
        return self.dp_clip > 0

    def to_wire(self) -> dict[str, Any]:
        return {"clip": self.dp_clip, "noise": self.dp_noise, "delta": self.dp_delta,
                "secagg": self.secagg}

    @classmethod
    def decode(cls, f: Fields) -> "PrivacyOptions":
        p = cls(dp_clip=f.float("clip", lo=0.0, hi=1e6), dp_noise=f.float("noise", lo=0.0, hi=1e3),
                dp_delta=f.float("delta", lo=0.0, hi=0.5), secagg=f.bool("secagg"))
        f.done()
        return p


@dataclass(frozen=True)
class SessionSpec:
    """What the starter asks for (the `fl.start` parameters)."""

    task: str
    rounds: int
    min_participants: int
    participants: int                     # selected per round
    strategy: str = "fedavg"
    strategy_params: dict[str, Any] = field(default_factory=dict, hash=False)
    task_params: dict[str, Any] = field(default_factory=dict, hash=False)
    deadline: float = 30.0                # seconds per round attempt
    local_epochs: int = 1
    lr: float = 0.01
    batch_size: int = 10
    wire_dtype: str = "float32"
    fallbacks: int = 2                    # fallback aggregators after the elected one
    max_retries: int = 3                  # retries of a failed round before the session fails
    optin_seconds: float = 5.0            # how long the starter collects opt-ins before round 1
    reward_budget: int = 0                # micro-units for the whole session (0 = no rewards)
    privacy: PrivacyOptions = PrivacyOptions()
    criteria: SelectionCriteria = SelectionCriteria()
    hierarchical: bool = False            # regional aggregators, then a global one

    def to_wire(self) -> dict[str, Any]:
        # "hier" is on the wire only when set, so flat sessions encode as before
        return {**({"hier": True} if self.hierarchical else {}), "task": self.task, "rounds": self.rounds, "min": self.min_participants,
                "per_round": self.participants, "strategy": self.strategy,
                "sparams": self.strategy_params, "tparams": self.task_params,
                "deadline": self.deadline, "epochs": self.local_epochs, "lr": self.lr,
                "batch": self.batch_size, "dtype": self.wire_dtype, "fallbacks": self.fallbacks,
                "retries": self.max_retries, "optin": self.optin_seconds,
                "budget": self.reward_budget, "privacy": self.privacy.to_wire(),
                "criteria": self.criteria.to_wire()}

    @classmethod
    def decode(cls, f: Fields) -> "SessionSpec":
        spec = cls(
            task=f.str("task", max_len=MAX_NAME), rounds=f.int("rounds", lo=1, hi=100_000),
            min_participants=f.int("min", lo=1, hi=MAX_PARTICIPANTS),
            participants=f.int("per_round", lo=1, hi=MAX_PARTICIPANTS),
            strategy=f.str("strategy", max_len=MAX_NAME),
            strategy_params=_number_map(f, "sparams"), task_params=_number_map(f, "tparams"),
            deadline=f.float("deadline", lo=0.1, hi=86_400.0),
            local_epochs=f.int("epochs", lo=0, hi=10_000), lr=f.float("lr", lo=1e-9, hi=100.0),
            batch_size=f.int("batch", lo=1, hi=1 << 20), wire_dtype=f.str("dtype", max_len=16),
            fallbacks=f.int("fallbacks", lo=0, hi=16), max_retries=f.int("retries", lo=0, hi=100),
            optin_seconds=f.float("optin", lo=0.0, hi=3600.0),
            reward_budget=f.int("budget", lo=0, hi=2**63 - 1),
            privacy=PrivacyOptions.decode(f.sub("privacy")),
            criteria=SelectionCriteria.decode(f.sub("criteria")),
            hierarchical=f.bool("hier", optional=True, default=False),
        )
        f.done()
        spec.check()
        return spec

    def check(self) -> None:
        """Cross-field rules; RemoteProtocolError (a peer's announcement) naming the rule."""
        if self.wire_dtype not in WIRE_DTYPES:
            raise RemoteProtocolError(f"fl.SessionSpec: dtype {self.wire_dtype!r} is not one of {sorted(WIRE_DTYPES)}")
        if self.min_participants > self.participants:
            raise RemoteProtocolError(f"fl.SessionSpec: min participants {self.min_participants} "
                                      f"exceeds participants per round {self.participants}")


# --- gossip messages -----------------------------------------------------------------------

@dataclass(frozen=True)
class SessionAnnouncement:
    """A session, signed by its starter. Its id is BLAKE2b-256 of the canonical encoding of
    the unsigned body.

    `fallback_coordinators` (wire "coords", absent when empty) are the peers that take the
    session over, in this order, when the acting coordinator falls silent
    (session/failover.py); the starter is rank 0, `coordinators_of` gives the whole list.

    `funder` (wire "fund", absent when empty) is the ledger wallet that funded the session's
    reward pool (rewards/funding.py): a session with a reward budget names it, and its
    "fl_update" receipts are paid only from the pool (funder, session id)."""

    spec: SessionSpec
    starter: str
    starter_key: bytes
    created: float
    nonce: bytes
    initial_model_hash: bytes
    layout_hash: bytes
    sig: bytes = b""
    fallback_coordinators: tuple[str, ...] = ()
    funder: bytes = b""

    def body(self) -> dict[str, Any]:
        # "coords" is on the wire only when set, so announcements without fallbacks (and
        # their session ids) encode as before
        return {"v": VERSION, "spec": self.spec.to_wire(), "starter": self.starter,
                "key": self.starter_key, "created": self.created, "nonce": self.nonce,
                "model0": self.initial_model_hash, "layout": self.layout_hash,
                **({"coords": list(self.fallback_coordinators)} if self.fallback_coordinators else {}),
                **({"fund": self.funder} if self.funder else {})}

    @property
    def session_id(self) -> bytes:
        return digest(pack(self.body()))

    def signed(self, key: SigningKey) -> "SessionAnnouncement":
        return dataclasses.replace(self, sig=sign(key, self.body()))

    def to_wire(self) -> dict[str, Any]:
        return {**self.body(), "sig": self.sig}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "SessionAnnouncement":
        f = Fields(raw, "fl.SessionAnnouncement", versions={VERSION}, peer=peer)
        a = cls(spec=SessionSpec.decode(f.sub("spec", "fl.SessionSpec")), starter=_peer(f, "starter"),
                starter_key=f.bytes("key", size=PUBKEY_LEN), created=f.float("created", lo=0.0),
                nonce=f.bytes("nonce", size=16), initial_model_hash=_hash(f, "model0"),
                layout_hash=_hash(f, "layout"), sig=f.bytes("sig", size=SIG_LEN))
        coords = f.list("coords", max_len=MAX_COORDINATORS, optional=True)
        funder = f.bytes("fund", size=PUBKEY_LEN, optional=True, default=b"")
        if not all(isinstance(c, str) and 0 < len(c) <= MAX_PEER_ID for c in coords) \
                or len(set(coords)) != len(coords) or a.starter in coords:
            f._fail("field 'coords' must list distinct peer ids other than the starter")
        f.done()
        a = dataclasses.replace(a, fallback_coordinators=tuple(coords), funder=funder)
        if not peer_id_matches(a.starter, a.starter_key):
            raise RemoteProtocolError("fl.SessionAnnouncement: key does not match the starter's peer id", peer=peer)
        if not verify(a.starter_key, a.body(), a.sig):
            raise RemoteProtocolError("fl.SessionAnnouncement: bad signature", peer=peer)
        return a


def coordinators_of(announcement: SessionAnnouncement) -> tuple[str, ...]:
    """The coordinators of a session in rank order: its starter (rank 0), then the fallback
    coordinators the starter named in the signed announcement. Plans, their round headers
    (reward evidence) and session ends are accepted only from these peers, a plan of rank k
    only from the k-th; participants follow
    the highest rank they have seen (session/failover.py)."""
    return (announcement.starter,) + tuple(announcement.fallback_coordinators)


@dataclass(frozen=True)
class DeviceFacts:
    """What a node says about itself when it opts in (the registry record wins when known)."""

    region: str = ""
    cores: int = 1
    memory_mb: int = 0
    charging: bool = True
    capabilities: tuple[str, ...] = ()
    wallet: bytes = b""           # ledger address rewards go to (empty: the identity key)

    def to_wire(self) -> dict[str, Any]:
        return {"region": self.region, "cores": self.cores, "mem": self.memory_mb,
                "charging": self.charging, "caps": list(self.capabilities),
                **({"wallet": self.wallet} if self.wallet else {})}

    @classmethod
    def decode(cls, f: Fields) -> "DeviceFacts":
        caps = f.list("caps", max_len=MAX_CAPS)
        if not all(isinstance(c, str) and 0 < len(c) <= MAX_NAME for c in caps):
            f._fail("field 'caps' must be a list of capability names")
        d = cls(region=f.str("region", max_len=MAX_NAME), cores=f.int("cores", lo=0, hi=1 << 16),
                memory_mb=f.int("mem", lo=0, hi=2**40), charging=f.bool("charging"),
                capabilities=tuple(caps),
                wallet=f.bytes("wallet", size=PUBKEY_LEN, optional=True, default=b""))
        f.done()
        return d


@dataclass(frozen=True)
class OptIn:
    session_id: bytes
    facts: DeviceFacts

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "session": self.session_id, "facts": self.facts.to_wire()}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "OptIn":
        f = Fields(raw, "fl.OptIn", versions={VERSION}, peer=peer)
        m = cls(_hash(f, "session"), DeviceFacts.decode(f.sub("facts")))
        f.done()
        return m


@dataclass(frozen=True)
class RoundPlan:
    """The coordinator's plan for one try of a round: who trains, from which model.

    `participants` pairs each selected peer with the reputation the coordinator used, so every
    participant computes the same aggregator order (election.py) without further messages.
    `sources` are peers that serve the base model (by hash) on the model stream.
    `wallets` gives each participant's reward wallet (b"": its identity key; empty tuple: all
    identity keys); `header` is the coordinator's signed summary (round_header.py)."""

    session_id: bytes
    round: int
    try_no: int
    seed: bytes
    participants: tuple[tuple[str, float], ...]
    base_model_hash: bytes
    base_round: int
    sources: tuple[str, ...]
    regions: tuple[str, ...] = ()     # hierarchical sessions: each participant's region
    wallets: tuple[bytes, ...] = ()
    header: RoundHeader | None = None
    rank: int = 0                     # the planning coordinator's index in coordinators_of

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.participants)

    def wallet_of(self, peer: str) -> bytes:
        """Where `peer`'s rewards go: its opted-in wallet, else its identity key (b"" for a
        peer id that holds no Ed25519 key: such a participant cannot be paid)."""
        i = self.peers.index(peer)
        w = self.wallets[i] if self.wallets else b""
        if w:
            return w
        try:
            return pubkey_from_peer_id(peer)
        except ValueError:
            return b""

    def leaves(self) -> list[bytes]:
        """Merkle leaves (peer, reward wallet) in plan order (merkle.py)."""
        return [leaf_hash(p, self.wallet_of(p)) for p in self.peers]

    def with_header(self, key: SigningKey, signer: str, count: int) -> "RoundPlan":
        """This plan with a header signed by `signer` (a coordinator of the session), whose
        order is the first `count` peers of the election."""
        order = aggregator_order(self.seed, self.participants, count)
        h = RoundHeader(self.session_id, self.round, self.try_no, self.seed, order,
                        merkle_root(self.leaves()), len(self.participants), signer,
                        bytes(key.verify_key)).signed(key)
        return dataclasses.replace(self, header=h)

    def region_of(self, peer: str) -> str:
        """The region a participant was planned in ("" in a flat plan)."""
        if not self.regions:
            return ""
        return self.regions[self.peers.index(peer)]

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "session": self.session_id, "round": self.round, "try": self.try_no,
                "seed": self.seed, "parts": [[p, r] for p, r in self.participants],
                "base": self.base_model_hash, "base_round": self.base_round,
                "sources": list(self.sources),
                **({"regions": list(self.regions)} if self.regions else {}),
                **({"wallets": list(self.wallets)} if self.wallets else {}),
                **({"header": self.header.to_wire()} if self.header is not None else {}),
                **({"rank": self.rank} if self.rank else {})}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "RoundPlan":
        f = Fields(raw, "fl.RoundPlan", versions={VERSION}, peer=peer)
        session, rnd, try_no = _hash(f, "session"), f.int("round", lo=1, hi=100_000), f.int("try", lo=0, hi=1000)
        seed = _hash(f, "seed")
        parts_raw = f.list("parts", max_len=MAX_PARTICIPANTS)
        parts: list[tuple[str, float]] = []
        for item in parts_raw:
            if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                    or not 0 < len(item[0]) <= MAX_PEER_ID or isinstance(item[1], bool)
                    or not isinstance(item[1], (int, float)) or not 0.0 <= item[1] <= 1.0):
                f._fail("field 'parts' must be [peer id, reputation in [0, 1]] pairs")
            parts.append((item[0], float(item[1])))
        if len({p for p, _ in parts}) != len(parts) or not parts:
            f._fail("field 'parts' must list distinct peers, at least one")
        base, base_round = _hash(f, "base"), f.int("base_round", lo=0, hi=100_000)
        sources = f.list("sources", max_len=16)
        if not all(isinstance(s, str) and 0 < len(s) <= MAX_PEER_ID for s in sources):
            f._fail("field 'sources' must be peer ids")
        regions = f.list("regions", max_len=MAX_PARTICIPANTS, optional=True)
        if regions and (len(regions) != len(parts) or not all(
                isinstance(r, str) and len(r) <= MAX_NAME for r in regions)):
            f._fail("field 'regions' must give one region name per participant")
        wallets = f.list("wallets", max_len=MAX_PARTICIPANTS, optional=True)
        if wallets and (len(wallets) != len(parts) or not all(
                isinstance(w, bytes) and len(w) in (0, PUBKEY_LEN) for w in wallets)):
            f._fail("field 'wallets' must give one 32-byte address (or empty) per participant")
        header_raw = f.map("header", max_len=16, optional=True)
        rank = f.int("rank", lo=0, hi=MAX_COORDINATORS, optional=True, default=0)
        f.done()
        header = RoundHeader.decode(header_raw, peer=peer) if header_raw else None
        return cls(session, rnd, try_no, seed, tuple(parts), base, base_round, tuple(sources),
                   tuple(regions), tuple(wallets), header, rank)


def plan_problem(ann: SessionAnnouncement, plan: RoundPlan, count: int) -> str | None:
    """Why a participant must not act on `plan` (None if its header checks out): the header
    is missing, not signed by a coordinator of the session, names another round or seed,
    another aggregator order than the election over the plan's participants (first `count`),
    or another participant list. The header's signature was checked when it was decoded."""
    h = plan.header
    if h is None:
        return "the plan has no signed round header"
    coordinators = coordinators_of(ann)
    if plan.rank >= len(coordinators) or h.signer != coordinators[plan.rank]:
        return f"round header signed by {h.signer}, not the session's coordinator of rank {plan.rank}"
    if (h.session_id, h.round, h.try_no, h.seed) != (plan.session_id, plan.round, plan.try_no, plan.seed):
        return "round header names another session, round, try or seed than the plan"
    if h.order != aggregator_order(plan.seed, plan.participants, count):
        return "round header's aggregator order is not the election over the plan"
    if h.participants != len(plan.participants) or h.participants_root != merkle_root(plan.leaves()):
        return "round header's participant digest does not match the plan"
    return None


@dataclass(frozen=True)
class RoundResult:
    """A completed round, published by the aggregator that completed it."""

    receipt: RoundReceipt
    loss: float           # base model, sample-weighted over accepted participants' local data
    accuracy: float
    train_loss: float     # participants' mean local training loss
    dropped: tuple[str, ...]
    rejected: dict[str, str] = field(hash=False)

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "receipt": self.receipt.to_wire(), "loss": _finite(self.loss),
                "acc": _finite(self.accuracy), "train_loss": _finite(self.train_loss),
                "dropped": list(self.dropped), "rejected": dict(self.rejected)}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "RoundResult":
        f = Fields(raw, "fl.RoundResult", versions={VERSION}, peer=peer)
        receipt = decode_round_receipt(f.map("receipt"), peer=peer)
        loss, acc, tl = f.float("loss"), f.float("acc"), f.float("train_loss")
        dropped = f.list("dropped", max_len=MAX_PARTICIPANTS)
        rejected = f.map("rejected", max_len=MAX_PARTICIPANTS)
        if not all(isinstance(p, str) and len(p) <= MAX_PEER_ID for p in dropped):
            f._fail("field 'dropped' must be peer ids")
        if not all(isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_REASON
                   for k, v in rejected.items()):
            f._fail("field 'rejected' must map peer ids to reasons")
        f.done()
        return cls(receipt, loss, acc, tl, tuple(dropped), rejected)


def _finite(x: float) -> float:
    """NaN (nothing measured) travels as -1.0: wire floats must be finite."""
    return x if math.isfinite(x) else -1.0


@dataclass(frozen=True)
class RoundFailed:
    """An aggregator's deadline passed with fewer than the minimum usable updates."""

    session_id: bytes
    round: int
    try_no: int
    reason: str

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "session": self.session_id, "round": self.round, "try": self.try_no,
                "reason": self.reason[:MAX_REASON]}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "RoundFailed":
        f = Fields(raw, "fl.RoundFailed", versions={VERSION}, peer=peer)
        m = cls(_hash(f, "session"), f.int("round", lo=1, hi=100_000), f.int("try", lo=0, hi=1000),
                f.str("reason", max_len=MAX_REASON))
        f.done()
        return m


@dataclass(frozen=True)
class SessionEnded:
    """The coordinator ended the session: completed, failed or stopped. `rank` is the ending
    coordinator's index in coordinators_of (wire "rank", absent for the starter)."""

    session_id: bytes
    state: str
    rounds_done: int
    final_model_hash: bytes
    reason: str = ""
    rank: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "session": self.session_id, "state": self.state,
                "rounds": self.rounds_done, "model": self.final_model_hash,
                "reason": self.reason[:MAX_REASON], **({"rank": self.rank} if self.rank else {})}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "SessionEnded":
        f = Fields(raw, "fl.SessionEnded", versions={VERSION}, peer=peer)
        m = cls(_hash(f, "session"), f.str("state", max_len=16), f.int("rounds", lo=0, hi=100_000),
                _hash(f, "model"), f.str("reason", max_len=MAX_REASON),
                f.int("rank", lo=0, hi=MAX_COORDINATORS, optional=True, default=0))
        f.done()
        if m.state not in ("completed", "failed", "stopped"):
            raise RemoteProtocolError(f"fl.SessionEnded: unknown state {m.state!r}", peer=peer)
        return m


GossipMessage = SessionAnnouncement | OptIn | RoundPlan | RoundResult | RoundFailed | SessionEnded
_TYPE_OF = {SessionAnnouncement: "announce", OptIn: "optin", RoundPlan: "plan",
            RoundResult: "result", RoundFailed: "failed", SessionEnded: "ended"}
_DECODER: dict[str, Callable[..., GossipMessage]] = {"announce": SessionAnnouncement.decode, "optin": OptIn.decode, "plan": RoundPlan.decode,
            "result": RoundResult.decode, "failed": RoundFailed.decode, "ended": SessionEnded.decode}


def encode_gossip(msg: GossipMessage) -> bytes:
    return pack({"v": VERSION, "type": _TYPE_OF[type(msg)], "body": msg.to_wire()})


def decode_gossip(raw: Any, *, peer: str | None = None) -> GossipMessage:
    """Decode an envelope (already msgpack-decoded); RemoteProtocolError on anything wrong."""
    f = Fields(raw, "fl.Gossip", versions={VERSION}, peer=peer)
    kind = f.str("type", max_len=16)
    body = f.map("body", max_len=64)
    f.done()
    dec = _DECODER.get(kind)
    if dec is None:
        raise RemoteProtocolError(f"fl.Gossip: unknown message type {kind!r}", peer=peer)
    return dec(body, peer=peer)


# --- stream messages -----------------------------------------------------------------------

@dataclass(frozen=True)
class MemberMeta:
    """One participant inside a regional update: its sample count and the quality figures it
    reported to its regional aggregator."""

    peer: str
    num_samples: int
    base_loss: float
    base_accuracy: float
    train_loss: float

    def to_wire(self) -> list[Any]:
        return [self.peer, self.num_samples, _finite(self.base_loss), _finite(self.base_accuracy),
                _finite(self.train_loss)]

    @classmethod
    def decode(cls, raw: Any, f: Fields) -> "MemberMeta":
        if (not isinstance(raw, list) or len(raw) != 5 or not isinstance(raw[0], str)
                or not 0 < len(raw[0]) <= MAX_PEER_ID or isinstance(raw[1], bool)
                or not isinstance(raw[1], int) or not 0 < raw[1] <= 2**40
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                           for x in raw[2:])):
            f._fail("field 'members' must be [peer, samples > 0, base loss, base accuracy, "
                    "train loss] lists, the figures finite")
        return cls(raw[0], raw[1], float(raw[2]), float(raw[3]), float(raw[4]))


@dataclass(frozen=True)
class UpdateHeader:
    """First frame on the update stream; raw tensor chunks follow."""

    session_id: bytes
    round: int
    try_no: int
    fallback: int            # index in the aggregator order this update is addressed to
    num_samples: int
    base_loss: float         # the base model on the participant's training data
    base_accuracy: float     # the base model on the participant's held-out data
    train_loss: float
    tensor: TensorHeader
    # a regional update (hierarchical sessions): the participants it combines and its
    # aggregation weight; the tensor is their weighted mean contribution
    members: tuple["MemberMeta", ...] = ()
    weight: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        out = {"v": VERSION, "session": self.session_id, "round": self.round, "try": self.try_no,
               "fallback": self.fallback, "n": self.num_samples, "base_loss": _finite(self.base_loss),
               "base_acc": _finite(self.base_accuracy), "train_loss": _finite(self.train_loss),
               "tensor": self.tensor.to_wire()}
        if self.members:
            out["members"] = [m.to_wire() for m in self.members]
            out["weight"] = self.weight
        return out

    @classmethod
    def decode(cls, raw: Any, *, expected_shape: tuple[int, ...] | None, max_bytes: int,
               peer: str | None = None) -> "UpdateHeader":
        """Validate the header; the tensor header is checked against the expected shape and
        size limit here, before any chunk is read (TensorRejected with a reason)."""
        f = Fields(raw, "fl.UpdateHeader", versions={VERSION}, peer=peer)
        h = cls(_hash(f, "session"), f.int("round", lo=1, hi=100_000), f.int("try", lo=0, hi=1000),
                f.int("fallback", lo=0, hi=16), f.int("n", lo=1, hi=2**40), f.float("base_loss"),
                f.float("base_acc"), f.float("train_loss"),
                decode_header(f.map("tensor"), expected_shape=expected_shape, max_bytes=max_bytes,
                              peer=peer))
        members_raw = f.list("members", max_len=MAX_PARTICIPANTS, optional=True)
        if members_raw:
            members = tuple(MemberMeta.decode(m, f) for m in members_raw)
            if len({m.peer for m in members}) != len(members):
                f._fail("field 'members' must list distinct peers")
            weight = f.float("weight", lo=0.0, hi=1e18)
            if not weight > 0:
                f._fail("field 'weight' must be positive in a regional update")
            h = dataclasses.replace(h, members=members, weight=weight)
        f.done()
        return h

    @staticmethod
    def peek_session(raw: Any) -> tuple[bytes, int] | None:
        """(session, round) of an undecoded header map, to look up the expected shape."""
        if isinstance(raw, dict) and isinstance(raw.get("session"), bytes) and isinstance(raw.get("round"), int):
            return raw["session"], raw["round"]
        return None


@dataclass(frozen=True)
class Ack:
    """The receiver's verdict on a stream request."""

    ok: bool
    reason: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "ok": self.ok, "reason": self.reason[:MAX_REASON]}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "Ack":
        f = Fields(raw, "fl.Ack", versions={VERSION}, peer=peer)
        a = cls(f.bool("ok"), f.str("reason", max_len=MAX_REASON))
        f.done()
        return a


@dataclass(frozen=True)
class ModelRequest:
    session_id: bytes
    model_hash: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "session": self.session_id, "model": self.model_hash}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "ModelRequest":
        f = Fields(raw, "fl.ModelRequest", versions={VERSION}, peer=peer)
        m = cls(_hash(f, "session"), _hash(f, "model"))
        f.done()
        return m


@dataclass(frozen=True)
class ModelResponse:
    """Answer to a model request: the named tensors that follow ("params" first, then any
    server-optimiser state of the strategy), each as its header then its chunks."""

    ok: bool
    reason: str
    tensors: tuple[tuple[str, TensorHeader], ...]

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "ok": self.ok, "reason": self.reason[:MAX_REASON],
                "tensors": [[n, h.to_wire()] for n, h in self.tensors]}

    @classmethod
    def decode(cls, raw: Any, *, params_shape: tuple[int, ...], max_bytes: int,
               peer: str | None = None) -> "ModelResponse":
        f = Fields(raw, "fl.ModelResponse", versions={VERSION}, peer=peer)
        ok, reason = f.bool("ok"), f.str("reason", max_len=MAX_REASON)
        items = f.list("tensors", max_len=8)
        f.done()
        tensors: list[tuple[str, TensorHeader]] = []
        for i, item in enumerate(items):
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str) \
                    or not 0 < len(item[0]) <= MAX_NAME:
                raise RemoteProtocolError("fl.ModelResponse: tensors must be [name, header] pairs", peer=peer)
            name = item[0]
            if i == 0 and name != "params":
                raise RemoteProtocolError("fl.ModelResponse: the first tensor must be 'params'", peer=peer)
            tensors.append((name, decode_header(item[1], expected_shape=params_shape if i == 0 else None,
                                                max_bytes=max_bytes, peer=peer)))
        if ok and not tensors:
            raise RemoteProtocolError("fl.ModelResponse: ok without tensors", peer=peer)
        return cls(ok, reason, tuple(tensors))
