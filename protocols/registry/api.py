"""What the registry offers other roles through `ctx.services`.

- "registry" -> `RegistryService`: devices matching criteria (fl picks peers, market matches
  offers), one device's record, liveness, and a DHT look-up for devices not in the view; the
  harvest role announces this device's harvest state through `set_harvest`.
- "reputation" -> `ReputationService`: `report_outcome(subject, service, ok, weight, evidence)`
  for roles that saw a peer serve (SLA kept, FL update accepted, relay served),
  `report_outcomes` for several at once (one gossip message), and `score(peer, service)`.
Both are thin views of the role, seen through `RegistryBackend` (what they call on it, so this
module does not import the role back); they never block except `fetch` and `lookup`.
"""
from __future__ import annotations

from typing import Protocol

from fognode.protocols.registry.core import RegistryCore
from fognode.protocols.registry.observation import ALL_SERVICES, Outcome
from fognode.protocols.registry.record import DeviceRecord, HarvestInfo
from fognode.protocols.registry.view import Criteria


class RegistryBackend(Protocol):
    """What the services call on the registry role (protocol.py `RegistryRole`)."""

    core: RegistryCore

    def set_harvest(self, harvest: HarvestInfo | None) -> None: ...

    def set_onion_cert(self, cert: bytes) -> None: ...

    async def fetch(self, peer_id: str) -> DeviceRecord | None: ...

    async def lookup(self, peer_id: str) -> DeviceRecord | None: ...

    def report_outcome(self, subject: str, service: str, ok: bool, weight: float,
                       evidence: bytes) -> None: ...

    def report_outcomes(self, outcomes: list[Outcome]) -> list[str]: ...


class RegistryService:
    def __init__(self, role: RegistryBackend) -> None:
        self._role = role

    def devices(self, criteria: Criteria | None = None) -> list[DeviceRecord]:
        """Known devices matching `criteria`, best reputation first."""
        return self._role.core.query(criteria or Criteria())

    def get(self, peer_id: str) -> DeviceRecord | None:
        return self._role.core.view.get(peer_id)

    def is_online(self, peer_id: str) -> bool:
        return self._role.core.liveness.is_online(peer_id)

    def set_harvest(self, harvest: HarvestInfo | None) -> None:
        """This device's harvest state (None: the harvest role stopped). Republishes the
        record at once when it changed materially, else it rides on the next republish.
        Never blocks; cheap enough to call on every harvest tick (a restarted registry then
        learns the state again)."""
        self._role.set_harvest(harvest)

    def set_onion_cert(self, cert: bytes) -> None:
        """Carry this relay's onion-key certificate (onionkey.py) in our record from now on;
        republishes at once when it changed. Never blocks."""
        self._role.set_onion_cert(cert)

    async def fetch(self, peer_id: str) -> DeviceRecord | None:
        """A connected peer's current record straight from it (direct stream), else the DHT;
        into the view when valid (awaits up to the direct timeout + `dht_timeout`)."""
        return await self._role.fetch(peer_id)

    async def lookup(self, peer_id: str) -> DeviceRecord | None:
        """The view's record, else a DHT look-up (awaits up to `dht_timeout`; None if not found)."""
        return await self._role.lookup(peer_id)


class ReputationService:
    def __init__(self, role: RegistryBackend) -> None:
        self._role = role

    def report_outcome(self, subject: str, service: str, ok: bool, weight: float = 1.0,
                       evidence: bytes = b"") -> None:
        """Record (and gossip) that `subject` served `service` well (`ok`) or badly.

        `weight` in (0, 100] says how much it counts (e.g. 1 per task, more for bigger jobs);
        `evidence` (<= 64 bytes) is an id of what proves it (a receipt or round id): the same
        evidence is counted once. Never blocks. Raises LocalProtocolError for an observation
        about this node itself, a bad name/weight/evidence, or over the node's own rate limit.
        """
        self._role.report_outcome(subject, service, ok, weight, evidence)

    def report_outcomes(self, outcomes: list[Outcome]) -> list[str]:
        """Several reports at once (`Outcome`: the fields of `report_outcome`), gossiped as
        one message (a batch, observation.py) instead of one each: an FL aggregator reports
        every participant of a round. Never blocks. Raises LocalProtocolError for a malformed
        one (nothing is recorded then); returns why each refused one was not recorded (over
        this node's own rate limit, its evidence already counted); the rest are recorded."""
        return self._role.report_outcomes(outcomes)

    def score(self, peer_id: str, service: str = ALL_SERVICES) -> float:
        """Relative global trust (1.0 = an average peer, 0.0 = nobody vouches for it)."""
        return self._role.core.reputation.score(peer_id, service)
