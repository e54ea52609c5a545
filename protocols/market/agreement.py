"""Agreement terms and the negotiation messages carried over the market stream.

Terms (a msgpack map, the thing both parties sign)::

    {"v": 1, "nonce": <16 bytes: the negotiation>, "round": <int>,
     "customer": <pubkey>, "provider": <pubkey>, "service": <str>, "offer": <offer id>,
     "demand": <32-byte demand id>, "prices": {<unit>: <int>}, "usage": {<unit>: <int>},
     "max_total": <int>, "start": <unix s>, "deadline": <unix s>, "debit_interval": <s>,
     "sla": {"uptime_bp": <0..10000>, "max_response_ms": <int>, "penalty": <int>,
             "collateral": <int>, "window": <s>}}

The SLA (sla.py judges it): in every observation `window` of seconds from `start`, the
provider answers at least `uptime_bp` of the customer's probes within `max_response_ms`; a
window below that is a breach, and each proven breach takes `penalty` out of the `collateral`
the provider locks into the agreement's escrow when it accepts (so `penalty <= collateral`, and
the provider never loses more than `collateral` whatever the customer claims).

`max_total` caps what the customer owes for this agreement (the escrow to open); the metered
cost is price times the units used. An agreement is the terms with both parties' Ed25519
signatures over `pack(terms)`; its id is BLAKE2b-256 of `pack(terms)`.

Negotiation messages (each signed by the party named in ``by``)::

    proposal  {"v": 1, "t": "proposal", "by": "customer", "terms": {...}, "sig": <over the map>}
    counter   {"v": 1, "t": "counter", "by": "customer" | "provider", "terms": {...}, "sig": ...}
    accept    {"v": 1, "t": "accept", "by": ..., "nonce": ..., "round": ..., "terms_id": <32>,
               "sig": <the accepting party's signature over pack(terms)>}
    reject    {"v": 1, "t": "reject", "by": ..., "nonce": ..., "round": ..., "reason": <str>,
               "signer": <pubkey>, "sig": <over the map>}
    agreement {"v": 1, "t": "agreement", "terms": {...}, "customer_sig": ..., "provider_sig": ...}

A proposal opens round 0; each counter raises the round by one. `decode_negotiation` checks
shape and the sender's signature where it can be checked from the message alone (proposal,
counter, reject, agreement); an `accept` is checked by the negotiation core against the terms
it sent (`negotiation.py`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import SIG_LEN, Fields, digest, pack, sign, unpack, verify
from fognode.protocols.market import wirecommon as wc
from fognode.protocols.market.errors import Rejected, RejectReason
from fognode.protocols.registry.peerid import PUBKEY_LEN

MAX_NEGOTIATION_BYTES = 4096
NONCE_LEN = 16
MAX_ROUND = 1000
MAX_REASON = 256
PARTIES = ("customer", "provider")


MAX_SLA_WINDOW = 86_400


@dataclass(frozen=True)
class SLA:
    uptime_bp: int = 9900          # 99 %
    max_response_ms: int = 1000
    penalty: int = 0               # micro-units per proven breach (one per observation window)
    collateral: int = 0            # micro-units the provider locks into the escrow (caps all penalties)
    window: int = 60               # seconds of one observation window

    def body(self) -> dict[str, Any]:
        return {"uptime_bp": self.uptime_bp, "max_response_ms": self.max_response_ms,
                "penalty": self.penalty, "collateral": self.collateral, "window": self.window}


@dataclass(frozen=True)
class Terms:
    nonce: bytes
    round: int
    customer: bytes
    provider: bytes
    service: str
    offer: str
    demand: bytes
    prices: tuple[tuple[str, int], ...]
    usage: tuple[tuple[str, int], ...]
    max_total: int
    start: int
    deadline: int
    debit_interval: int
    sla: SLA

    def body(self) -> dict[str, Any]:
        return {"v": wc.VERSION, "nonce": self.nonce, "round": self.round,
                "customer": self.customer, "provider": self.provider, "service": self.service,
                "offer": self.offer, "demand": self.demand, "prices": dict(self.prices),
                "usage": dict(self.usage), "max_total": self.max_total, "start": self.start,
                "deadline": self.deadline, "debit_interval": self.debit_interval,
                "sla": self.sla.body()}

    @property
    def terms_id(self) -> bytes:
        return digest(pack(self.body()))

    def party(self, by: str) -> bytes:
        return self.customer if by == "customer" else self.provider

    def estimated_cost(self) -> int | None:
        """Price times the estimated usage (None when a used unit has no price)."""
        prices = dict(self.prices)
        total = 0
        for unit, qty in self.usage:
            if qty:
                if unit not in prices:
                    return None
                total += prices[unit] * qty
        return total

    def revise(self, **changes: Any) -> "Terms":
        """The next round's terms with `changes` applied."""
        return dataclasses.replace(self, round=self.round + 1, **changes)


def _read_terms(f: Fields) -> Terms:
    s = f.sub("sla", f"{f.what} sla")
    sla = SLA(s.int("uptime_bp", lo=0, hi=10_000), s.int("max_response_ms", lo=1, hi=3_600_000),
              s.int("penalty", lo=0, hi=wc.U63), s.int("collateral", lo=0, hi=wc.U63),
              s.int("window", lo=1, hi=MAX_SLA_WINDOW))
    s.done()
    if sla.collateral and sla.penalty > sla.collateral:
        s._fail("field 'penalty' is over the 'collateral' it is taken from")
    if f.int("v", lo=0, hi=2**16) != wc.VERSION:
        f._fail("unknown terms version")
    t = Terms(
        nonce=f.bytes("nonce", size=NONCE_LEN), round=f.int("round", lo=0, hi=MAX_ROUND),
        customer=f.bytes("customer", size=PUBKEY_LEN), provider=f.bytes("provider", size=PUBKEY_LEN),
        service=wc.read_service(f), offer=wc.read_id(f, "offer"), demand=f.bytes("demand", size=32),
        prices=tuple(wc.read_units(f, "prices", wc.MAX_PRICE, allow_empty=False).items()),
        usage=tuple(wc.read_units(f, "usage", wc.MAX_QUANTITY, allow_empty=True).items()),
        max_total=f.int("max_total", lo=0, hi=wc.U63), start=f.int("start", lo=0, hi=wc.U63),
        deadline=f.int("deadline", lo=0, hi=wc.U63),
        debit_interval=f.int("debit_interval", lo=1, hi=86_400), sla=sla)
    f.done()
    if t.deadline <= t.start:
        f._fail("field 'deadline' is not after 'start'")
    if t.customer == t.provider:
        f._fail("customer and provider are the same key")
    return t


def decode_terms(data: bytes, what: str = "market terms") -> Terms:
    """Terms from `pack(terms.body())` (e.g. a contract store's record): the same checks as
    on the wire; RemoteProtocolError naming the field."""
    raw = unpack(data, max_size=MAX_NEGOTIATION_BYTES, what=what)
    t = _read_terms(Fields(raw, what))
    if pack(t.body()) != pack(raw):
        raise RemoteProtocolError(f"{what}: not in canonical form")
    return t


@dataclass(frozen=True)
class Proposal:
    """An offer of `terms` by party `by`; `counter` for every round after the first."""

    by: str
    terms: Terms
    sig: bytes
    counter: bool = False

    def body(self) -> dict[str, Any]:
        return {"v": wc.VERSION, "t": "counter" if self.counter else "proposal", "by": self.by,
                "terms": self.terms.body()}

    def encode(self) -> bytes:
        return pack({**self.body(), "sig": self.sig})


def sign_proposal(key: SigningKey, by: str, terms: Terms) -> Proposal:
    p = Proposal(by, terms, b"", counter=terms.round > 0)
    return dataclasses.replace(p, sig=sign(key, p.body()))


@dataclass(frozen=True)
class Accept:
    by: str
    nonce: bytes
    round: int
    terms_id: bytes
    sig: bytes             # the accepting party's signature over pack(terms)

    def encode(self) -> bytes:
        return pack({"v": wc.VERSION, "t": "accept", "by": self.by, "nonce": self.nonce,
                     "round": self.round, "terms_id": self.terms_id, "sig": self.sig})


def sign_accept(key: SigningKey, by: str, terms: Terms) -> Accept:
    return Accept(by, terms.nonce, terms.round, terms.terms_id, sign(key, terms.body()))


@dataclass(frozen=True)
class Reject:
    by: str
    nonce: bytes
    round: int
    reason: str
    signer: bytes
    sig: bytes

    def body(self) -> dict[str, Any]:
        return {"v": wc.VERSION, "t": "reject", "by": self.by, "nonce": self.nonce,
                "round": self.round, "reason": self.reason, "signer": self.signer}

    def encode(self) -> bytes:
        return pack({**self.body(), "sig": self.sig})


def sign_reject(key: SigningKey, by: str, nonce: bytes, round: int, reason: str) -> Reject:
    r = Reject(by, nonce, round, reason[:MAX_REASON], bytes(key.verify_key), b"")
    return dataclasses.replace(r, sig=sign(key, r.body()))


@dataclass(frozen=True)
class Agreement:
    terms: Terms
    customer_sig: bytes
    provider_sig: bytes

    @property
    def agreement_id(self) -> bytes:
        return self.terms.terms_id

    def body(self) -> dict[str, Any]:
        return {"v": wc.VERSION, "t": "agreement", "terms": self.terms.body(),
                "customer_sig": self.customer_sig, "provider_sig": self.provider_sig}

    def encode(self) -> bytes:
        return pack(self.body())

    def is_valid(self) -> bool:
        """Both signatures check out over the terms."""
        b = self.terms.body()
        return (verify(self.terms.customer, b, self.customer_sig)
                and verify(self.terms.provider, b, self.provider_sig))


NegotiationMessage = Proposal | Accept | Reject | Agreement


def _by(f: Fields) -> str:
    by = f.str("by", max_len=16)
    if by not in PARTIES:
        f._fail(f"field 'by' must be 'customer' or 'provider', got {by!r}")
    return by


def decode_negotiation(data: bytes, *, peer: str | None = None) -> NegotiationMessage:
    """Decode one negotiation message (type by its "t" tag); Rejected naming the field."""
    if len(data) > MAX_NEGOTIATION_BYTES:
        raise Rejected(RejectReason.OVERSIZE, f"negotiation message is {len(data)} bytes, over "
                       f"{MAX_NEGOTIATION_BYTES}", peer=peer)
    raw = wc.malformed(_unpack_tagged, data, peer, peer=peer)
    t = raw["t"]
    raw_, f = wc.open_signed(data, f"market {t}", t, MAX_NEGOTIATION_BYTES, peer)

    def read() -> NegotiationMessage:
        if t in ("proposal", "counter"):
            by = _by(f)
            terms = _read_terms(f.sub("terms", f"market {t} terms"))
            sig = f.bytes("sig", size=SIG_LEN)
            f.done()
            if (t == "proposal") != (terms.round == 0):
                f._fail(f"a {t} cannot carry round {terms.round}")
            if t == "proposal" and by != "customer":
                f._fail("only the customer opens a negotiation")
            return Proposal(by, terms, sig, counter=t == "counter")
        if t == "accept":
            a = Accept(_by(f), f.bytes("nonce", size=NONCE_LEN), f.int("round", lo=0, hi=MAX_ROUND),
                       f.bytes("terms_id", size=32), f.bytes("sig", size=SIG_LEN))
            f.done()
            return a
        if t == "reject":
            r = Reject(_by(f), f.bytes("nonce", size=NONCE_LEN), f.int("round", lo=0, hi=MAX_ROUND),
                       f.str("reason", max_len=MAX_REASON), f.bytes("signer", size=PUBKEY_LEN),
                       f.bytes("sig", size=SIG_LEN))
            f.done()
            return r
        terms = _read_terms(f.sub("terms", "market agreement terms"))
        ag = Agreement(terms, f.bytes("customer_sig", size=SIG_LEN),
                       f.bytes("provider_sig", size=SIG_LEN))
        f.done()
        return ag

    msg = wc.malformed(read, peer=peer)
    if isinstance(msg, Proposal):
        wc.check_signed(f"market {t}", raw_, msg.body(), msg.terms.party(msg.by), msg.sig, peer)
    elif isinstance(msg, Reject):
        wc.check_signed("market reject", raw_, msg.body(), msg.signer, msg.sig, peer)
    elif isinstance(msg, Agreement):
        if not msg.is_valid():
            raise Rejected(RejectReason.BAD_SIGNATURE, "agreement is not signed by both parties",
                           peer=peer)
        if pack(msg.body()) != pack(raw_):
            raise Rejected(RejectReason.MALFORMED, "agreement is not in canonical form", peer=peer)
    return msg


_TAGS = ("proposal", "counter", "accept", "reject", "agreement")


def _unpack_tagged(data: bytes, peer: str | None) -> dict[str, Any]:
    from_wire = unpack(data, max_size=MAX_NEGOTIATION_BYTES, what="market negotiation message")
    f = Fields(from_wire, "market negotiation message", peer=peer)
    t = f.str("t", max_len=32)
    if t not in _TAGS:
        f._fail(f"field 't': unknown message type {t[:32]!r}")
    return from_wire
