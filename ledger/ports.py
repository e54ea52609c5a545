"""The narrow interfaces (typing.Protocol) the ledger engine's trio adapters are handed.

Each names exactly what one adapter needs of another, so that sync.py, certgossip.py and
submit.py can be read (and tested) without service.py, which builds them all and wires them
together. The committee rotation, lock handover and uptime adapters declare their own host
protocols next to them (`RotationHost`, `HandoverHost`, `UptimeHost`), built from these.
"""
from __future__ import annotations

from typing import Any, Protocol

from fognode.ledger.committee import CommitteeCertificate
from fognode.ledger.errors import LedgerStorageFailed
from fognode.ledger.genesis import Genesis
from fognode.ledger.messages import Certificate, Rejection, SignedOrder, Vote
from fognode.ledger.settings import Settings
from fognode.ledger.state import Delta, LedgerState
from fognode.node.role import NodeContext

MAX_REPLY = 64 * 1024      # bytes of one order-stream reply, unless the request says otherwise


class EngineView(Protocol):
    """The engine's shared parts every adapter reads (service.py `LedgerService`)."""

    @property
    def ctx(self) -> NodeContext: ...
    @property
    def genesis(self) -> Genesis: ...
    @property
    def state(self) -> LedgerState: ...
    @property
    def me(self) -> bytes: ...
    @property
    def s(self) -> Settings: ...


class Applier(Protocol):
    """The replica's apply path (service.py): verify, apply and write certificates."""

    @property
    def failure(self) -> LedgerStorageFailed | None:
        """Set once a store write failed: the ledger takes no more work."""

    def serving(self) -> bool:
        """Whether network requests may be served (no store failure, not stopped)."""

    def ingest(self, peer: str, certs: list[Certificate], *, via: str = "ledger") -> tuple[list[Delta], bool]:
        """Apply `certs` ahead of the disk and submit them to the group-commit writer:
        (deltas applied, whether any is waiting). They are durable after `flushed()`."""

    async def flushed(self) -> None:
        """Wait until everything submitted to the writer so far is durable."""

    def note_cursor(self, peer: str, position: int) -> None:
        """Record how far `peer`'s apply log was read (in the writer's open group)."""


class Validating(Applier, Protocol):
    """The engine as an order's client needs it (submit.py): its own validator's answer."""

    def check_usable(self) -> None:
        """Raise LedgerStorageFailed once the store failed."""

    def validate(self, peer: str, so: SignedOrder) -> list[Vote | Rejection]:
        """This node's validator's vote or rejection (its lock in the writer's open group:
        nothing built on it leaves before `flushed()`)."""

    async def persist_inflight(self, so: SignedOrder) -> None:
        """Record this node's order in flight; returns once durable."""

    def forget_inflight(self, sender: bytes) -> None:
        """Clear the sender's in-flight record (in the writer's open group)."""


class Publisher(Protocol):
    """Gossip a certificate this node formed (certgossip.py `CertGossip`)."""

    def publish_later(self, cert: Certificate) -> None: ...


class Requester(Protocol):
    """Ask one validator over its order stream (order_streams.py `OrderStreams`)."""

    async def request(self, validator: bytes, peer: str, request: dict[str, Any] | bytes,
                      max_reply: int = MAX_REPLY, *, deadline: float | None = None) -> Any: ...

    def in_flight(self, validator: bytes) -> int:
        """Requests sent to `validator` that wait for their replies."""
        ...


class CommitteeExchange(Protocol):
    """Committee certificates carried on the certificate topic and the sync stream
    (committee_service.py `CommitteeRotation`)."""

    def decode_list(self, raw: list[Any], peer: str) -> list[CommitteeCertificate]: ...

    def add(self, peer: str, certs: list[CommitteeCertificate]) -> list[CommitteeCertificate]: ...

    def serve(self, after: int) -> list[Any]: ...


class SyncTrigger(Protocol):
    """Start a sync with a peer in the background (sync.py `LedgerSync`)."""

    def sync_soon(self, peer: str) -> None: ...
