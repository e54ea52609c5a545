"""This node's contracts (agreements in which it is the customer or the provider), kept in
memory and, when the table has a `ContractStore`, on disk (contract_store.py).

One `Contract` per agreement id, on either side: its terms, escrow, progress (tasks, fuel,
what is due and paid), the provider's latest co-signed debit note, a service contract's SLA
monitor (sla.py) and what was slashed, and its state::

    negotiated -> escrowed -> running -> done -> settled      (customer: refunded after the deadline)
                                      \\-> stopped | disputed | failed

`Contracts.save(c)` writes a contract's record before the node acts on it (the callers say
where); `Contracts.load()` reads them back at start, so a restarted customer still refunds
its escrows after their deadlines (and slashes proven SLA breaches) and a restarted provider
still pays out the notes it holds. The record is a versioned msgpack map of the fields below
with the terms as `pack(terms.body())`, checked again on load (agreement.decode_terms).

The table is bounded (`MAX_CONTRACTS`; the oldest finished contract goes first, file too).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fognode.ledger.amounts import format_amount
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import pack, unpack
from fognode.protocols.market.agreement import Terms, decode_terms
from fognode.protocols.market.contract_store import ContractStore
from fognode.protocols.market.sla import SlaMonitor
from fognode.protocols.registry.peerid import peer_id_from_pubkey

log = logging.getLogger("fognode.market")
RECORD_VERSION = 1

MAX_CONTRACTS = 10_000
FINISHED = ("settled", "stopped", "disputed", "failed", "done")


@dataclass
class Contract:
    id: bytes
    role: str                       # "customer" | "provider"
    terms: Terms
    created: float
    state: str = "negotiated"
    escrow: bytes | None = None
    payee: bytes | None = None
    tasks: int = 0
    fuel: int = 0
    due: int = 0                    # micro-units signed for (customer) / requested (provider)
    paid: int = 0                   # micro-units paid out of the escrow to the provider
    refunded: int | None = None
    detail: str = ""
    ended: float | None = None
    lied: bool = field(default=False)
    note_due: int = 0               # provider: the latest debit note the customer co-signed
    note_sig: bytes = b""
    collateral: int = 0             # service contracts: locked by the provider
    slashed: int = 0                # service contracts: taken from the collateral on breaches
    sla: SlaMonitor | None = None   # customer of a service contract: the probe account

    @property
    def service_contract(self) -> bool:
        return self.terms.service != "compute.wasm"

    @property
    def peer(self) -> str:
        other = self.terms.provider if self.role == "customer" else self.terms.customer
        return peer_id_from_pubkey(other)

    def view(self, paid: int | None = None) -> dict[str, Any]:
        """The contract for RPC; `paid`: what its escrow paid out as the ledger holds it, when
        the caller read it (this record of a customer learns it only at settlement)."""
        t = self.terms
        return {"id": self.id.hex(), "role": self.role, "peer": self.peer, "state": self.state,
                "service": t.service, "offer": t.offer, "prices": {u: format_amount(p) for u, p in t.prices},
                "max_total": format_amount(t.max_total), "deadline": t.deadline,
                "debit_interval": t.debit_interval, "escrow": self.escrow.hex() if self.escrow else None,
                "tasks": self.tasks, "fuel": self.fuel, "due": format_amount(self.due),
                "paid": format_amount(self.paid if paid is None else max(paid, self.paid)),
                "refunded": format_amount(self.refunded) if self.refunded is not None else None,
                "detail": self.detail, "noted": format_amount(self.note_due),
                "collateral": format_amount(self.collateral),
                "slashed": format_amount(self.slashed)}

    def to_record(self) -> bytes:
        return pack({"v": RECORD_VERSION, "id": self.id, "role": self.role,
                     "terms": pack(self.terms.body()), "created": self.created, "state": self.state,
                     "escrow": self.escrow, "payee": self.payee, "tasks": self.tasks, "fuel": self.fuel,
                     "due": self.due, "paid": self.paid, "refunded": self.refunded,
                     "detail": self.detail, "ended": self.ended, "lied": self.lied,
                     "note_due": self.note_due, "note_sig": self.note_sig,
                     "collateral": self.collateral, "slashed": self.slashed,
                     "sla": self.sla.to_record() if self.sla is not None else None})

    @classmethod
    def from_record(cls, data: bytes) -> "Contract":
        """Rebuild a stored contract; ValueError naming the problem if the record is not one."""
        try:
            r = unpack(data, max_size=1 << 20, what="market contract record")
            if not isinstance(r, dict) or r.get("v") != RECORD_VERSION:
                raise ValueError("not a version-1 contract record")
            terms = decode_terms(r["terms"], "market contract record terms")
            c = cls(bytes(r["id"]), str(r["role"]), terms, float(r["created"]), state=str(r["state"]),
                    escrow=r["escrow"], payee=r["payee"], tasks=int(r["tasks"]), fuel=int(r["fuel"]),
                    due=int(r["due"]), paid=int(r["paid"]), refunded=r["refunded"], detail=str(r["detail"]),
                    ended=r["ended"], lied=bool(r["lied"]), note_due=int(r["note_due"]),
                    note_sig=bytes(r["note_sig"]), collateral=int(r["collateral"]),
                    slashed=int(r["slashed"]))
            if r["sla"] is not None:
                c.sla = SlaMonitor.from_record(terms.sla, r["sla"])
        except (KeyError, TypeError, RemoteProtocolError) as e:
            raise ValueError(f"not a contract record: {e!r}") from None
        if c.id != terms.terms_id or c.role not in ("customer", "provider"):
            raise ValueError("the record's id is not its terms' hash, or its role is unknown")
        return c

    def row(self) -> dict[str, Any]:
        return {"id": self.id.hex()[:16], "role": self.role, "peer": self.peer[-12:],
                "state": self.state, "tasks": self.tasks, "paid": format_amount(self.paid),
                "max_total": format_amount(self.terms.max_total)}


class Contracts:
    def __init__(self, limit: int = MAX_CONTRACTS, store: ContractStore | None = None) -> None:
        self.limit = limit
        self.store = store
        self._by_id: dict[bytes, Contract] = {}

    def add(self, c: Contract) -> Contract:
        """Hold (and save) `c`, or return the contract already held under its id."""
        held = self._by_id.get(c.id)
        if held is not None:
            return held
        if len(self._by_id) >= self.limit:
            done = [k for k, v in self._by_id.items() if v.state in FINISHED]
            if done:
                del self._by_id[done[0]]
                if self.store is not None:
                    self.store.delete(done[0])
        self._by_id[c.id] = c
        self.save(c)
        return c

    def save(self, c: Contract) -> None:
        """Write `c`'s record (no-op without a store); ContractStoreError if the disk refuses."""
        if self.store is not None:
            self.store.write(c.id, c.to_record())

    def load(self) -> list[Contract]:
        """Read the stored contracts into the table (oldest first); returns them. Records that do
        not decode are moved aside (contract_store.py)."""
        if self.store is None:
            return []
        out = []
        for id, data in self.store.read_all():
            try:
                c = Contract.from_record(data)
                if c.id != id:
                    raise ValueError("the file name is not the record's id")
            except ValueError as e:
                self.store.quarantine(self.store.path(id), str(e))
                continue
            out.append(c)
        out.sort(key=lambda c: c.created)
        for c in out[-self.limit:]:
            self._by_id[c.id] = c
        return out[-self.limit:]

    def get(self, id: bytes) -> Contract | None:
        return self._by_id.get(id)

    def find(self, prefix: str) -> Contract | None:
        """The contract whose hex id starts with `prefix` (None: none or ambiguous)."""
        hits = [c for k, c in self._by_id.items() if k.hex().startswith(prefix.lower())]
        return hits[0] if len(hits) == 1 else None

    def all(self) -> list[Contract]:
        return sorted(self._by_id.values(), key=lambda c: c.created)

    def count(self) -> int:
        """How many contracts are held: `len(all())` without the sort (health_detail)."""
        return len(self._by_id)
