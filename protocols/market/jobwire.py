"""The job stream `/fognode/market/job/1.0.0`: messages between a customer and a provider
under one agreement, with one validating decoder (`decode_job`).

The customer opens the stream; every frame is a msgpack map ``{"v": 1, "t": <type>, ...}``::

    C->P hello   {"agreement": <Agreement.encode() bytes>}
    P->C payee   {"agreement": <32>, "payee": <32-byte ledger account>, "sig": <provider identity
                  signature over the map without sig>}  (the account the escrow pays)
    C->P escrow  {"escrow": <32>}                       (opened on the ledger, certified)
    C->P blob    {"hash": <32>, "offset": <int>, "total": <int>, "data": <bytes <= CHUNK>}
    C->P task    {"index": <int>, "module": <32 hash>, "export": <str>, "args": [<int>],
                  "input": <32 hash> | nil, "fuel": <int>, "memory": <bytes>}
    P->C result  {"index", "status", "message", "output", "output_hash", "results", "fuel"}
    P->C debit   {"due": <int>}       cumulative micro-units owed (cost of the tasks reported)
    C->P note    {"due": <int>, "sig": <64>}  the customer's DebitNote (ledger/escrow_orders.py)
    C->P dispute {"reason": <str>}    the customer will not sign (a wrong result, a wrong due)
    C->P end     {}                   no more tasks
    C->P receipt {"receipt": <bytes>} the customer's signed harvest WorkReceipt for this job
                                      (receipts.py): validated with the tokens of its final
                                      note, or rejected before a dispute; credited by the
                                      provider's contribution ledger once paid
    P->C stop    {"reason": <str>}    the provider stops work (unpaid, no escrow, deadline)

Blobs are content-addressed: a task names its module and input by BLAKE2b-256; the provider
assembles a blob from its chunks (in order, at most `max_blob` bytes) and refuses one whose
hash differs. Cost of a task: ceil(fuel * price_per_million_fuel / 10^6) micro-units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import SIG_LEN, Fields, pack, sign, verify
from fognode.protocols.harvest.receipts import MAX_EVIDENCE
from fognode.protocols.harvest.wasm_wire import (MAX_ARGS, MAX_EXPORT_NAME, MAX_FUEL,
                                                 MAX_WASM_MEMORY, MIN_WASM_MEMORY)
from fognode.protocols.market.wirecommon import U63

JOB_PROTOCOL = "/fognode/market/job/1.0.0"
VERSION = 1
CHUNK = 1024 * 1024              # bytes of blob data per frame
MAX_FRAME = CHUNK + 64 * 1024
MAX_TASK_OUTPUT = 1024 * 1024    # bytes of output a task may return
MAX_MESSAGE = 256
MAX_INDEX = 10_000_000
FUEL_UNIT = 1_000_000            # offers price fuel per million


def task_cost(fuel: int, price_per_million: int) -> int:
    """Micro-units one task costs: fuel times the price per million, rounded up."""
    return -(-fuel * price_per_million // FUEL_UNIT)


@dataclass(frozen=True)
class Task:
    index: int
    module: bytes            # BLAKE2b-256 of the module
    export: str
    args: tuple[int, ...]
    input: bytes | None      # BLAKE2b-256 of the input bytes (the bytes ABI), or None
    fuel: int
    memory: int

    def wire(self) -> dict[str, Any]:
        return {"v": VERSION, "t": "task", "index": self.index, "module": self.module,
                "export": self.export, "args": list(self.args), "input": self.input,
                "fuel": self.fuel, "memory": self.memory}


@dataclass(frozen=True)
class Result:
    index: int
    status: str
    message: str
    output: bytes
    output_hash: bytes
    results: tuple[int, ...]
    fuel: int

    def wire(self) -> dict[str, Any]:
        return {"v": VERSION, "t": "result", "index": self.index, "status": self.status,
                "message": self.message, "output": self.output, "output_hash": self.output_hash,
                "results": list(self.results), "fuel": self.fuel}

    @property
    def vote(self) -> tuple[str, bytes, tuple[int, ...], int]:
        """What replicas must agree on: status, output hash, integer results and fuel."""
        return (self.status, self.output_hash, self.results, self.fuel)


@dataclass(frozen=True)
class Payee:
    agreement: bytes
    payee: bytes
    sig: bytes

    def body(self) -> dict[str, Any]:
        return {"v": VERSION, "t": "payee", "agreement": self.agreement, "payee": self.payee}

    def wire(self) -> dict[str, Any]:
        return {**self.body(), "sig": self.sig}

    def signed_by(self, provider: bytes) -> bool:
        return verify(provider, self.body(), self.sig)


def sign_payee(key: Any, agreement: bytes, payee: bytes) -> Payee:
    p = Payee(agreement, payee, b"")
    return Payee(agreement, payee, sign(key, p.body()))


@dataclass(frozen=True)
class Blob:
    hash: bytes
    offset: int
    total: int
    data: bytes


@dataclass(frozen=True)
class Simple:
    """hello / escrow / debit / note / dispute / end / stop / receipt: one tag and its few
    fields."""

    t: str
    agreement: bytes = b""       # hello: the encoded agreement
    escrow: bytes = b""
    due: int = 0
    sig: bytes = b""
    reason: str = ""
    receipt: bytes = b""         # receipt: a harvest WorkReceipt's bytes


JobMessage = Task | Result | Payee | Blob | Simple


def simple(t: str, **fields: Any) -> dict[str, Any]:
    return {"v": VERSION, "t": t, **fields}


def _ints(f: Fields, key: str, max_len: int) -> tuple[int, ...]:
    raw = f.list(key, max_len=max_len)
    if not all(isinstance(a, int) and not isinstance(a, bool) and -(2**63) <= a < 2**64
               for a in raw):
        f._fail(f"field {key!r} must be a list of 64-bit integers")
    return tuple(raw)


def decode_job(raw: Any, *, peer: str | None = None, max_blob: int = 16 * 1024 * 1024) -> JobMessage:
    """Decode one job-stream frame (already unpacked); RemoteProtocolError naming the field."""
    f = Fields(raw, "market job message", versions={VERSION}, peer=peer)
    t = f.str("t", max_len=16)
    m: JobMessage
    if t == "task":
        inp = f.raw.get("input")
        m = Task(f.int("index", lo=0, hi=MAX_INDEX), f.bytes("module", size=32),
                 f.str("export", max_len=MAX_EXPORT_NAME), _ints(f, "args", MAX_ARGS),
                 f.bytes("input", size=32) if inp is not None else None,
                 f.int("fuel", lo=1, hi=MAX_FUEL),
                 f.int("memory", lo=MIN_WASM_MEMORY, hi=MAX_WASM_MEMORY))
        f._seen.add("input")
    elif t == "result":
        m = Result(f.int("index", lo=0, hi=MAX_INDEX), f.str("status", max_len=32),
                   f.str("message", max_len=4 * MAX_MESSAGE),
                   f.bytes("output", max_len=MAX_TASK_OUTPUT), f.bytes("output_hash", size=32),
                   _ints(f, "results", MAX_ARGS), f.int("fuel", lo=0, hi=MAX_FUEL))
    elif t == "payee":
        m = Payee(f.bytes("agreement", size=32), f.bytes("payee", size=32),
                  f.bytes("sig", size=SIG_LEN))
    elif t == "blob":
        b = Blob(f.bytes("hash", size=32), f.int("offset", lo=0, hi=max_blob),
                 f.int("total", lo=1, hi=max_blob), f.bytes("data", max_len=CHUNK))
        if b.offset + len(b.data) > b.total:
            f._fail("blob chunk runs past its total")
        m = b
    elif t == "hello":
        m = Simple(t, agreement=f.bytes("agreement", max_len=8192))
    elif t == "escrow":
        m = Simple(t, escrow=f.bytes("escrow", size=32))
    elif t == "debit":
        m = Simple(t, due=f.int("due", lo=0, hi=U63))
    elif t == "note":
        m = Simple(t, due=f.int("due", lo=1, hi=U63), sig=f.bytes("sig", size=SIG_LEN))
    elif t in ("dispute", "stop"):
        m = Simple(t, reason=f.str("reason", max_len=MAX_MESSAGE))
    elif t == "end":
        m = Simple(t)
    elif t == "receipt":
        m = Simple(t, receipt=f.bytes("receipt", max_len=MAX_EVIDENCE))
    else:
        raise RemoteProtocolError(f"market job message: unknown type {t[:16]!r}", peer=peer)
    f.done()
    return m


def frame_size(obj: dict[str, Any]) -> int:
    return len(pack(obj))
