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

The protocol lives in three modules read against the steps above: config.py (the round's
agreed parameters and the key, mask and commitment helpers both sides share), participant.py
(`SecAggParticipant`) and aggregator.py (`SecAggAggregator`); this module is their one public
entry point.
"""
from __future__ import annotations

from fognode.protocols.fl.secagg.aggregator import (
    Action, Completed, Failed, Phase, SecAggAggregator, SecAggResult, Send)
from fognode.protocols.fl.secagg.config import (
    SECRET_LEN, SecAggConfig, commitment, default_threshold, pair_mask, round_id_for, self_mask,
    split_weight, with_weight)
from fognode.protocols.fl.secagg.participant import ParticipantState, SecAggParticipant

__all__ = ["SECRET_LEN", "Action", "Completed", "Failed", "ParticipantState", "Phase",
           "SecAggAggregator", "SecAggConfig", "SecAggParticipant", "SecAggResult", "Send",
           "commitment", "default_threshold", "pair_mask", "round_id_for", "self_mask",
           "split_weight", "with_weight"]
