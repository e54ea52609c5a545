"""Secure aggregation (Bonawitz et al., CCS 2017) with SecAgg+ neighbour graphs (Bell et al.,
CCS 2020), as sans-IO state machines: `SecAggParticipant` (one per client) and
`SecAggAggregator` (the round's aggregator). No I/O, no clocks: the caller carries messages
(`messages.py`) and passes the time to the aggregator.

Protocol (all traffic goes through the aggregator):
0. AdvertiseKeys: each participant u makes two X25519 key pairs (c_u for encrypting shares,
   s_u for mask agreement) and a 32-byte self-mask seed b_u, and sends c_u^PK, s_u^PK and a
   commitment BLAKE2b(b_u || round) (optionally signed with its node identity). The aggregator
   waits for everyone or the phase deadline; with fewer than t it fails.
1. ShareKeys: u Shamir-shares s_u^SK and b_u (threshold t) among its holders (itself and its
   graph neighbours) and sends each neighbour's shares in a NaCl box c_u -> c_v. The
   aggregator forwards the boxes; U2 = who sent shares.
2. MaskedInput: u quantises its vector into the ring (`masking.RingSpec`) and adds
   PRG(b_u) + sum over neighbours v in U2 of (+PRG(s_uv) if u < v else -PRG(s_uv)), where
   s_uv = X25519(s_u^SK, s_v^PK) hashed with the round id. U3 = whose masked vector arrived.
3. Unmasking: each survivor reveals, for each neighbour v in U2 (and itself), its share of b_v
   if v is in U3, or of s_v^SK if v dropped after step 1 - never both for the same v. With t
   shares per secret the aggregator removes the self masks of U3 and the pairwise masks that
   survivors formed with dropped peers; what is left is the exact sum of the quantised inputs.

Security model: honest-but-curious aggregator and up to t - 1 colluding participants learn
nothing but the sum over U3 (t > holders / 2 is enforced). Advertised keys may be signed with
the participants' Ed25519 identities (`verify_keys`), which stops an aggregator from swapping
keys; the consistency-check round of the actively secure variant is not implemented. The PRG is
ChaCha20 (cryptographic); shares use GF(2^521 - 1).

Robust aggregation rules need individual updates and therefore cannot consume this sum; see
`strategies.base.check_secagg_compatible`.

About 620 lines: the two state machines of one protocol and the key, mask and commitment
helpers they share; they are read together against the steps above.
"""
from __future__ import annotations

import enum
import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping, Sequence

import numpy as np
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.wire import Fields, pack, sign, unpack, verify
from fognode.protocols.fl.secagg import shamir
from fognode.protocols.fl.secagg.masking import RingSpec, derive_seed, expand_mask, harary_neighbours
from fognode.protocols.fl.secagg.messages import (
    ROUND_ID_LEN, AdvertiseKeys, EncryptedShares, KeyRoster, MaskedInput, Message, RosterEntry,
    ShareBundle, UnmaskRequest, UnmaskShares)

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


def _check_round(config: SecAggConfig, msg: Any, who: str | None) -> None:
    if msg.round_id != config.round_id:
        raise RemoteProtocolError(f"secagg {type(msg).__name__} is for another round", peer=who)


# --- participant ---------------------------------------------------------------------------

class ParticipantState(enum.Enum):
    NEW = "new"
    ADVERTISED = "advertised"
    SHARED = "shared"
    READY = "ready"          # shares received: can mask the input
    MASKED = "masked"
    DONE = "done"
    ABORTED = "aborted"


class SecAggParticipant:
    """One client's side. Methods raise RemoteProtocolError (the aggregator sent something
    wrong: the participant aborts) or LocalProtocolError (called out of order)."""

    def __init__(self, config: SecAggConfig, me: str, *, identity: SigningKey | None = None,
                 verify_keys: Mapping[str, bytes] | None = None) -> None:
        if me not in config.x_of:
            raise LocalProtocolError(f"{me} is not a participant of this secure aggregation")
        self.config = config
        self.me = me
        self.identity = identity
        self.verify_keys = verify_keys
        self.state = ParticipantState.NEW
        self._c = PrivateKey.generate()
        self._s = PrivateKey.generate()
        self._b = os.urandom(SECRET_LEN)
        self._advert: AdvertiseKeys | None = None
        self._roster: dict[str, AdvertiseKeys] = {}
        self._mask_peers: tuple[str, ...] = ()
        self._held: dict[str, tuple[shamir.Share, shamir.Share]] = {}   # owner -> (s share, b share)

    def _need(self, *states: ParticipantState) -> None:
        if self.state not in states:
            raise LocalProtocolError(f"secagg participant is {self.state.value}, expected "
                                     f"{' or '.join(s.value for s in states)}")

    def _abort(self, why: str) -> RemoteProtocolError:
        self.state = ParticipantState.ABORTED
        return RemoteProtocolError(f"secagg aborted: {why}", peer="aggregator")

    def advertise(self) -> AdvertiseKeys:
        """Round 0: this participant's public keys and self-mask commitment."""
        self._need(ParticipantState.NEW)
        cfg = self.config
        adv = AdvertiseKeys(cfg.round_id, bytes(self._c.public_key), bytes(self._s.public_key),
                            commitment(self._b, cfg.round_id))
        if self.identity is not None:
            adv = AdvertiseKeys(adv.round_id, adv.c_pk, adv.s_pk, adv.b_commit,
                                sign(self.identity, adv.signed_body(self.me)))
        self._advert = adv
        self.state = ParticipantState.ADVERTISED
        return adv

    def on_roster(self, roster: KeyRoster) -> EncryptedShares:
        """Round 1: check the roster and send each neighbour its shares of s_sk and b."""
        self._need(ParticipantState.ADVERTISED)
        cfg = self.config
        _check_round(cfg, roster, "aggregator")
        keys = {e.peer: e.keys for e in roster.entries}
        if keys.get(self.me) != self._advert:
            raise self._abort("the roster does not carry this participant's own keys")
        seen: set[bytes] = set()
        for peer, adv in keys.items():
            if peer not in cfg.x_of:
                raise self._abort(f"roster lists {peer}, who is not a participant")
            if adv.round_id != cfg.round_id:
                raise self._abort(f"roster keys of {peer} are for another round")
            if adv.c_pk in seen or adv.s_pk in seen or adv.c_pk == adv.s_pk:
                raise self._abort(f"roster keys of {peer} repeat another participant's keys")
            seen.update((adv.c_pk, adv.s_pk))
            if self.verify_keys is not None:
                vk = self.verify_keys.get(peer)
                if vk is None or not verify(vk, adv.signed_body(peer), adv.signature):
                    raise self._abort(f"roster keys of {peer} are not signed by {peer}")
        holders = cfg.holders_of[self.me]
        present = [p for p in sorted(holders) if p in keys]
        if len(present) < cfg.threshold:
            raise self._abort(f"only {len(present)} of this participant's share holders "
                              f"advertised keys, threshold {cfg.threshold}")
        self._roster = keys
        xs = [cfg.x_of[p] for p in present]
        s_shares = shamir.split(bytes(self._s), xs, cfg.threshold)
        b_shares = shamir.split(self._b, xs, cfg.threshold)
        cts = []
        for p, s_sh, b_sh in zip(present, s_shares, b_shares):
            if p == self.me:
                self._held[p] = (s_sh, b_sh)
                continue
            body = pack({"v": 1, "type": "secagg.share", "from": self.me, "to": p,
                         "round_id": cfg.round_id, "s_share": s_sh.y_bytes(), "b_share": b_sh.y_bytes()})
            box = Box(self._c, PublicKey(keys[p].c_pk))
            cts.append((p, bytes(box.encrypt(body))))
        self.state = ParticipantState.SHARED
        return EncryptedShares(cfg.round_id, tuple(sorted(cts)))

    def on_bundle(self, bundle: ShareBundle) -> None:
        """Round 1 result: decrypt the shares neighbours sent; they are the peers to mask with."""
        self._need(ParticipantState.SHARED)
        cfg = self.config
        _check_round(cfg, bundle, "aggregator")
        mine = cfg.x_of[self.me]
        for sender, ct in bundle.ciphertexts:
            if sender not in cfg.graph[self.me] or sender not in self._roster:
                raise self._abort(f"share bundle holds a box from {sender}, not a neighbour in the roster")
            try:
                plain = Box(self._c, PublicKey(self._roster[sender].c_pk)).decrypt(ct)
            except CryptoError:
                raise self._abort(f"the box from {sender} does not decrypt") from None
            f = Fields(unpack(plain, max_size=1024, what="secagg share"), "secagg.Share",
                       versions={1}, peer=sender)
            if f.str("type") != "secagg.share" or f.str("from") != sender or f.str("to") != self.me or \
                    f.bytes("round_id", size=ROUND_ID_LEN) != cfg.round_id:
                raise self._abort(f"the box from {sender} is addressed to another peer or round")
            s_sh = shamir.Share.from_bytes(mine, f.bytes("s_share", size=shamir.SHARE_BYTES))
            b_sh = shamir.Share.from_bytes(mine, f.bytes("b_share", size=shamir.SHARE_BYTES))
            f.done()
            self._held[sender] = (s_sh, b_sh)
        self._mask_peers = tuple(sorted(p for p, _ in bundle.ciphertexts))
        if len(self._mask_peers) + 1 < cfg.threshold:
            raise self._abort(f"only {len(self._mask_peers)} neighbours shared keys, threshold "
                              f"{cfg.threshold}")
        self.state = ParticipantState.READY

    def masked_input(self, x: np.ndarray) -> MaskedInput:
        """Round 2: quantise `x` (length `vector_length`, |x| <= max_abs) and mask it."""
        self._need(ParticipantState.READY)
        cfg = self.config
        if np.shape(x) != (cfg.vector_length,):
            raise LocalProtocolError(f"secagg input has shape {np.shape(x)}, expected ({cfg.vector_length},)")
        y = cfg.ring.quantize(x, cfg.max_abs)
        y = y + self_mask(self._b, cfg)
        s_sk = bytes(self._s)
        for v in self._mask_peers:
            m = pair_mask(s_sk, self._roster[v].s_pk, cfg)
            if self.me < v:
                y += m
            else:
                y -= m
        self.state = ParticipantState.MASKED
        return MaskedInput(cfg.round_id, y.astype(cfg.ring.dtype, copy=False).tobytes())

    def on_unmask_request(self, req: UnmaskRequest) -> UnmaskShares:
        """Round 3: reveal b-shares of survivors and s-shares of dropped neighbours, once."""
        self._need(ParticipantState.MASKED)
        cfg = self.config
        _check_round(cfg, req, "aggregator")
        survivors = set(req.survivors)
        if self.me not in survivors or not survivors <= set(cfg.participants):
            raise self._abort("the survivor list is not a subset of the participants containing this one")
        known = set(self._mask_peers) | {self.me}
        if len(survivors & known) < cfg.threshold:
            raise self._abort(f"only {len(survivors & known)} survivors among this participant's "
                              f"neighbours, threshold {cfg.threshold}")
        b_out, s_out = [], []
        for v in sorted(known):
            s_sh, b_sh = self._held[v]
            if v in survivors:
                b_out.append((v, b_sh.y_bytes()))
            else:
                s_out.append((v, s_sh.y_bytes()))
        self.state = ParticipantState.DONE
        return UnmaskShares(cfg.round_id, tuple(b_out), tuple(s_out))

    def receive(self, msg: Message) -> Message | None:
        """Dispatch an aggregator message; returns the reply to send, if any."""
        if isinstance(msg, KeyRoster):
            return self.on_roster(msg)
        if isinstance(msg, ShareBundle):
            self.on_bundle(msg)
            return None
        if isinstance(msg, UnmaskRequest):
            return self.on_unmask_request(msg)
        raise RemoteProtocolError(f"secagg participants do not accept {type(msg).__name__}",
                                  peer="aggregator")


# --- aggregator ----------------------------------------------------------------------------

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
        _check_round(cfg, msg, peer)
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
