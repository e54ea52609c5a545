"""FL wire pieces every FL message shares: the version, size limits and field decoders
(`peer_field`, `hash_field`, `number_map`, `finite`), and what a session asks for and who
may take part: `SessionSpec` with its `PrivacyOptions` and `SelectionCriteria`, and the
`DeviceFacts` a node opts in with. Each decoder raises RemoteProtocolError (through
`Fields`) naming the message and field. messages.py is the FL messages' entry point."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import DIGEST_LEN, PUBKEY_LEN, Fields

VERSION = 1
MAX_NAME = 64
MAX_PARAMS = 16
MAX_PARTICIPANTS = 256
MAX_CAPS = 32
MAX_PEER_ID = 128
MAX_REASON = 200

MAX_COORDINATORS = 16     # fallback coordinators an announcement may name

GOSSIP_TYPES = ("announce", "optin", "plan", "result", "failed", "ended", "silent")


def peer_field(f: Fields, key: str) -> str:
    v = f.str(key, max_len=MAX_PEER_ID)
    if not v:
        f._fail(f"field {key!r} must be a peer id")
    return v


def hash_field(f: Fields, key: str) -> bytes:
    return f.bytes(key, size=DIGEST_LEN)


def number_map(f: Fields, key: str, *, allow_str: bool = False) -> dict[str, Any]:
    raw = f.map(key, max_len=MAX_PARAMS)
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not 0 < len(k) <= MAX_NAME:
            f._fail(f"field {key!r}: bad parameter name {k!r}")
        if isinstance(v, bool) or (allow_str and isinstance(v, str) and len(v) <= MAX_NAME):
            out[k] = v
        elif isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = v
        else:
            f._fail(f"field {key!r}: parameter {k!r} must be a finite number")
    return out


@dataclass(frozen=True)
class SelectionCriteria:
    """Who may take part: empty region / capabilities and zero minimums mean "any"."""

    region: str = ""
    capabilities: tuple[str, ...] = ()
    min_reputation: float = 0.0
    charging_only: bool = False
    min_cores: int = 0
    min_memory_mb: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"region": self.region, "caps": list(self.capabilities),
                "min_rep": self.min_reputation, "charging": self.charging_only,
                "cores": self.min_cores, "mem": self.min_memory_mb}

    @classmethod
    def decode(cls, f: Fields) -> "SelectionCriteria":
        caps = f.list("caps", max_len=MAX_CAPS)
        if not all(isinstance(c, str) and 0 < len(c) <= MAX_NAME for c in caps):
            f._fail("field 'caps' must be a list of capability names")
        c = cls(region=f.str("region", max_len=MAX_NAME), capabilities=tuple(caps),
                min_reputation=f.float("min_rep", lo=0.0, hi=1.0),
                charging_only=f.bool("charging"), min_cores=f.int("cores", lo=0, hi=4096),
                min_memory_mb=f.int("mem", lo=0, hi=2**32))
        f.done()
        return c


@dataclass(frozen=True)
class PrivacyOptions:
    """Central DP (per-update clipping to `dp_clip`, Gaussian noise of std `dp_noise * dp_clip`
    on the aggregate, accounted at `dp_delta`; off when dp_clip == 0) and secure aggregation."""

    dp_clip: float = 0.0
    dp_noise: float = 0.0
    dp_delta: float = 1e-5
    secagg: bool = False

    @property
    def dp(self) -> bool:
        return self.dp_clip > 0

    def to_wire(self) -> dict[str, Any]:
        return {"clip": self.dp_clip, "noise": self.dp_noise, "delta": self.dp_delta,
                "secagg": self.secagg}

    @classmethod
    def decode(cls, f: Fields) -> "PrivacyOptions":
        p = cls(dp_clip=f.float("clip", lo=0.0, hi=1e6), dp_noise=f.float("noise", lo=0.0, hi=1e3),
                dp_delta=f.float("delta", lo=0.0, hi=0.5), secagg=f.bool("secagg"))
        f.done()
        return p


@dataclass(frozen=True)
class SessionSpec:
    """What the starter asks for (the `fl.start` parameters)."""

    task: str
    rounds: int
    min_participants: int
    participants: int                     # selected per round
    strategy: str = "fedavg"
    strategy_params: dict[str, Any] = field(default_factory=dict, hash=False)
    task_params: dict[str, Any] = field(default_factory=dict, hash=False)
    deadline: float = 30.0                # seconds per round attempt
    local_epochs: int = 1
    lr: float = 0.01
    batch_size: int = 10
    wire_dtype: str = "float32"
    fallbacks: int = 2                    # fallback aggregators after the elected one
    max_retries: int = 3                  # retries of a failed round before the session fails
    optin_seconds: float = 5.0            # how long the starter collects opt-ins before round 1
    reward_budget: int = 0                # micro-units for the whole session (0 = no rewards)
    privacy: PrivacyOptions = PrivacyOptions()
    criteria: SelectionCriteria = SelectionCriteria()
    hierarchical: bool = False            # regional aggregators, then a global one

    def to_wire(self) -> dict[str, Any]:
        # "hier" is on the wire only when set, so flat sessions encode as before
        return {**({"hier": True} if self.hierarchical else {}), "task": self.task, "rounds": self.rounds, "min": self.min_participants,
                "per_round": self.participants, "strategy": self.strategy,
                "sparams": self.strategy_params, "tparams": self.task_params,
                "deadline": self.deadline, "epochs": self.local_epochs, "lr": self.lr,
                "batch": self.batch_size, "dtype": self.wire_dtype, "fallbacks": self.fallbacks,
                "retries": self.max_retries, "optin": self.optin_seconds,
                "budget": self.reward_budget, "privacy": self.privacy.to_wire(),
                "criteria": self.criteria.to_wire()}

    @classmethod
    def decode(cls, f: Fields) -> "SessionSpec":
        spec = cls(
            task=f.str("task", max_len=MAX_NAME), rounds=f.int("rounds", lo=1, hi=100_000),
            min_participants=f.int("min", lo=1, hi=MAX_PARTICIPANTS),
            participants=f.int("per_round", lo=1, hi=MAX_PARTICIPANTS),
            strategy=f.str("strategy", max_len=MAX_NAME),
            strategy_params=number_map(f, "sparams"), task_params=number_map(f, "tparams"),
            deadline=f.float("deadline", lo=0.1, hi=86_400.0),
            local_epochs=f.int("epochs", lo=0, hi=10_000), lr=f.float("lr", lo=1e-9, hi=100.0),
            batch_size=f.int("batch", lo=1, hi=1 << 20), wire_dtype=f.str("dtype", max_len=16),
            fallbacks=f.int("fallbacks", lo=0, hi=16), max_retries=f.int("retries", lo=0, hi=100),
            optin_seconds=f.float("optin", lo=0.0, hi=3600.0),
            reward_budget=f.int("budget", lo=0, hi=2**63 - 1),
            privacy=PrivacyOptions.decode(f.sub("privacy")),
            criteria=SelectionCriteria.decode(f.sub("criteria")),
            hierarchical=f.bool("hier", optional=True, default=False),
        )
        f.done()
        spec.check()
        return spec

    def check(self) -> None:
        """Cross-field rules; RemoteProtocolError (a peer's announcement) naming the rule."""
        from fognode.protocols.fl.transfer.tensors import WIRE_DTYPES   # numpy: not at import (fl/loading.py)

        if self.wire_dtype not in WIRE_DTYPES:
            raise RemoteProtocolError(f"fl.SessionSpec: dtype {self.wire_dtype!r} is not one of {sorted(WIRE_DTYPES)}")
        if self.min_participants > self.participants:
            raise RemoteProtocolError(f"fl.SessionSpec: min participants {self.min_participants} "
                                      f"exceeds participants per round {self.participants}")


def finite(x: float) -> float:
    """NaN (nothing measured) travels as -1.0: wire floats must be finite."""
    return x if math.isfinite(x) else -1.0


@dataclass(frozen=True)
class DeviceFacts:
    """What a node says about itself when it opts in (the registry record wins when known)."""

    region: str = ""
    cores: int = 1
    memory_mb: int = 0
    charging: bool = True
    capabilities: tuple[str, ...] = ()
    wallet: bytes = b""           # ledger address rewards go to (empty: the identity key)

    def to_wire(self) -> dict[str, Any]:
        return {"region": self.region, "cores": self.cores, "mem": self.memory_mb,
                "charging": self.charging, "caps": list(self.capabilities),
                **({"wallet": self.wallet} if self.wallet else {})}

    @classmethod
    def decode(cls, f: Fields) -> "DeviceFacts":
        caps = f.list("caps", max_len=MAX_CAPS)
        if not all(isinstance(c, str) and 0 < len(c) <= MAX_NAME for c in caps):
            f._fail("field 'caps' must be a list of capability names")
        d = cls(region=f.str("region", max_len=MAX_NAME), cores=f.int("cores", lo=0, hi=1 << 16),
                memory_mb=f.int("mem", lo=0, hi=2**40), charging=f.bool("charging"),
                capabilities=tuple(caps),
                wallet=f.bytes("wallet", size=PUBKEY_LEN, optional=True, default=b""))
        f.done()
        return d
