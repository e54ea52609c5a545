"""The participant's side of secure aggregation (`SecAggParticipant`, one per client and
round): advertise keys, share its secrets with its neighbours, send its masked input, reveal
the shares the aggregator needs to unmask (steps 0-3 of secagg/core.py). Sans-IO: the caller
carries the messages (secagg/messages.py)."""
from __future__ import annotations

import enum
import os
from typing import Mapping

import numpy as np
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.wire import Fields, pack, sign, unpack, verify
from fognode.protocols.fl.secagg import shamir
from fognode.protocols.fl.secagg.config import (
    SECRET_LEN, SecAggConfig, check_round, commitment, pair_mask, self_mask)
from fognode.protocols.fl.secagg.messages import (
    ROUND_ID_LEN, AdvertiseKeys, EncryptedShares, KeyRoster, MaskedInput, Message, ShareBundle,
    UnmaskRequest, UnmaskShares)


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
        check_round(cfg, roster, "aggregator")
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
        check_round(cfg, bundle, "aggregator")
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
        check_round(cfg, req, "aggregator")
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
