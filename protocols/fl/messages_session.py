"""FL gossip messages that set up a session and its rounds: the starter's signed
`SessionAnnouncement` (and `coordinators_of`, its coordinators in rank order), a node's
`OptIn`, the coordinator's `RoundPlan` with its signed `RoundHeader` (reward evidence;
`plan_problem` is a participant's check of a plan against its header), and a member's
`CoordinatorSilent` (its vote that the acting coordinator fell silent, session/quorum.py). Each decoder raises
RemoteProtocolError naming the message and field; messages.py puts them in the gossip envelope."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.peerid import peer_id_matches, pubkey_from_peer_id
from fognode.node.wire import PUBKEY_LEN, SIG_LEN, Fields, digest, pack, sign, verify
from fognode.protocols.fl.messages_spec import (
    MAX_COORDINATORS, MAX_NAME, MAX_PARTICIPANTS, MAX_PEER_ID, VERSION, DeviceFacts, SessionSpec,
    hash_field, peer_field)
from fognode.protocols.fl.rewards.merkle import leaf_hash, merkle_root
from fognode.protocols.fl.rewards.round_header import RoundHeader
from fognode.protocols.fl.session.election import aggregator_order


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

    @functools.cached_property
    def session_id(self) -> bytes:
        # computed once per announcement (it is frozen): the core asks for it on every
        # message of the session (Session.sid), and each time was a canonical pack + BLAKE2b
        return digest(pack(self.body()))

    def signed(self, key: SigningKey) -> "SessionAnnouncement":
        return dataclasses.replace(self, sig=sign(key, self.body()))

    def to_wire(self) -> dict[str, Any]:
        return {**self.body(), "sig": self.sig}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "SessionAnnouncement":
        f = Fields(raw, "fl.SessionAnnouncement", versions={VERSION}, peer=peer)
        a = cls(spec=SessionSpec.decode(f.sub("spec", "fl.SessionSpec")), starter=peer_field(f, "starter"),
                starter_key=f.bytes("key", size=PUBKEY_LEN), created=f.float("created", lo=0.0),
                nonce=f.bytes("nonce", size=16), initial_model_hash=hash_field(f, "model0"),
                layout_hash=hash_field(f, "layout"), sig=f.bytes("sig", size=SIG_LEN))
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
class OptIn:
    session_id: bytes
    facts: DeviceFacts

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "session": self.session_id, "facts": self.facts.to_wire()}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "OptIn":
        f = Fields(raw, "fl.OptIn", versions={VERSION}, peer=peer)
        m = cls(hash_field(f, "session"), DeviceFacts.decode(f.sub("facts")))
        f.done()
        return m


@dataclass(frozen=True)
class CoordinatorSilent:
    """A session member has heard nothing from the coordinator of rank `rank` (the one it
    follows) for a takeover unit: its vote for a takeover by the next coordinator, and its
    question to anyone who knows how the session went on (an ended session's coordinator
    answers with its SessionEnded). `rounds_done`: the rounds it knows completed. The gossip
    envelope's origin is the voter."""

    session_id: bytes
    rank: int
    rounds_done: int

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "session": self.session_id, "rank": self.rank, "rounds": self.rounds_done}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "CoordinatorSilent":
        f = Fields(raw, "fl.CoordinatorSilent", versions={VERSION}, peer=peer)
        m = cls(hash_field(f, "session"), f.int("rank", lo=0, hi=MAX_COORDINATORS),
                f.int("rounds", lo=0, hi=100_000))
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
        session, rnd, try_no = hash_field(f, "session"), f.int("round", lo=1, hi=100_000), f.int("try", lo=0, hi=1000)
        seed = hash_field(f, "seed")
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
        base, base_round = hash_field(f, "base"), f.int("base_round", lo=0, hi=100_000)
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
