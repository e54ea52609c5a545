"""What the provider's two agreement streams share (trio): the WASM job stream (provider.py)
and the service-contract stream (sla_provider.py).

- `Stop`: the session ends; its reason goes to the customer in a `stop` frame.
- `first_cause`: the exception behind a nursery's exception group.
- `AgreementServer`: the provider's collaborators (key, config, ledger, contracts, metrics,
  event publisher, payee, clock), `open_agreement` (the stream's first frame must be a
  `hello` carrying a both-signed agreement) and `run_session` (run the stream's session,
  send `stop` with the reason of a `Stop`, save the contract at the end).
- `AgreementSession`: one stream under one agreement: serialised sends, the parties check
  (we are the provider, the stream's peer the customer), the wait for the customer's escrow
  on our ledger replica (`await_escrow`, with the stream's own terms check) and the "unpaid"
  breach when a debit request goes unanswered.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

import trio
from nacl.signing import SigningKey

from fognode.ledger.api import LedgerApi
from fognode.ledger.escrow import Escrow
from fognode.ledger.escrow_orders import DebitNote
from fognode.node.errors import FognodeError, RemoteProtocolError
from fognode.node.overlay import FramedStream
from fognode.protocols.market.agreement import Agreement, decode_negotiation
from fognode.protocols.market.config import MarketConfig
from fognode.protocols.market.contracts import Contract, Contracts
from fognode.protocols.market.events import SLABreach
from fognode.protocols.market.jobwire import Simple, simple
from fognode.protocols.market.metrics import MarketMetrics
from fognode.protocols.registry.peerid import peer_id_from_pubkey

ESCROW_POLL = 0.2


class Stop(Exception):
    """The session ends; `reason` goes to the customer in a `stop` frame."""


def first_cause(eg: BaseExceptionGroup) -> BaseException:
    """The first exception of a nursery's group that is not a cancellation (else the group)."""
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            e = first_cause(e)
        if not isinstance(e, (trio.Cancelled, BaseExceptionGroup)):
            return e
    return eg


class AgreementServer:
    """The provider side of one kind of agreement stream (see the module docstring)."""

    def __init__(self, *, key: SigningKey, config: MarketConfig,
                 ledger: Callable[[], LedgerApi | None], contracts: Contracts,
                 metrics: MarketMetrics, publish: Callable[[Any], None],
                 payee: Callable[[], bytes], clock: Callable[[], float]) -> None:
        self.key = key
        self.pubkey = bytes(key.verify_key)
        self.config = config
        self.ledger = ledger
        self.contracts = contracts
        self.metrics = metrics
        self.publish = publish
        self.payee = payee
        self.clock = clock

    @staticmethod
    def open_agreement(first: object, what: str, peer: str) -> Agreement:
        """The agreement of a stream's first message (decoded), which must be a `hello` with
        a both-signed agreement; RemoteProtocolError naming the stream (`what`) otherwise."""
        if not isinstance(first, Simple) or first.t != "hello":
            raise RemoteProtocolError(f"{what}: the first message must be hello", peer=peer)
        ag = decode_negotiation(first.agreement, peer=peer)
        if not isinstance(ag, Agreement):
            raise RemoteProtocolError(f"{what}: hello does not carry an agreement", peer=peer)
        return ag

    async def run_session(self, session: AgreementSession, run: Callable[[], Awaitable[None]],
                          stopped: Callable[[Contract, Stop], None]) -> None:
        """Run `run`; on a Stop, mark the contract (`stopped`) and tell the customer why (best
        effort, 2 s); at the end, stamp and save the contract (if the session has one)."""
        try:
            await run()
        except Stop as e:
            if session.contract is not None:
                stopped(session.contract, e)
            with trio.move_on_after(2):
                try:
                    await session.send(simple("stop", reason=str(e)[:200]))
                except (FognodeError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        finally:
            if session.contract is not None:
                session.contract.ended = self.clock()
                self.contracts.save(session.contract)


class AgreementSession:
    """One agreement stream at the provider (see the module docstring)."""

    requested: int               # the last due we asked for
    asked_at: float | None       # when (None: answered)
    note_ready: trio.Event       # set when a newer co-signed note is in

    def __init__(self, server: AgreementServer, s: FramedStream, ag: Agreement) -> None:
        self.server = server
        self.s = s
        self.ag = ag
        self.t = ag.terms
        self.aid = ag.agreement_id
        self.contract: Contract | None = None
        self.lock = trio.Lock()
        self.requested = 0
        self.asked_at = None
        self.note: DebitNote | None = None
        self.note_ready = trio.Event()
        self.escrow_customer: bytes = b""   # the wallet that opened the escrow signs the notes

    async def send(self, obj: dict[str, Any]) -> None:
        async with self.lock:
            await self.s.send(obj)

    def check_parties(self) -> None:
        """Stop unless the agreement names us as provider and the stream's peer as customer."""
        if self.t.provider != self.server.pubkey:
            raise Stop("the agreement names another provider")
        if peer_id_from_pubkey(self.t.customer) != self.s.remote_peer:
            raise Stop("the agreement's customer is not the stream's peer")

    async def await_escrow(self, ledger: LedgerApi, eid: bytes, payee: bytes,
                           fits: Callable[[Escrow], bool], mismatch: str) -> Escrow:
        """Wait (at most `escrow_wait` s) until our ledger replica holds escrow `eid`; Stop
        with `mismatch` unless it is this agreement's, open, payable to `payee` by the
        agreement's deadline and `fits` the stream's own terms. Returns the escrow."""
        with trio.move_on_after(self.server.config.escrow_wait):
            while True:
                e = ledger.escrow(eid)
                if e is not None:
                    if (e.payee != payee or e.agreement != self.aid or e.deadline != self.t.deadline
                            or e.closed or ledger.escrow_id(e.customer, self.aid) != eid
                            or not fits(e)):
                        raise Stop(mismatch)
                    self.escrow_customer = e.customer
                    return e
                await trio.sleep(ESCROW_POLL)
        raise Stop(f"escrow {eid.hex()[:16]} did not reach this provider's ledger within "
                   f"{self.server.config.escrow_wait:g} s")

    def check_unpaid(self, now: float) -> None:
        """Stop with an "unpaid" SLABreach when our last debit request is unanswered past
        `debit_deadline`."""
        if self.asked_at is not None and now - self.asked_at > self.server.config.debit_deadline:
            self.server.publish(SLABreach(self.aid.hex(), self.s.remote_peer, "unpaid",
                                          f"debit of {self.requested} unanswered"))
            self.server.metrics.breaches.labels("unpaid").inc()
            raise Stop(f"debit note for {self.requested} unpaid past its deadline")
