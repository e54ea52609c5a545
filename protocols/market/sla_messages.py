"""The wire of service contracts: the service stream and the SLA probe stream, with one
validating decoder each.

Service stream `/fognode/market/service/1.0.0` (customer opens it; msgpack maps as on the job
stream, jobwire.py, whose hello / payee / escrow / debit / note / stop / end it reuses)::

    C->P hello   {"agreement": <Agreement.encode()>}
    P->C payee   (jobwire.Payee, signed by the provider's identity)
    C->P escrow  {"escrow": <32>}        opened with the agreement's SLA terms (uptime, penalty,
                                          the customer as witness)
    P->C ready   {"collateral": <int>}   the provider locked the agreement's collateral
    P->C debit   {"due": <int>}          the pro-rata price of the time served so far
    C->P note    {"due", "sig"}          the customer's co-signed DebitNote
    C->P end / P->C stop {"reason"}

Probe stream `/fognode/market/probe/1.0.0` (one stream per probe, opened by the customer)::

    C->P probe {"v": 1, "t": "probe", "contract": <32>, "seq": <int>, "nonce": <16>}
    P->C pong  {"v": 1, "t": "pong", "contract": <32>, "seq": <int>, "nonce": <16>,
                "ok": <bool>, "sig": <provider signature over the map without sig>}

A pong answers one probe (same contract, seq and random nonce, so it cannot be prepared in
advance or replayed) and is signed by the provider's identity key: a kept pong proves to
anyone that the provider answered that probe. `ok` is False when the provider does not hold
the contract as running (the customer counts that as a failure).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import SIG_LEN, Fields, sign, verify
from fognode.protocols.market.jobwire import JobMessage, Simple, decode_job
from fognode.protocols.market.wirecommon import U63

SERVICE_PROTOCOL = "/fognode/market/service/1.0.0"
PROBE_PROTOCOL = "/fognode/market/probe/1.0.0"
VERSION = 1
NONCE = 16
MAX_FRAME = 16 * 1024
MAX_PROBE_FRAME = 512
_SERVICE_TAGS = frozenset({"hello", "payee", "escrow", "debit", "note", "stop", "end"})


@dataclass(frozen=True)
class Ready:
    collateral: int


@dataclass(frozen=True)
class Probe:
    contract: bytes
    seq: int
    nonce: bytes

    def wire(self) -> dict[str, Any]:
        return {"v": VERSION, "t": "probe", "contract": self.contract, "seq": self.seq, "nonce": self.nonce}


@dataclass(frozen=True)
class Pong:
    contract: bytes
    seq: int
    nonce: bytes
    ok: bool
    sig: bytes

    def body(self) -> dict[str, Any]:
        return {"v": VERSION, "t": "pong", "contract": self.contract, "seq": self.seq, "nonce": self.nonce,
                "ok": self.ok}

    def wire(self) -> dict[str, Any]:
        return {**self.body(), "sig": self.sig}

    def answers(self, probe: Probe, provider: bytes) -> bool:
        """This pong answers `probe`, says ok, and is signed by `provider`."""
        return (self.ok and self.contract == probe.contract and self.seq == probe.seq
                and self.nonce == probe.nonce and verify(provider, self.body(), self.sig))


def sign_pong(key: Any, probe: Probe, ok: bool) -> Pong:
    p = Pong(probe.contract, probe.seq, probe.nonce, ok, b"")
    return Pong(p.contract, p.seq, p.nonce, ok, sign(key, p.body()))


def decode_service(raw: Any, *, peer: str | None = None) -> JobMessage | Ready:
    """One service-stream frame (already unpacked); RemoteProtocolError naming the field."""
    f = Fields(raw, "market service message", versions={VERSION}, peer=peer)
    t = f.str("t", max_len=16)
    if t == "ready":
        r = Ready(f.int("collateral", lo=0, hi=U63))
        f.done()
        return r
    if t not in _SERVICE_TAGS:
        raise RemoteProtocolError(f"market service message: unknown type {t[:16]!r}", peer=peer)
    return decode_job(raw, peer=peer, max_blob=1024)


def decode_probe(raw: Any, *, peer: str | None = None) -> Probe:
    f = Fields(raw, "market probe", versions={VERSION}, peer=peer)
    if f.str("t", max_len=16) != "probe":
        f._fail("field 't' must be 'probe'")
    p = Probe(f.bytes("contract", size=32), f.int("seq", lo=0, hi=U63), f.bytes("nonce", size=NONCE))
    f.done()
    return p


def decode_pong(raw: Any, *, peer: str | None = None) -> Pong:
    f = Fields(raw, "market pong", versions={VERSION}, peer=peer)
    if f.str("t", max_len=16) != "pong":
        f._fail("field 't' must be 'pong'")
    ok = f.bool("ok")
    p = Pong(f.bytes("contract", size=32), f.int("seq", lo=0, hi=U63), f.bytes("nonce", size=NONCE), ok,
             f.bytes("sig", size=SIG_LEN))
    f.done()
    return p


__all__ = ["SERVICE_PROTOCOL", "PROBE_PROTOCOL", "Ready", "Probe", "Pong", "Simple", "sign_pong",
           "decode_service", "decode_probe", "decode_pong"]
