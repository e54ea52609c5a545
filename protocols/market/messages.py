"""The market's gossip messages: signed offers, withdrawals, demands and auction bids.

Wire forms (msgpack maps, signed by the party they name over the map without ``sig``)::

    offer    {"v": 1, "t": "offer", "provider": <pubkey>, "id": <offer id>, "seq": <int>,
              "service": "compute.wasm" | "storage" | "fog.hosting", "cores": <int>,
              "memory_mib": <int>, "disk_mib": <int>, "region": <str>,
              "prices": {"fuel"?: <int>, "cpu_s"?: <int>, "gb_h"?: <int>},
              "uptime_bp": <0..10000>, "issued": <unix s>, "valid_until": <unix s>, "sig": ...}
    withdraw {"v": 1, "t": "withdraw", "provider": <pubkey>, "id": <offer id>, "seq": <int>,
              "issued": <unix s>, "sig": ...}
    demand   {"v": 1, "t": "demand", "customer": <pubkey>, "id": <str>, "service": <str>,
              "constraints": <filter text>, "usage": {<unit>: <int>}, "budget": <int>,
              "replication": <1..16>, "issued": <unix s>, "deadline": <unix s>, "sig": ...}
    bid      {"v": 1, "t": "bid", "provider": <pubkey>, "demand": <demand id>, "offer": <id>,
              "price": <int>, "seq": <int>, "issued": <unix s>, "valid_until": <unix s>, "sig": ...}

Amounts are integers in ledger micro-units. Prices are per unit: "fuel" per million wasmtime
fuel, "cpu_s" per CPU-second, "gb_h" per GB-hour; an offer prices the units it sells. A
demand's `usage` estimates the units one replica consumes; its cost at an offer is the sum of
price times quantity, and `budget` covers all `replication` replicas. A bid's `price` is the
provider's total for one replica. Uptime is in basis points (9900 = 99 %).

One validating decoder per type (`decode_offer`, ...): wrong types, missing, unknown or
oversize fields and unknown versions raise `Rejected(MALFORMED | OVERSIZE)` naming the field;
a bad signature raises `Rejected(BAD_SIGNATURE)`. Freshness and sequence are the order book's
and the auction's business (they need a clock and history). An offer's id in the book is
(provider, offer id); a demand's id is BLAKE2b-256 of its signed body.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from nacl.signing import SigningKey

from fognode.node.wire import SIG_LEN, digest, pack, sign, unpack
from fognode.protocols.market import wirecommon as wc
from fognode.protocols.market.constraints import MAX_LENGTH, Filter, parse
from fognode.protocols.market.errors import ConstraintError, Rejected, RejectReason
from fognode.protocols.registry.peerid import PUBKEY_LEN, peer_id_from_pubkey

MAX_OFFER_BYTES = 1024
MAX_WITHDRAW_BYTES = 512
MAX_DEMAND_BYTES = 8192
MAX_BID_BYTES = 1024
MAX_OFFER_TTL = 7 * 24 * 3600
MAX_CORES = 4096
MAX_MIB = 2**40


def _peer(pubkey: bytes) -> str:
    return peer_id_from_pubkey(pubkey)


@dataclass(frozen=True)
class Offer:
    provider: bytes
    id: str
    seq: int
    service: str
    cores: int
    memory_mib: int
    disk_mib: int
    region: str
    prices: tuple[tuple[str, int], ...]     # (unit, micro-units per unit), sorted by unit
    uptime_bp: int
    issued: int
    valid_until: int
    sig: bytes
    peer: str = field(default="", compare=False)   # the provider's peer id (derived)

    @property
    def key(self) -> tuple[bytes, str]:
        return (self.provider, self.id)

    def price(self, unit: str) -> int | None:
        return dict(self.prices).get(unit)

    def body(self) -> dict[str, Any]:
        return {"v": wc.VERSION, "t": "offer", "provider": self.provider, "id": self.id,
                "seq": self.seq, "service": self.service, "cores": self.cores,
                "memory_mib": self.memory_mib, "disk_mib": self.disk_mib, "region": self.region,
                "prices": dict(self.prices), "uptime_bp": self.uptime_bp, "issued": self.issued,
                "valid_until": self.valid_until}

    def encode(self) -> bytes:
        return pack({**self.body(), "sig": self.sig})

    def properties(self) -> dict[str, object]:
        """What constraint filters see (constraints.PROPERTIES)."""
        props: dict[str, object] = {
            "service": self.service, "provider": self.peer, "id": self.id, "region": self.region,
            "cores": self.cores, "memory_mib": self.memory_mib, "disk_mib": self.disk_mib,
            "uptime": self.uptime_bp / 100.0, "valid_until": self.valid_until}
        for unit, p in self.prices:
            props[f"price.{unit}"] = p
        return props

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.peer, "id": self.id, "seq": self.seq, "service": self.service,
                "cores": self.cores, "memory_mib": self.memory_mib, "disk_mib": self.disk_mib,
                "region": self.region, "prices": dict(self.prices),
                "uptime": self.uptime_bp / 100.0, "issued": self.issued,
                "valid_until": self.valid_until}


def sign_offer(key: SigningKey, *, id: str, seq: int, service: str, cores: int, memory_mib: int,
               disk_mib: int, region: str, prices: dict[str, int], uptime_bp: int, issued: int,
               valid_until: int) -> Offer:
    pub = bytes(key.verify_key)
    o = Offer(pub, id, seq, service, cores, memory_mib, disk_mib, region,
              tuple(sorted(prices.items())), uptime_bp, issued, valid_until, b"", _peer(pub))
    return dataclasses.replace(o, sig=sign(key, o.body()))


def decode_offer(data: bytes, *, peer: str | None = None) -> Offer:
    """Decode and authenticate an offer; Rejected(OVERSIZE | MALFORMED | BAD_SIGNATURE)."""
    raw, f = wc.open_signed(data, "market offer", "offer", MAX_OFFER_BYTES, peer)

    def read() -> Offer:
        o = Offer(
            provider=f.bytes("provider", size=PUBKEY_LEN), id=wc.read_id(f, "id"),
            seq=f.int("seq", lo=0, hi=wc.U63), service=wc.read_service(f),
            cores=f.int("cores", lo=1, hi=MAX_CORES),
            memory_mib=f.int("memory_mib", lo=0, hi=MAX_MIB),
            disk_mib=f.int("disk_mib", lo=0, hi=MAX_MIB),
            region=f.str("region", max_len=wc.MAX_REGION),
            prices=tuple(wc.read_units(f, "prices", wc.MAX_PRICE, allow_empty=False).items()),
            uptime_bp=f.int("uptime_bp", lo=0, hi=10_000),
            issued=f.int("issued", lo=0, hi=wc.MAX_TIME),
            valid_until=f.int("valid_until", lo=0, hi=wc.MAX_TIME),
            sig=f.bytes("sig", size=SIG_LEN))
        f.done()
        if not o.issued < o.valid_until <= o.issued + MAX_OFFER_TTL:
            f._fail(f"lifetime valid_until - issued = {o.valid_until - o.issued} s is not in "
                    f"(0, {MAX_OFFER_TTL}]")
        return o

    o = wc.malformed(read, peer=peer)
    wc.check_signed("market offer", raw, o.body(), o.provider, o.sig, peer)
    return dataclasses.replace(o, peer=_peer(o.provider))


@dataclass(frozen=True)
class Withdraw:
    """The provider takes offer `id` off the market; `seq` supersedes every lower sequence."""

    provider: bytes
    id: str
    seq: int
    issued: int
    sig: bytes
    peer: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[bytes, str]:
        return (self.provider, self.id)

    def body(self) -> dict[str, Any]:
        return {"v": wc.VERSION, "t": "withdraw", "provider": self.provider, "id": self.id,
                "seq": self.seq, "issued": self.issued}

    def encode(self) -> bytes:
        return pack({**self.body(), "sig": self.sig})


def sign_withdraw(key: SigningKey, *, id: str, seq: int, issued: int) -> Withdraw:
    pub = bytes(key.verify_key)
    w = Withdraw(pub, id, seq, issued, b"", _peer(pub))
    return dataclasses.replace(w, sig=sign(key, w.body()))


def decode_withdraw(data: bytes, *, peer: str | None = None) -> Withdraw:
    raw, f = wc.open_signed(data, "market withdraw", "withdraw", MAX_WITHDRAW_BYTES, peer)

    def read() -> Withdraw:
        w = Withdraw(f.bytes("provider", size=PUBKEY_LEN), wc.read_id(f, "id"),
                     f.int("seq", lo=0, hi=wc.U63), f.int("issued", lo=0, hi=wc.MAX_TIME),
                     f.bytes("sig", size=SIG_LEN))
        f.done()
        return w

    w = wc.malformed(read, peer=peer)
    wc.check_signed("market withdraw", raw, w.body(), w.provider, w.sig, peer)
    return dataclasses.replace(w, peer=_peer(w.provider))


@dataclass(frozen=True)
class Demand:
    customer: bytes
    id: str
    service: str
    constraints: str
    usage: tuple[tuple[str, int], ...]     # (unit, estimated quantity per replica), sorted
    budget: int                            # micro-units for all replicas
    replication: int
    issued: int
    deadline: int
    sig: bytes
    filter: Filter = field(default_factory=lambda: parse(""), compare=False, repr=False)
    peer: str = field(default="", compare=False)

    def body(self) -> dict[str, Any]:
        return {"v": wc.VERSION, "t": "demand", "customer": self.customer, "id": self.id,
                "service": self.service, "constraints": self.constraints,
                "usage": dict(self.usage), "budget": self.budget,
                "replication": self.replication, "issued": self.issued,
                "deadline": self.deadline}

    @property
    def demand_id(self) -> bytes:
        """BLAKE2b-256 of the signed body."""
        return digest(pack(self.body()))

    def encode(self) -> bytes:
        return pack({**self.body(), "sig": self.sig})

    def cost(self, offer: Offer) -> int | None:
        """What one replica costs at `offer`'s prices (None: the offer does not price a unit
        the demand uses)."""
        prices = dict(offer.prices)
        total = 0
        for unit, qty in self.usage:
            if qty == 0:
                continue
            p = prices.get(unit)
            if p is None:
                return None
            total += p * qty
        return total

    @property
    def per_replica_budget(self) -> int:
        return self.budget // self.replication


def sign_demand(key: SigningKey, *, id: str, service: str, constraints: str,
                usage: dict[str, int], budget: int, replication: int, issued: int,
                deadline: int) -> Demand:
    """A signed demand; ConstraintError if `constraints` does not parse (our caller's input)."""
    pub = bytes(key.verify_key)
    d = Demand(pub, id, service, constraints, tuple(sorted(usage.items())), budget, replication,
               issued, deadline, b"", parse(constraints), _peer(pub))
    return dataclasses.replace(d, sig=sign(key, d.body()))


def decode_demand(data: bytes, *, peer: str | None = None) -> Demand:
    """Decode and authenticate a demand; its filter is parsed here (a filter that does not
    parse is Rejected(MALFORMED) with the parser's position)."""
    raw, f = wc.open_signed(data, "market demand", "demand", MAX_DEMAND_BYTES, peer)

    def read() -> Demand:
        d = Demand(
            customer=f.bytes("customer", size=PUBKEY_LEN), id=wc.read_id(f, "id"),
            service=wc.read_service(f), constraints=f.str("constraints", max_len=MAX_LENGTH),
            usage=tuple(wc.read_units(f, "usage", wc.MAX_QUANTITY, allow_empty=False).items()),
            budget=f.int("budget", lo=1, hi=wc.U63),
            replication=f.int("replication", lo=1, hi=wc.MAX_REPLICATION),
            issued=f.int("issued", lo=0, hi=wc.MAX_TIME),
            deadline=f.int("deadline", lo=0, hi=wc.MAX_TIME),
            sig=f.bytes("sig", size=SIG_LEN))
        f.done()
        if d.deadline <= d.issued:
            f._fail("field 'deadline' is not after 'issued'")
        return d

    d = wc.malformed(read, peer=peer)
    try:
        flt = parse(d.constraints)
    except ConstraintError as e:
        raise Rejected(RejectReason.MALFORMED, f"market demand: field 'constraints': {e}",
                       peer=peer) from None
    wc.check_signed("market demand", raw, d.body(), d.customer, d.sig, peer)
    return dataclasses.replace(d, filter=flt, peer=_peer(d.customer))


@dataclass(frozen=True)
class Bid:
    provider: bytes
    demand: bytes           # the demand id
    offer: str              # the provider's offer id it bids from
    price: int              # micro-units for one replica
    seq: int
    issued: int
    valid_until: int
    sig: bytes
    peer: str = field(default="", compare=False)

    def body(self) -> dict[str, Any]:
        return {"v": wc.VERSION, "t": "bid", "provider": self.provider, "demand": self.demand,
                "offer": self.offer, "price": self.price, "seq": self.seq,
                "issued": self.issued, "valid_until": self.valid_until}

    @property
    def bid_id(self) -> bytes:
        return digest(pack(self.body()))

    def encode(self) -> bytes:
        return pack({**self.body(), "sig": self.sig})


def sign_bid(key: SigningKey, *, demand: bytes, offer: str, price: int, seq: int, issued: int,
             valid_until: int) -> Bid:
    pub = bytes(key.verify_key)
    b = Bid(pub, demand, offer, price, seq, issued, valid_until, b"", _peer(pub))
    return dataclasses.replace(b, sig=sign(key, b.body()))


def decode_bid(data: bytes, *, peer: str | None = None) -> Bid:
    raw, f = wc.open_signed(data, "market bid", "bid", MAX_BID_BYTES, peer)

    def read() -> Bid:
        b = Bid(f.bytes("provider", size=PUBKEY_LEN), f.bytes("demand", size=32),
                wc.read_id(f, "offer"), f.int("price", lo=0, hi=wc.U63),
                f.int("seq", lo=0, hi=wc.U63), f.int("issued", lo=0, hi=wc.MAX_TIME),
                f.int("valid_until", lo=0, hi=wc.MAX_TIME), f.bytes("sig", size=SIG_LEN))
        f.done()
        if b.valid_until <= b.issued:
            f._fail("field 'valid_until' is not after 'issued'")
        return b

    b = wc.malformed(read, peer=peer)
    wc.check_signed("market bid", raw, b.body(), b.provider, b.sig, peer)
    return dataclasses.replace(b, peer=_peer(b.provider))


def decode_offer_gossip(data: bytes, *, peer: str | None = None) -> Offer | Withdraw:
    """Decode a message of the offers topic: an offer or a withdrawal (by its "t" tag)."""
    if len(data) > MAX_OFFER_BYTES:
        raise Rejected(RejectReason.OVERSIZE, f"offers topic message is {len(data)} bytes, over "
                       f"{MAX_OFFER_BYTES}", peer=peer)
    raw = wc.malformed(unpack, data, max_size=MAX_OFFER_BYTES, what="offers topic message",
                       peer=peer)
    if not isinstance(raw, dict):
        raise Rejected(RejectReason.MALFORMED, f"offers topic message: expected a map, got "
                       f"{type(raw).__name__}", peer=peer)
    t = raw.get("t")
    if t == "withdraw":
        return decode_withdraw(data, peer=peer)
    if t == "offer":
        return decode_offer(data, peer=peer)
    raise Rejected(RejectReason.MALFORMED, f"offers topic: field 't' is {str(t)[:32]!r}, not "
                   "'offer' or 'withdraw'", peer=peer)
