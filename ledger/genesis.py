"""The genesis document: what every replica of one network must agree on.

It lives in `<datadir>/genesis.json` (the node's genesis dict); the ledger owns its "ledger"
key. Amounts are integers in micro-units; accounts are `fog1...` addresses::

    {"ledger": {
        "v": 1,
        "chain_id": "fognode-dev",
        "genesis_time": 1767225600,        # unix seconds; epoch 0 starts here
        "epoch_length": 3600,              # seconds per epoch
        "balances": {"fog1...": 1000000000},
        "validators": [{"address": "fog1...", "stake": 1000000000}],
        "emission": {"initial_epoch_budget": 100000000, "halving_epochs": 8760,
                     "tail_epoch_budget": 1000000},
        "fee": 1000,                       # micro-units per order, at least
        "fee_destination": "burn",         # or "validators" (split by stake)
        "unbonding_epochs": 24,
        "uptime_reward_per_hour": 1000000, # the node-uptime receipt kind's rate
        "min_validator_stake": 1000000,    # optional: bonded stake needed to join a committee
        "max_validators": 100              # optional: committee size limit (largest stakes)
    }}

Validators' stake is bonded supply held by the validator's own account. The genesis validator
set certifies the first epochs; later committees are derived from bonded stake and certified
by the previous committee (committee.py). `min_validator_stake` and `max_validators` are
optional with the defaults below and appear in `to_dict` only when they differ from them, so
the genesis digest of a network created before they existed does not change.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping

from fognode.ledger.address import decode_address, encode_address
from fognode.ledger.amounts import MAX_AMOUNT
from fognode.ledger.errors import AddressError, GenesisError
from fognode.ledger.quorum import Committee

GENESIS_VERSION = 1
MAX_CHAIN_ID = 64
DEFAULT_MIN_VALIDATOR_STAKE = 1_000_000      # one token
DEFAULT_MAX_VALIDATORS = 100
MAX_COMMITTEE = 256                          # = messages.MAX_VOTES: a certificate must fit


class FeeDestination(enum.Enum):
    BURN = "burn"
    VALIDATORS = "validators"


@dataclass(frozen=True)
class EmissionSchedule:
    """Mint budget per epoch: `initial` halved every `halving_epochs` (0 = never), never below
    `tail`."""

    initial_epoch_budget: int
    halving_epochs: int
    tail_epoch_budget: int

    def budget(self, epoch: int) -> int:
        if epoch < 0:
            return 0
        b = self.initial_epoch_budget
        if self.halving_epochs > 0:
            halvings = epoch // self.halving_epochs
            b = b >> halvings if halvings < 64 else 0
        return max(b, min(self.tail_epoch_budget, self.initial_epoch_budget))


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time: int
    epoch_length: int
    balances: tuple[tuple[bytes, int], ...]      # sorted by key
    validators: tuple[tuple[bytes, int], ...]    # (pubkey, stake), sorted by key
    emission: EmissionSchedule
    fee: int
    fee_destination: FeeDestination
    unbonding_epochs: int
    uptime_reward_per_hour: int
    min_validator_stake: int = DEFAULT_MIN_VALIDATOR_STAKE
    max_validators: int = DEFAULT_MAX_VALIDATORS

    @property
    def committee(self) -> Committee:
        return Committee.of(dict(self.validators))

    def committee_for(self, epoch: int) -> Committee:
        """The genesis committee. Replicas ask `LedgerState.committee_for`, which uses the
        certified committee of the epoch (committee.py) and falls back to this one."""
        return self.committee

    def epoch_at(self, now: float) -> int:
        if now <= self.genesis_time:
            return 0
        return int((now - self.genesis_time) // self.epoch_length)

    def epoch_start(self, epoch: int) -> float:
        return float(self.genesis_time + epoch * self.epoch_length)

    def initial_supply(self) -> int:
        return sum(a for _, a in self.balances) + sum(s for _, s in self.validators)

    # -- encoding -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": GENESIS_VERSION,
            "chain_id": self.chain_id,
            "genesis_time": self.genesis_time,
            "epoch_length": self.epoch_length,
            "balances": {encode_address(k): a for k, a in self.balances},
            "validators": [{"address": encode_address(k), "stake": s} for k, s in self.validators],
            "emission": {
                "initial_epoch_budget": self.emission.initial_epoch_budget,
                "halving_epochs": self.emission.halving_epochs,
                "tail_epoch_budget": self.emission.tail_epoch_budget,
            },
            "fee": self.fee,
            "fee_destination": self.fee_destination.value,
            "unbonding_epochs": self.unbonding_epochs,
            "uptime_reward_per_hour": self.uptime_reward_per_hour,
            **({"min_validator_stake": self.min_validator_stake}
               if self.min_validator_stake != DEFAULT_MIN_VALIDATOR_STAKE else {}),
            **({"max_validators": self.max_validators} if self.max_validators != DEFAULT_MAX_VALIDATORS else {}),
        }

    @classmethod
    def from_node_genesis(cls, genesis: Mapping[str, Any]) -> "Genesis":
        """Parse the ledger section of a node's genesis dict (NodeContext.genesis)."""
        if not isinstance(genesis, Mapping) or "ledger" not in genesis:
            raise GenesisError("genesis.json has no 'ledger' section (chain id, validators, balances): "
                               "it was written by a fognode without the ledger; create the network's "
                               "genesis again (`fognode init` / `fognode devnet`)")
        return cls.from_dict(genesis["ledger"])

    @classmethod
    def from_dict(cls, d: Any) -> "Genesis":
        """Validate a ledger genesis dict; GenesisError names the offending field."""
        if not isinstance(d, Mapping):
            raise GenesisError("ledger genesis must be a JSON object")
        known = {"v", "chain_id", "genesis_time", "epoch_length", "balances", "validators",
                 "emission", "fee", "fee_destination", "unbonding_epochs", "uptime_reward_per_hour",
                 "min_validator_stake", "max_validators"}
        extra = sorted(set(d) - known)
        if extra:
            raise GenesisError(f"ledger genesis: unknown field(s) {extra}")
        if d.get("v") != GENESIS_VERSION:
            raise GenesisError(f"ledger genesis: version {d.get('v')!r} is not {GENESIS_VERSION}")
        chain_id = d.get("chain_id")
        if not isinstance(chain_id, str) or not (0 < len(chain_id) <= MAX_CHAIN_ID) or not chain_id.isprintable():
            raise GenesisError(f"ledger genesis: chain_id must be 1-{MAX_CHAIN_ID} printable characters")
        genesis_time = _int(d, "genesis_time", 0, 2**40)
        epoch_length = _int(d, "epoch_length", 1, 10**9)
        balances_raw = d.get("balances", {})
        if not isinstance(balances_raw, Mapping):
            raise GenesisError("ledger genesis: balances must map fog1 addresses to micro-units")
        balances: dict[bytes, int] = {}
        for addr, amount in balances_raw.items():
            key = _addr(addr, "balances")
            balances[key] = _amount(amount, f"balances[{addr}]")
        vals_raw = d.get("validators")
        if not isinstance(vals_raw, list) or not vals_raw:
            raise GenesisError("ledger genesis: validators must be a non-empty list")
        validators: dict[bytes, int] = {}
        for i, v in enumerate(vals_raw):
            if not isinstance(v, Mapping) or set(v) != {"address", "stake"}:
                raise GenesisError(f"ledger genesis: validators[{i}] must be {{address, stake}}")
            key = _addr(v["address"], f"validators[{i}].address")
            if key in validators:
                raise GenesisError(f"ledger genesis: validator {v['address']} is listed twice")
            stake = _amount(v["stake"], f"validators[{i}].stake")
            if stake == 0:
                raise GenesisError(f"ledger genesis: validators[{i}].stake must be positive")
            validators[key] = stake
        em = d.get("emission")
        if not isinstance(em, Mapping) or set(em) != {"initial_epoch_budget", "halving_epochs", "tail_epoch_budget"}:
            raise GenesisError("ledger genesis: emission must be {initial_epoch_budget, halving_epochs, tail_epoch_budget}")
        emission = EmissionSchedule(
            initial_epoch_budget=_amount(em["initial_epoch_budget"], "emission.initial_epoch_budget"),
            halving_epochs=_int(em, "halving_epochs", 0, 10**9, where="emission."),
            tail_epoch_budget=_amount(em["tail_epoch_budget"], "emission.tail_epoch_budget"),
        )
        fee = _amount(d.get("fee"), "fee")
        try:
            dest = FeeDestination(d.get("fee_destination"))
        except ValueError:
            raise GenesisError("ledger genesis: fee_destination must be 'burn' or 'validators'") from None
        g = cls(
            chain_id=chain_id,
            genesis_time=genesis_time,
            epoch_length=epoch_length,
            balances=tuple(sorted(balances.items())),
            validators=tuple(sorted(validators.items())),
            emission=emission,
            fee=fee,
            fee_destination=dest,
            unbonding_epochs=_int(d, "unbonding_epochs", 0, 10**6),
            uptime_reward_per_hour=_amount(d.get("uptime_reward_per_hour"), "uptime_reward_per_hour"),
            min_validator_stake=_amount(d.get("min_validator_stake", DEFAULT_MIN_VALIDATOR_STAKE),
                                        "min_validator_stake"),
            max_validators=_int({"max_validators": d.get("max_validators", DEFAULT_MAX_VALIDATORS)},
                                "max_validators", 1, MAX_COMMITTEE),
        )
        if len(validators) > MAX_COMMITTEE:
            raise GenesisError(f"ledger genesis: {len(validators)} validators, at most {MAX_COMMITTEE} fit a certificate")
        if g.initial_supply() > MAX_AMOUNT:
            raise GenesisError("ledger genesis: initial supply overflows 64 bits")
        return g


def _int(d: Mapping[str, Any], key: str, lo: int, hi: int, *, where: str = "") -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise GenesisError(f"ledger genesis: {where}{key} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _amount(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_AMOUNT:
        raise GenesisError(f"ledger genesis: {what} must be a non-negative integer of micro-units, got {v!r}")
    return v


def _addr(text: Any, what: str) -> bytes:
    try:
        return decode_address(text)
    except AddressError as e:
        raise GenesisError(f"ledger genesis: {what}: {e}") from None


DEV_FUNDING = 1000 * 10**6           # 1,000 tokens per funded wallet in a dev genesis
DEV_STAKE = 1000 * 10**6


def dev_genesis(chain_id: str, validators: list[tuple[bytes, int]], funded: dict[bytes, int],
                *, genesis_time: int | None = None) -> dict[str, Any]:
    """The ledger section of a development genesis (JSON-serialisable, keys as fog1 addresses).

    `validators`: (node identity public key, stake in micro-units); `funded`: (wallet public
    key -> micro-units). Epochs of an hour, a fee of 0.001 token burned, 100 tokens of mint
    budget per epoch, unbonding over 24 epochs, 1 token per hour of attested uptime.
    """
    import time as _time

    doc = {
        "v": GENESIS_VERSION,
        "chain_id": chain_id,
        "genesis_time": int(_time.time()) if genesis_time is None else genesis_time,
        "epoch_length": 3600,
        "balances": {encode_address(k): a for k, a in sorted(funded.items())},
        "validators": [{"address": encode_address(k), "stake": s} for k, s in sorted(validators)],
        "emission": {"initial_epoch_budget": 100 * 10**6, "halving_epochs": 0, "tail_epoch_budget": 0},
        "fee": 1000,
        "fee_destination": FeeDestination.BURN.value,
        "unbonding_epochs": 24,
        "uptime_reward_per_hour": 1 * 10**6,
    }
    Genesis.from_dict(doc)   # refuse to write what no node could read
    return doc
