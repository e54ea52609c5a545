"""This node's contracts (agreements in which it is the customer or the provider), in memory.

One `Contract` per agreement id, on either side: its terms, escrow, progress (tasks, fuel,
what is due and paid) and state::

    negotiated -> escrowed -> running -> done -> settled      (customer: refunded after the deadline)
                                      \\-> stopped | disputed | failed

The table is bounded (`MAX_CONTRACTS`; the oldest finished contract goes first). It is not
persisted: after a restart the ledger still holds every escrow (`ledger.escrows`), and the
payee can close an escrow the customer forgot after its grace period.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fognode.ledger.amounts import format_amount
from fognode.protocols.market.agreement import Terms
from fognode.protocols.registry.peerid import peer_id_from_pubkey

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

    @property
    def peer(self) -> str:
        other = self.terms.provider if self.role == "customer" else self.terms.customer
        return peer_id_from_pubkey(other)

    def view(self) -> dict[str, Any]:
        t = self.terms
        return {"id": self.id.hex(), "role": self.role, "peer": self.peer, "state": self.state,
                "service": t.service, "offer": t.offer, "prices": {u: format_amount(p) for u, p in t.prices},
                "max_total": format_amount(t.max_total), "deadline": t.deadline,
                "debit_interval": t.debit_interval, "escrow": self.escrow.hex() if self.escrow else None,
                "tasks": self.tasks, "fuel": self.fuel, "due": format_amount(self.due),
                "paid": format_amount(self.paid),
                "refunded": format_amount(self.refunded) if self.refunded is not None else None,
                "detail": self.detail}

    def row(self) -> dict[str, Any]:
        return {"id": self.id.hex()[:16], "role": self.role, "peer": self.peer[-12:],
                "state": self.state, "tasks": self.tasks, "paid": format_amount(self.paid),
                "max_total": format_amount(self.terms.max_total)}


class Contracts:
    def __init__(self, limit: int = MAX_CONTRACTS) -> None:
        self.limit = limit
        self._by_id: dict[bytes, Contract] = {}

    def add(self, c: Contract) -> Contract:
        held = self._by_id.get(c.id)
        if held is not None:
            return held
        if len(self._by_id) >= self.limit:
            done = [k for k, v in self._by_id.items() if v.state in FINISHED]
            if done:
                del self._by_id[done[0]]
        self._by_id[c.id] = c
        return c

    def get(self, id: bytes) -> Contract | None:
        return self._by_id.get(id)

    def find(self, prefix: str) -> Contract | None:
        """The contract whose hex id starts with `prefix` (None: none or ambiguous)."""
        hits = [c for k, c in self._by_id.items() if k.hex().startswith(prefix.lower())]
        return hits[0] if len(hits) == 1 else None

    def all(self) -> list[Contract]:
        return sorted(self._by_id.values(), key=lambda c: c.created)
