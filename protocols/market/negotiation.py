"""The negotiation state machine (sans-IO), for both sides: proposal, counters, accept, agreement.

One `Negotiation` per (peer, nonce). The customer opens with `start` (a round-0 proposal);
the provider's side is created by `Negotiations.receive` when a proposal arrives. Then, in
turns::

    WAITING  --counter(round r+1)--> policy: accept -> ACCEPTED (we sent accept)
                                             counter -> WAITING (we sent round r+2)
                                             reject  -> FAILED
    WAITING  --accept(our round)---> CONCLUDED (we countersign and send the agreement)
    ACCEPTED --agreement(same terms, both signatures)--> CONCLUDED
    any      --reject--> FAILED;  deadline passed (tick) -> FAILED ("timed out", reject sent)

A party signs terms only when it accepts them or when it countersigns an accept of the terms
it itself proposed last, so neither side ever holds a two-signature agreement on terms the
other did not accept in that exact round. The accepting side signs first: if the agreement
message never reaches it, its `NegotiationFailed` carries the terms it `signed`, since the
other side holds both signatures and may still act on them (opening the escrow is what puts
an agreement in force). The counterparty must keep the negotiation's
invariants (nonce, parties, service, offer, demand); a message out of turn, for another round,
with a signature that does not check out, or changing an invariant fails the negotiation and
is a `Refused` charged to the peer. Rounds are bounded by `max_rounds`, every wait by
`timeout` seconds (both from `MarketConfig`).

`Policy` decides on the other side's terms: `provider_policy` (accept at or above the offer's
prices and within its uptime guarantee, else counter with them) and `customer_policy` (accept
within the per-replica budget and the wanted SLA, else reject) are the defaults.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Callable

from nacl.signing import SigningKey

from fognode.node.wire import verify
from fognode.protocols.market.actions import (Action, Concluded, NegotiationFailed, Refused,
                                              Send)
from fognode.protocols.market.agreement import (SLA, Accept, Agreement, Proposal, Reject, Terms,
                                                decode_negotiation, sign_accept, sign_proposal,
                                                sign_reject)
from fognode.protocols.market.errors import Rejected, RejectReason
from fognode.protocols.market.messages import Demand, Offer
from fognode.protocols.registry.peerid import peer_id_from_pubkey


class State(enum.Enum):
    WAITING = "waiting"          # we sent a proposal or counter; the peer's turn
    ACCEPTED = "accepted"        # we accepted the peer's terms; waiting for the agreement
    CONCLUDED = "concluded"
    FAILED = "failed"


@dataclass(frozen=True)
class AcceptTerms:
    pass


@dataclass(frozen=True)
class CounterTerms:
    terms: Terms             # the next round's terms (Terms.revise)


@dataclass(frozen=True)
class RejectTerms:
    reason: str


Decision = AcceptTerms | CounterTerms | RejectTerms
Policy = Callable[[Terms], Decision]

_INVARIANTS = ("nonce", "customer", "provider", "service", "offer", "demand")


def terms_for(demand: Demand, offer: Offer, *, nonce: bytes, now: float, sla: SLA,
              debit_interval: int, prices: dict[str, int] | None = None) -> Terms:
    """Round-0 terms for one replica of `demand` at `offer` (its prices unless `prices`)."""
    return Terms(nonce=nonce, round=0, customer=demand.customer, provider=offer.provider,
                 service=demand.service, offer=offer.id, demand=demand.demand_id,
                 prices=tuple(sorted((prices or dict(offer.prices)).items())),
                 usage=demand.usage, max_total=demand.per_replica_budget, start=int(now),
                 deadline=demand.deadline, debit_interval=debit_interval, sla=sla)


def provider_policy(offer: Offer) -> Policy:
    """Accept terms priced at least at `offer` and asking no more uptime than it guarantees;
    otherwise counter with the offer's prices (and its uptime), raising max_total to cover the
    estimated cost."""
    floor = dict(offer.prices)

    def decide(t: Terms) -> Decision:
        asked = dict(t.prices)
        if t.service != offer.service or t.offer != offer.id or t.provider != offer.provider:
            return RejectTerms(f"terms are not for offer {offer.id!r} ({offer.service})")
        if any(u not in floor for u, q in t.usage if q):
            return RejectTerms("the offer does not price a unit the job uses")
        cost = t.estimated_cost()
        ok = (all(asked.get(u, 0) >= p for u, p in floor.items())
              and t.sla.uptime_bp <= offer.uptime_bp and cost is not None
              and cost <= t.max_total)
        if ok:
            return AcceptTerms()
        prices = {u: max(asked.get(u, 0), p) for u, p in floor.items()}
        revised = t.revise(prices=tuple(sorted(prices.items())),
                           sla=dataclasses.replace(t.sla, uptime_bp=min(t.sla.uptime_bp,
                                                                        offer.uptime_bp)))
        need = revised.estimated_cost() or 0
        return CounterTerms(dataclasses.replace(revised, max_total=max(t.max_total, need)))

    return decide


def customer_policy(budget: int, min_uptime_bp: int = 0) -> Policy:
    """Accept when the estimated cost and the cap fit `budget` (one replica) and the SLA keeps
    at least `min_uptime_bp`; otherwise reject, saying which."""
    def decide(t: Terms) -> Decision:
        cost = t.estimated_cost()
        if cost is None:
            return RejectTerms("terms do not price every unit the job uses")
        if cost > budget or t.max_total > budget:
            return RejectTerms(f"over budget: cost {cost}, cap {t.max_total} > {budget}")
        if t.sla.uptime_bp < min_uptime_bp:
            return RejectTerms(f"uptime {t.sla.uptime_bp} bp is below {min_uptime_bp} bp")
        return AcceptTerms()

    return decide


class Negotiation:
    """One negotiation seen from one side (`by` is "customer" or "provider")."""

    def __init__(self, key: SigningKey, by: str, peer: str, policy: Policy, *, timeout: float,
                 max_rounds: int) -> None:
        self.key = key
        self.by = by
        self.other = "provider" if by == "customer" else "customer"
        self.peer = peer
        self.policy = policy
        self.timeout = timeout
        self.max_rounds = max_rounds
        self.state = State.WAITING
        self.terms: Terms | None = None      # the latest terms on the table
        self.agreement: Agreement | None = None
        self.deadline = 0.0

    @property
    def nonce(self) -> bytes:
        return self.terms.nonce if self.terms is not None else b""

    def start(self, terms: Terms, now: float) -> list[Action]:
        """Customer: send the round-0 proposal."""
        self.terms, self.deadline = terms, now + self.timeout
        return [Send(self.peer, sign_proposal(self.key, self.by, terms).encode())]

    def _fail(self, reason: str, now: float, *, tell: bool = True,
              refused: tuple[RejectReason, str] | None = None,
              told: str | None = None) -> list[Action]:
        """Fail the negotiation: `reason` is ours to report, `told` (default `reason`) what
        the reject sent to the peer says."""
        out: list[Action] = []
        if refused is not None:
            out.append(Refused("negotiation", refused[0], self.peer, refused[1]))
        if tell and self.terms is not None:
            out.append(Send(self.peer, sign_reject(self.key, self.by, self.nonce,
                                                   self.terms.round, told or reason).encode()))
        signed = self.terms if self.state is State.ACCEPTED else None
        self.state = State.FAILED
        out.append(NegotiationFailed(self.peer, self.nonce, reason, signed))
        return out

    def _protocol(self, detail: str, now: float,
                  reason: RejectReason = RejectReason.UNEXPECTED) -> list[Action]:
        return self._fail(f"protocol: {detail}", now, refused=(reason, detail))

    def _decide(self, theirs: Terms, now: float) -> list[Action]:
        """Apply our policy to the peer's terms (already checked)."""
        self.terms = theirs
        if theirs.round >= self.max_rounds:
            return self._fail(f"too many rounds ({theirs.round + 1} > {self.max_rounds})", now)
        d = self.policy(theirs)
        if isinstance(d, AcceptTerms):
            self.state, self.deadline = State.ACCEPTED, now + self.timeout
            return [Send(self.peer, sign_accept(self.key, self.by, theirs).encode())]
        if isinstance(d, CounterTerms):
            mine = d.terms
            if mine.round != theirs.round + 1 or _changed_invariant(theirs, mine):
                raise ValueError("a policy's counter must be Terms.revise of the peer's terms")
            self.terms, self.state, self.deadline = mine, State.WAITING, now + self.timeout
            return [Send(self.peer, sign_proposal(self.key, self.by, mine).encode())]
        return self._fail(f"rejected: {d.reason}", now, told=d.reason)

    def on_proposal(self, p: Proposal, now: float) -> list[Action]:
        """Provider: the opening proposal (checked by `Negotiations`); customer/provider: a
        counter."""
        if p.by != self.other:
            return self._protocol(f"a {p.by} message from the {self.other}", now)
        if self.terms is None:                       # provider, round 0
            return self._decide(p.terms, now)
        if self.state is not State.WAITING:
            return self._protocol(f"a counter while {self.state.value}", now)
        if p.terms.round != self.terms.round + 1:
            return self._protocol(f"counter for round {p.terms.round}, expected "
                                  f"{self.terms.round + 1}", now)
        changed = _changed_invariant(self.terms, p.terms)
        if changed:
            return self._protocol(f"counter changes {changed!r}", now)
        return self._decide(p.terms, now)

    def on_accept(self, a: Accept, now: float) -> list[Action]:
        if self.state is not State.WAITING or self.terms is None or a.by != self.other:
            return self._protocol(f"an accept by the {a.by} while {self.state.value}", now)
        if a.round != self.terms.round or a.terms_id != self.terms.terms_id:
            return self._protocol(f"accept of round {a.round}, not of our round "
                                  f"{self.terms.round}", now)
        body = self.terms.body()
        if not verify(self.terms.party(self.other), body, a.sig):
            return self._protocol("accept signature does not check out", now,
                                  RejectReason.BAD_SIGNATURE)
        mine = sign_accept(self.key, self.by, self.terms).sig
        sigs = {self.by: mine, self.other: a.sig}
        ag = Agreement(self.terms, sigs["customer"], sigs["provider"])
        self.agreement, self.state = ag, State.CONCLUDED
        return [Send(self.peer, ag.encode()), Concluded(self.peer, ag)]

    def on_agreement(self, ag: Agreement, now: float) -> list[Action]:
        if self.state is not State.ACCEPTED or ag.terms != self.terms:
            return self._protocol(f"an agreement while {self.state.value} or on other terms", now)
        self.agreement, self.state = ag, State.CONCLUDED
        return [Concluded(self.peer, ag)]

    def on_reject(self, r: Reject, now: float) -> list[Action]:
        if self.terms is None or r.by != self.other or r.signer != self.terms.party(self.other):
            return self._protocol("a reject signed by someone else", now)
        return self._fail(f"rejected by the {self.other}: {r.reason}", now, tell=False)

    def tick(self, now: float) -> list[Action]:
        if self.state in (State.WAITING, State.ACCEPTED) and now >= self.deadline:
            return self._fail("timed out", now)
        return []


def _changed_invariant(a: Terms, b: Terms) -> str:
    for name in _INVARIANTS:
        if getattr(a, name) != getattr(b, name):
            return name
    return ""


class Negotiations:
    """All negotiations of this node, both sides, keyed by (peer, nonce).

    `receive(peer, data, now)` decodes a frame from the negotiation stream with `peer` and
    routes it. A proposal for a nonce we do not know opens a provider-side negotiation when
    `provider_policy_for(terms)` returns a policy (None: we reject it, e.g. no such offer).
    Bounded: at most `max_active` open negotiations and `max_per_peer` per peer; a proposal
    beyond either is answered with a reject and counted (CAPACITY, not charged). Finished
    negotiations are dropped at once (their outcome went out as an action).
    """

    def __init__(self, key: SigningKey, *, timeout: float, max_rounds: int,
                 provider_policy_for: Callable[[Terms], Policy | None],
                 max_active: int = 1024, max_per_peer: int = 8) -> None:
        self.key = key
        self.pubkey = bytes(key.verify_key)
        self.timeout = timeout
        self.max_rounds = max_rounds
        self.provider_policy_for = provider_policy_for
        self.max_active = max_active
        self.max_per_peer = max_per_peer
        self.active: dict[tuple[str, bytes], Negotiation] = {}

    def _count(self, peer: str) -> int:
        return sum(1 for p, _ in self.active if p == peer)

    def start(self, peer: str, terms: Terms, policy: Policy, now: float) -> list[Action]:
        """Customer: open a negotiation with `peer` on `terms` (round 0, we are the customer)."""
        if terms.customer != self.pubkey or terms.round != 0:
            raise ValueError("start() takes round-0 terms naming this node as the customer")
        if (peer, terms.nonce) in self.active:
            raise ValueError("a negotiation with this peer and nonce is already open")
        n = Negotiation(self.key, "customer", peer, policy, timeout=self.timeout,
                        max_rounds=self.max_rounds)
        self.active[(peer, terms.nonce)] = n
        return n.start(terms, now)

    def receive(self, peer: str, data: bytes, now: float) -> list[Action]:
        try:
            msg = decode_negotiation(data, peer=peer)
        except Rejected as e:
            return [Refused("negotiation", e.reason, peer, str(e))]
        nonce = msg.terms.nonce if isinstance(msg, (Proposal, Agreement)) else msg.nonce
        n = self.active.get((peer, nonce))
        if n is None:
            if isinstance(msg, Proposal) and not msg.counter:
                return self._open(peer, msg, now)
            if isinstance(msg, Reject):
                return []          # a late reject of something already finished
            return [Refused("negotiation", RejectReason.UNEXPECTED, peer,
                            f"{type(msg).__name__.lower()} for an unknown negotiation")]
        if isinstance(msg, Proposal):
            out = n.on_proposal(msg, now)
        elif isinstance(msg, Accept):
            out = n.on_accept(msg, now)
        elif isinstance(msg, Agreement):
            out = n.on_agreement(msg, now)
        else:
            out = n.on_reject(msg, now)
        self._reap(peer, nonce)
        return out

    def _open(self, peer: str, p: Proposal, now: float) -> list[Action]:
        t = p.terms
        def no(reason: str) -> list[Action]:
            return [Send(peer, sign_reject(self.key, "provider", t.nonce, t.round, reason).encode())]
        if t.provider != self.pubkey:
            return [Refused("negotiation", RejectReason.UNEXPECTED, peer,
                            "proposal names another provider")]
        if peer_id_from_pubkey(t.customer) != peer:
            return [Refused("negotiation", RejectReason.SPOOFED_ORIGIN, peer,
                            "proposal's customer key is not the sending peer's")]
        if len(self.active) >= self.max_active or self._count(peer) >= self.max_per_peer:
            return [Refused("negotiation", RejectReason.CAPACITY, peer,
                            "too many open negotiations"), *no("busy: too many negotiations")]
        policy = self.provider_policy_for(t)
        if policy is None:
            return no(f"no offer {t.offer!r} for service {t.service!r}")
        n = Negotiation(self.key, "provider", peer, policy, timeout=self.timeout,
                        max_rounds=self.max_rounds)
        self.active[(peer, t.nonce)] = n
        out = n.on_proposal(p, now)
        self._reap(peer, t.nonce)
        return out

    def _reap(self, peer: str, nonce: bytes) -> None:
        n = self.active.get((peer, nonce))
        if n is not None and n.state in (State.CONCLUDED, State.FAILED):
            del self.active[(peer, nonce)]

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        for k, n in list(self.active.items()):
            out += n.tick(now)
            self._reap(*k)
        return out
