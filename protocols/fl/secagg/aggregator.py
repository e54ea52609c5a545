"""The aggregator's side of secure aggregation (`SecAggAggregator`, one per round): collects
each phase's messages until every expected peer answered or the phase deadline, forwards
keys and encrypted shares, and recovers the exact sum of the survivors' inputs from the
unmasking shares (steps 0-3 of secagg/core.py). Sans-IO: the caller carries messages and
passes the time; outputs are `Send`, `Completed` and `Failed` actions."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from nacl.bindings import crypto_scalarmult_base

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import verify
from fognode.protocols.fl.secagg import shamir
from fognode.protocols.fl.secagg.config import (
    SECRET_LEN, SecAggConfig, check_round, commitment, pair_mask, self_mask)
from fognode.protocols.fl.secagg.messages import (
    AdvertiseKeys, EncryptedShares, KeyRoster, MaskedInput, Message, RosterEntry, ShareBundle,
    UnmaskRequest, UnmaskShares)


class Phase(enum.Enum):
    KEYS = "keys"
    SHARES = "shares"
    MASKED = "masked"
    UNMASK = "unmask"
    DONE = "done"
    FAILED = "failed"


_PHASE_OF = {AdvertiseKeys: Phase.KEYS, EncryptedShares: Phase.SHARES, MaskedInput: Phase.MASKED,
             UnmaskShares: Phase.UNMASK}
_ORDER = [Phase.KEYS, Phase.SHARES, Phase.MASKED, Phase.UNMASK, Phase.DONE]


@dataclass(frozen=True)
class Send:
    """Action: send `message` to `peer`."""
    peer: str
    message: Message


@dataclass(frozen=True)
class SecAggResult:
    total: np.ndarray                 # float64 sum of the survivors' inputs
    contributors: tuple[str, ...]     # U3: whose inputs are in the sum
    dropped: tuple[str, ...]          # participants whose inputs are not


@dataclass(frozen=True)
class Completed:
    """Action: the sum is known."""
    result: SecAggResult


@dataclass(frozen=True)
class Failed:
    """Action: the round cannot complete (too many dropouts or bad shares); nothing leaked."""
    reason: str


Action = Send | Completed | Failed


@dataclass
class _Collected:
    adverts: dict[str, AdvertiseKeys] = field(default_factory=dict)
    shares: dict[str, dict[str, bytes]] = field(default_factory=dict)      # sender -> to -> box
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    unmask: dict[str, UnmaskShares] = field(default_factory=dict)


class SecAggAggregator:
    """The aggregator's side: `receive(peer, msg, now)` and `tick(now)` return actions.

    Each phase ends when every expected peer answered or at its deadline (`phase_timeout`
    seconds after it began), whichever is first. Malformed or out-of-order messages raise
    RemoteProtocolError naming the peer (lower its score; the round goes on without it);
    messages for a phase already over are ignored (that peer counts as dropped).
    """

    def __init__(self, config: SecAggConfig, now: float, *, phase_timeout: float = 30.0,
                 verify_keys: Mapping[str, bytes] | None = None) -> None:
        self.config = config
        self.phase = Phase.KEYS
        self.phase_timeout = phase_timeout
        self.deadline = now + phase_timeout
        self.verify_keys = verify_keys
        self.got = _Collected()
        self.u1: tuple[str, ...] = ()
        self.u2: tuple[str, ...] = ()
        self.u3: tuple[str, ...] = ()
        self.result: SecAggResult | None = None
        self.failure: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.FAILED)

    # -- input --------------------------------------------------------------------------

    def receive(self, peer: str, msg: Message, now: float) -> list[Action]:
        if self.finished:
            return []
        cfg = self.config
        if peer not in cfg.x_of:
            raise RemoteProtocolError("secagg: message from a non-participant", peer=peer)
        msg_phase = _PHASE_OF.get(type(msg))
        if msg_phase is None:
            raise RemoteProtocolError(f"secagg aggregators do not accept {type(msg).__name__}", peer=peer)
        check_round(cfg, msg, peer)
        if _ORDER.index(msg_phase) < _ORDER.index(self.phase):
            return []      # late: that phase is over, the peer counts as dropped
        if msg_phase != self.phase:
            raise RemoteProtocolError(f"secagg {type(msg).__name__} arrived in phase "
                                      f"{self.phase.value}", peer=peer)
        if isinstance(msg, AdvertiseKeys):
            self._on_advert(peer, msg)
        elif isinstance(msg, EncryptedShares):
            self._on_shares(peer, msg)
        elif isinstance(msg, MaskedInput):
            self._on_masked(peer, msg)
        elif isinstance(msg, UnmaskShares):
            self._on_unmask(peer, msg)
        if len(self._received()) == len(self._expected()):
            return self._advance(now)
        return []

    def tick(self, now: float) -> list[Action]:
        """Close the current phase if its deadline passed."""
        if self.finished or now < self.deadline:
            return []
        return self._advance(now)

    def _expected(self) -> tuple[str, ...]:
        return {Phase.KEYS: self.config.participants, Phase.SHARES: self.u1,
                Phase.MASKED: self.u2, Phase.UNMASK: self.u3}.get(self.phase, ())

    def _received(self) -> dict[str, Any]:
        return {Phase.KEYS: self.got.adverts, Phase.SHARES: self.got.shares,
                Phase.MASKED: self.got.masked, Phase.UNMASK: self.got.unmask}.get(self.phase, {})

    def _duplicate(self, peer: str) -> None:
        if peer in self._received():
            raise RemoteProtocolError(f"secagg: second message in phase {self.phase.value}", peer=peer)
        if peer not in self._expected():
            raise RemoteProtocolError(f"secagg: not expected in phase {self.phase.value} "
                                      f"(dropped earlier)", peer=peer)

    def _on_advert(self, peer: str, msg: AdvertiseKeys) -> None:
        self._duplicate(peer)
        if self.verify_keys is not None:
            vk = self.verify_keys.get(peer)
            if vk is None or not verify(vk, msg.signed_body(peer), msg.signature):
                raise RemoteProtocolError("secagg: advertised keys are not signed by the sender", peer=peer)
        used = {k for a in self.got.adverts.values() for k in (a.c_pk, a.s_pk)}
        if msg.c_pk in used or msg.s_pk in used or msg.c_pk == msg.s_pk:
            raise RemoteProtocolError("secagg: advertised keys repeat other keys", peer=peer)
        self.got.adverts[peer] = msg

    def _on_shares(self, peer: str, msg: EncryptedShares) -> None:
        self._duplicate(peer)
        want = self.config.graph[peer] & set(self.u1)
        got = dict(msg.ciphertexts)
        if set(got) != want:
            raise RemoteProtocolError(f"secagg: shares must go to exactly its {len(want)} "
                                      f"neighbours in the roster", peer=peer)
        self.got.shares[peer] = got

    def _on_masked(self, peer: str, msg: MaskedInput) -> None:
        self._duplicate(peer)
        if len(msg.y) != self.config.input_bytes:
            raise RemoteProtocolError(f"secagg: masked input is {len(msg.y)} bytes, expected "
                                      f"{self.config.input_bytes}", peer=peer)
        self.got.masked[peer] = np.frombuffer(msg.y, dtype=self.config.ring.dtype)

    def _on_unmask(self, peer: str, msg: UnmaskShares) -> None:
        self._duplicate(peer)
        known = (self.config.graph[peer] & set(self.u2)) | {peer}
        u3 = set(self.u3)
        b_keys, s_keys = set(dict(msg.self_mask_shares)), set(dict(msg.key_shares))
        if b_keys != known & u3 or s_keys != known - u3:
            raise RemoteProtocolError("secagg: unmask shares do not match the survivors", peer=peer)
        x = self.config.x_of[peer]
        for _, data in msg.self_mask_shares + msg.key_shares:
            shamir.Share.from_bytes(x, data)      # validates
        self.got.unmask[peer] = msg

    # -- phase transitions -----------------------------------------------------------

    def _fail(self, reason: str) -> list[Action]:
        self.phase = Phase.FAILED
        self.failure = reason
        return [Failed(reason)]

    def _next(self, phase: Phase, now: float) -> None:
        self.phase = phase
        self.deadline = now + self.phase_timeout

    def _advance(self, now: float) -> list[Action]:
        cfg, t = self.config, self.config.threshold
        if self.phase is Phase.KEYS:
            self.u1 = tuple(sorted(self.got.adverts))
            if len(self.u1) < t:
                return self._fail(f"only {len(self.u1)} of {len(cfg.participants)} participants "
                                  f"advertised keys, threshold {t}")
            roster = KeyRoster(cfg.round_id, tuple(RosterEntry(p, self.got.adverts[p]) for p in self.u1))
            self._next(Phase.SHARES, now)
            return [Send(p, roster) for p in self.u1]
        if self.phase is Phase.SHARES:
            self.u2 = tuple(sorted(self.got.shares))
            if len(self.u2) < t:
                return self._fail(f"only {len(self.u2)} participants shared keys, threshold {t}")
            self._next(Phase.MASKED, now)
            out: list[Action] = []
            for v in self.u2:
                cts = tuple(sorted((u, self.got.shares[u][v]) for u in self.u2 if v in self.got.shares[u]))
                out.append(Send(v, ShareBundle(cfg.round_id, cts)))
            return out
        if self.phase is Phase.MASKED:
            self.u3 = tuple(sorted(self.got.masked))
            if len(self.u3) < t:
                return self._fail(f"only {len(self.u3)} masked inputs arrived, threshold {t}: "
                                  f"too many participants dropped out")
            problem = self._recoverable(set(self.u3))
            if problem:
                return self._fail(problem)
            self._next(Phase.UNMASK, now)
            req = UnmaskRequest(cfg.round_id, self.u3)
            return [Send(p, req) for p in self.u3]
        if self.phase is Phase.UNMASK:
            problem = self._recoverable(set(self.got.unmask))
            if problem:
                return self._fail(problem)
            try:
                total = self._unmask()
            except RemoteProtocolError as e:
                return self._fail(str(e))
            self.phase = Phase.DONE
            self.result = SecAggResult(cfg.ring.dequantize(total), self.u3,
                                       tuple(p for p in cfg.participants if p not in set(self.u3)))
            return [Completed(self.result)]
        return []

    def _recoverable(self, responders: set[str]) -> str | None:
        """Why the masks cannot be removed with shares from `responders`, or None."""
        cfg, t = self.config, self.config.threshold
        u2, u3 = set(self.u2), set(self.u3)
        for u in self.u3:
            have = len(cfg.holders_of[u] & u2 & responders)
            if have < t:
                return (f"cannot remove the self mask of {u}: {have} share holders answered, "
                        f"threshold {t}")
        for v in u2 - u3:
            if cfg.graph[v] & u3:
                have = len(cfg.graph[v] & u3 & responders)
                if have < t:
                    return (f"cannot remove the masks of dropped participant {v}: {have} share "
                            f"holders answered, threshold {t}")
        return None

    def _unmask(self) -> np.ndarray:
        cfg, t = self.config, self.config.threshold
        b_shares: dict[str, list[shamir.Share]] = {}
        s_shares: dict[str, list[shamir.Share]] = {}
        for holder, msg in sorted(self.got.unmask.items()):
            x = cfg.x_of[holder]
            for owner, data in msg.self_mask_shares:
                b_shares.setdefault(owner, []).append(shamir.Share.from_bytes(x, data))
            for owner, data in msg.key_shares:
                s_shares.setdefault(owner, []).append(shamir.Share.from_bytes(x, data))
        coeff_cache: dict[tuple[int, ...], list[int]] = {}

        def recover(shares: list[shamir.Share]) -> bytes:
            use = shares[:t]
            xs = tuple(s.x for s in use)
            if xs not in coeff_cache:
                coeff_cache[xs] = shamir.lagrange_at_zero(xs)
            return shamir.combine_with(coeff_cache[xs], [s.y for s in use], SECRET_LEN)

        total = np.zeros(cfg.vector_length, dtype=cfg.ring.dtype)
        for u in self.u3:
            total += self.got.masked[u]
        for u in self.u3:
            b = recover(b_shares.get(u, []))
            if commitment(b, cfg.round_id) != self.got.adverts[u].b_commit:
                raise RemoteProtocolError(f"the recovered self-mask seed of {u} does not match its "
                                          f"commitment: a share holder sent a bad share")
            total -= self_mask(b, cfg)
        u3 = set(self.u3)
        for v in sorted(set(self.u2) - u3):
            partners = sorted(cfg.graph[v] & u3)
            if not partners:
                continue
            s_sk = recover(s_shares.get(v, []))
            if crypto_scalarmult_base(s_sk) != self.got.adverts[v].s_pk:
                raise RemoteProtocolError(f"the recovered mask key of dropped participant {v} does "
                                          f"not match its public key: a share holder sent a bad share")
            for u in partners:
                m = pair_mask(s_sk, self.got.adverts[u].s_pk, cfg)
                if u < v:
                    total -= m      # u added +PRG(s_uv)
                else:
                    total += m
        return total
