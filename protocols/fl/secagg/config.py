"""What the participants and the aggregator of one secure-aggregation round agree on
(`SecAggConfig`: round id, participants, threshold, SecAgg+ graph, ring) and the key, mask
and commitment helpers both sides of the protocol share (secagg/core.py describes the
protocol). Raises LocalProtocolError for an inconsistent config, RemoteProtocolError for a
peer's unusable key or a message of another round."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from nacl.bindings import crypto_scalarmult
from nacl.exceptions import CryptoError

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.protocols.fl.secagg.masking import RingSpec, derive_seed, expand_mask, harary_neighbours
from fognode.protocols.fl.secagg.messages import ROUND_ID_LEN

SECRET_LEN = 32
_PAIR, _SELF, _COMMIT = b"fognode-sa-pair", b"fognode-sa-self", b"fognode-sa-bcmt"


@dataclass(frozen=True)
class SecAggConfig:
    """What every participant and the aggregator of one round agree on beforehand (from the
    session announcement and round): raises LocalProtocolError when inconsistent."""

    round_id: bytes                    # 32 bytes, unique per session round
    participants: tuple[str, ...]      # selected peers (stored sorted)
    vector_length: int                 # ring elements per input
    threshold: int                     # t: shares needed to reconstruct a secret
    neighbours: int = 0                # SecAgg+ k (even); 0 = complete graph
    ring_bits: int = 64
    frac_bits: int = 24
    max_abs: float = 1e6               # bound on |x| of every input element

    def __post_init__(self) -> None:
        object.__setattr__(self, "participants", tuple(sorted(self.participants)))
        if len(self.round_id) != ROUND_ID_LEN:
            raise LocalProtocolError(f"secagg round_id must be {ROUND_ID_LEN} bytes")
        n = len(self.participants)
        if n < 2 or len(set(self.participants)) != n:
            raise LocalProtocolError("secagg needs at least 2 distinct participants")
        if self.vector_length < 1:
            raise LocalProtocolError("secagg vector_length must be >= 1")
        self.ring.check_capacity(n, self.max_abs)
        holders = min(len(h) for h in self.holders_of.values())
        if not (2 <= self.threshold <= holders and 2 * self.threshold > holders):
            raise LocalProtocolError(
                f"secagg threshold {self.threshold} must be in {holders // 2 + 1}..{holders} "
                f"(more than half of the {holders} share holders of each participant, and >= 2)")

    @cached_property
    def ring(self) -> RingSpec:
        return RingSpec(self.ring_bits, self.frac_bits)

    @cached_property
    def graph(self) -> dict[str, frozenset[str]]:
        return harary_neighbours(self.participants, self.neighbours, self.round_id)

    @cached_property
    def holders_of(self) -> dict[str, frozenset[str]]:
        """peer -> who holds shares of its secrets: itself and its neighbours."""
        return {p: nb | {p} for p, nb in self.graph.items()}

    @cached_property
    def x_of(self) -> dict[str, int]:
        """Shamir x coordinate of each participant."""
        return {p: i + 1 for i, p in enumerate(self.participants)}

    @property
    def input_bytes(self) -> int:
        return self.vector_length * self.ring.dtype.itemsize


def round_id_for(session_id: bytes, round_no: int, try_no: int) -> bytes:
    """The 32-byte secure-aggregation round id of one attempt of one session round (every
    participant derives the same one; masks and keys never carry over between attempts)."""
    body = session_id + round_no.to_bytes(8, "big") + try_no.to_bytes(8, "big")
    return hashlib.blake2b(body, digest_size=ROUND_ID_LEN, person=b"fognode-sa-round").digest()


def default_threshold(participants: int, neighbours: int = 0) -> int:
    """The smallest allowed threshold (a bare majority of each participant's share holders),
    which tolerates the most dropouts: holders - threshold of them per neighbourhood."""
    holders = participants if neighbours == 0 or neighbours >= participants - 1 else neighbours + 1
    return max(2, holders // 2 + 1)


def commitment(b: bytes, round_id: bytes) -> bytes:
    return hashlib.blake2b(b + round_id, digest_size=32, person=_COMMIT).digest()


def pair_mask(s_sk: bytes, other_s_pk: bytes, config: SecAggConfig) -> np.ndarray:
    """PRG(s_uv): the mask two peers derive from their X25519 agreement."""
    try:
        shared = crypto_scalarmult(s_sk, other_s_pk)
    except (CryptoError, RuntimeError, ValueError) as e:
        raise RemoteProtocolError(f"secagg: unusable X25519 key ({e})") from None
    return expand_mask(derive_seed(shared, config.round_id, _PAIR), config.vector_length, config.ring)


def self_mask(b: bytes, config: SecAggConfig) -> np.ndarray:
    return expand_mask(derive_seed(b, config.round_id, _SELF), config.vector_length, config.ring)


def with_weight(vector: np.ndarray, weight: float) -> np.ndarray:
    """The secure-sum input for a strategy contribution: the vector with its weight appended
    (so the total weight of the survivors comes out of the same sum)."""
    return np.append(np.asarray(vector, dtype=np.float64), np.float64(weight))


def split_weight(total: np.ndarray) -> tuple[np.ndarray, float]:
    """Inverse of `with_weight` on a sum: (vector sum, total weight)."""
    return total[:-1], float(total[-1])


def check_round(config: SecAggConfig, msg: Any, who: str | None) -> None:
    if msg.round_id != config.round_id:
        raise RemoteProtocolError(f"secagg {type(msg).__name__} is for another round", peer=who)
