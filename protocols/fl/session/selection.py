"""Participant selection: which candidate devices train in a round.

Candidates are plain data (`DeviceCandidate`), built by the role from the registry's device
records when the registry service runs, else from the devices' own opt-in facts, with the
reputation service's score. A device whose harvest role announces it suspended (on battery,
too hot, paused by its operator...) is not eligible: `harvest_suspended` holds its reason
(this node's own comes from its harvest role directly). A device without a harvest role
(unknown) stays eligible, as before harvest existed. Selection is deterministic from the round seed: the eligible
candidates ordered by BLAKE2b(seed || peer id), the first `k` taken. Anyone holding the same
candidate list and seed gets the same participants.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from fognode.node.wire import digest, pack
from fognode.protocols.fl.messages import SelectionCriteria

DEFAULT_REPUTATION = 0.5


@dataclass(frozen=True)
class DeviceCandidate:
    peer: str
    region: str = ""
    cores: int = 1
    memory_mb: int = 0
    charging: bool = True
    online: bool = True
    reputation: float = DEFAULT_REPUTATION
    capabilities: tuple[str, ...] = ()
    harvest_suspended: str = ""      # why its harvest role suspends work ("": it may work)


def ineligibility(c: DeviceCandidate, criteria: SelectionCriteria) -> str | None:
    """Why `c` may not take part under `criteria`, or None when it may."""
    if not c.online:
        return "offline"
    if c.harvest_suspended:
        return f"harvest suspended ({c.harvest_suspended})"
    if criteria.region and c.region != criteria.region:
        return f"region {c.region or '(none)'} is not {criteria.region}"
    missing = sorted(set(criteria.capabilities) - set(c.capabilities))
    if missing:
        return f"missing capabilities {missing}"
    if c.reputation < criteria.min_reputation:
        return f"reputation {c.reputation:.3f} below {criteria.min_reputation:.3f}"
    if criteria.charging_only and not c.charging:
        return "not charging"
    if c.cores < criteria.min_cores:
        return f"{c.cores} cores, fewer than {criteria.min_cores}"
    if c.memory_mb < criteria.min_memory_mb:
        return f"{c.memory_mb} MiB memory, less than {criteria.min_memory_mb}"
    return None


def round_seed(session_id: bytes, round_no: int, try_no: int) -> bytes:
    """The seed of one try of a round (selection, election, local shuffles)."""
    return digest(pack({"session": session_id, "round": round_no, "try": try_no}))


def select_participants(candidates: Iterable[DeviceCandidate], criteria: SelectionCriteria,
                        k: int, seed: bytes) -> tuple[DeviceCandidate, ...]:
    """Up to `k` eligible candidates, in a pseudo-random order fixed by `seed`."""
    by_peer: dict[str, DeviceCandidate] = {}
    for c in candidates:
        if ineligibility(c, criteria) is None:
            by_peer.setdefault(c.peer, c)
    order = sorted(by_peer.values(), key=lambda c: (digest(seed + c.peer.encode()), c.peer))
    return tuple(order[:max(k, 0)])
