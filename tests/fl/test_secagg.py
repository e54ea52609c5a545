"""Secure aggregation: sums with 0 and threshold dropouts, clean failure below the threshold,
SecAgg+ graphs, Shamir sharing, message decoding, and misbehaviour on both sides."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.wire import pack, unpack
from fognode.protocols.fl.secagg import shamir
from fognode.protocols.fl.secagg.core import (
    Completed, Failed, Phase, SecAggAggregator, SecAggConfig, SecAggParticipant, Send,
    default_threshold, round_id_for, split_weight, with_weight)
from fognode.protocols.fl.secagg.masking import RingSpec, harary_neighbours
from fognode.protocols.fl.secagg.messages import (
    AdvertiseKeys, KeyRoster, MaskedInput, RosterEntry, UnmaskRequest, UnmaskShares,
    decode_message)
from fognode.protocols.fl.strategies.base import ClientUpdate
from fognode.protocols.fl.strategies.registry import make_strategy
from fognode.tools.bench.secagg_local import run_secagg_locally

PEERS = tuple(f"12D3KooPeer{i:02d}" for i in range(10))
RID = bytes(range(32))


def inputs_for(peers: tuple[str, ...], d: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {p: rng.standard_normal(d) * 3 for p in peers}


def tol(cfg: SecAggConfig, n: int) -> float:
    return n * 2.0 ** -(cfg.frac_bits + 1) + 1e-12


def completed(actions: list) -> Completed:
    assert len(actions) == 1 and isinstance(actions[0], Completed), actions
    return actions[0]


def test_masked_sum_equals_plain_sum_without_dropouts() -> None:
    cfg = SecAggConfig(RID, PEERS, 500, threshold=6)
    xs = inputs_for(PEERS, 500)
    res = completed(run_secagg_locally(cfg, xs)).result
    assert res.contributors == PEERS and res.dropped == ()
    np.testing.assert_allclose(res.total, np.sum(list(xs.values()), axis=0), rtol=0, atol=tol(cfg, 10))


@pytest.mark.parametrize("before_masking,before_unmasking", [(4, 0), (0, 4), (2, 2)])
def test_masked_sum_with_the_threshold_of_dropouts(before_masking: int, before_unmasking: int) -> None:
    cfg = SecAggConfig(RID, PEERS, 300, threshold=6)          # n - t = 4 may drop
    xs = inputs_for(PEERS, 300, seed=1)
    gone = PEERS[:before_masking]
    silent = PEERS[before_masking:before_masking + before_unmasking]
    res = completed(run_secagg_locally(cfg, xs, drop_before_masking=gone,
                                       drop_before_unmasking=silent)).result
    assert set(res.dropped) == set(gone)
    expected = np.sum([xs[p] for p in PEERS if p not in gone], axis=0)
    np.testing.assert_allclose(res.total, expected, rtol=0, atol=tol(cfg, 10))


def test_below_threshold_fails_cleanly() -> None:
    cfg = SecAggConfig(RID, PEERS, 50, threshold=6)
    xs = inputs_for(PEERS, 50)
    [fail] = run_secagg_locally(cfg, xs, drop_before_masking=PEERS[:5])
    assert isinstance(fail, Failed)
    assert "only 5 masked inputs arrived, threshold 6" in fail.reason
    [fail] = run_secagg_locally(cfg, xs, drop_before_unmasking=PEERS[:5])
    assert isinstance(fail, Failed) and "threshold 6" in fail.reason and "self mask" in fail.reason


def test_secagg_plus_neighbour_graph() -> None:
    peers = tuple(f"p{i:02d}" for i in range(20))
    g = harary_neighbours(peers, 6, RID)
    assert all(len(nb) == 6 and p not in nb for p, nb in g.items())
    assert all(p in g[q] for p, nb in g.items() for q in nb)                  # symmetric
    assert g == harary_neighbours(peers, 6, RID)                              # deterministic
    assert g != harary_neighbours(peers, 6, bytes(32))                        # per round
    assert harary_neighbours(peers, 0, RID)["p00"] == frozenset(peers) - {"p00"}
    with pytest.raises(LocalProtocolError, match="even"):
        harary_neighbours(peers, 5, RID)

    cfg = SecAggConfig(RID, peers, 200, threshold=5, neighbours=6)          # holders: 7
    xs = inputs_for(peers, 200, seed=2)
    parts = {p: SecAggParticipant(cfg, p) for p in peers}
    agg = SecAggAggregator(cfg, now=0.0)
    for p in peers:
        acts = agg.receive(p, parts[p].advertise(), 0.0)
    shares = parts[peers[0]].on_roster(next(a.message for a in acts if a.peer == peers[0]))
    assert len(shares.ciphertexts) == 6                                       # only neighbours
    # one dropout per neighbourhood at most two: pick peers far apart in the graph
    gone = ("p03",)
    res = completed(run_secagg_locally(cfg, xs, drop_before_masking=gone,
                                       drop_before_unmasking=("p11",))).result
    np.testing.assert_allclose(res.total, np.sum([xs[p] for p in peers if p not in gone], axis=0),
                               rtol=0, atol=tol(cfg, 20))
    # a whole neighbourhood silent: the self masks cannot be removed -> clean failure
    silent = tuple(sorted(g["p07"]))[:3]
    [fail] = run_secagg_locally(cfg, xs, drop_before_masking=silent)
    assert isinstance(fail, Failed)                  # p07 keeps 4 of its 7 share holders < 5
    assert "cannot remove the self mask" in fail.reason and "threshold 5" in fail.reason


def test_fedavg_through_secure_aggregation_matches_plain() -> None:
    d = 64
    rng = np.random.default_rng(4)
    ups = [ClientUpdate(p, rng.standard_normal(d).astype(np.float32) * 0.1, int(rng.integers(5, 500)))
           for p in PEERS]
    g = rng.standard_normal(d).astype(np.float32)
    strat = make_strategy("fedavg", {})
    cfg = SecAggConfig(RID, PEERS, d + 1, threshold=6)
    xs = {u.peer: with_weight(*strat.client_contribution(u.delta, u.num_samples)) for u in ups}
    gone = PEERS[:3]
    res = completed(run_secagg_locally(cfg, xs, drop_before_masking=gone)).result
    vec, weight = split_weight(res.total)
    survivors = [u for u in ups if u.peer not in gone]
    assert weight == pytest.approx(sum(u.num_samples for u in survivors))
    via_secagg = strat.aggregate_sum(g, vec, weight, res.contributors,
                                     num_samples={u.peer: u.num_samples for u in survivors})
    plain = make_strategy("fedavg", {}).aggregate(g, survivors)
    np.testing.assert_allclose(via_secagg.params, plain.params, rtol=1e-5, atol=1e-6)
    assert via_secagg.weights == pytest.approx(plain.weights)


def test_ring32_and_capacity() -> None:
    cfg = SecAggConfig(RID, PEERS[:5], 40, threshold=3, ring_bits=32, frac_bits=16, max_abs=100.0)
    xs = inputs_for(PEERS[:5], 40, seed=3)
    res = completed(run_secagg_locally(cfg, xs)).result
    np.testing.assert_allclose(res.total, np.sum(list(xs.values()), axis=0), atol=tol(cfg, 5))
    with pytest.raises(LocalProtocolError, match="ring too small"):
        SecAggConfig(RID, PEERS[:5], 40, threshold=3, ring_bits=32, frac_bits=16, max_abs=10_000.0)
    part = SecAggParticipant(cfg, PEERS[0])
    with pytest.raises(LocalProtocolError, match="above the bound"):
        RingSpec(32, 16).quantize(np.array([1e6]), 100.0)
    with pytest.raises(LocalProtocolError, match="expected ready"):
        part.masked_input(np.zeros(40))


def test_config_validation() -> None:
    with pytest.raises(LocalProtocolError, match="more than half"):
        SecAggConfig(RID, PEERS, 10, threshold=5)
    with pytest.raises(LocalProtocolError, match="more than half"):
        SecAggConfig(RID, PEERS, 10, threshold=11)
    with pytest.raises(LocalProtocolError, match="at least 2"):
        SecAggConfig(RID, PEERS[:1], 10, threshold=1)
    with pytest.raises(LocalProtocolError, match="round_id"):
        SecAggConfig(b"short", PEERS, 10, threshold=6)


def test_shamir_any_t_shares_reconstruct() -> None:
    secret = bytes(range(1, 33))
    shares = shamir.split(secret, [1, 2, 3, 4, 5], 3)
    for subset in itertools.combinations(shares, 3):
        assert shamir.combine(list(subset), 3, 32) == secret
    assert shamir.combine(shares, 3, 32) == secret
    # t - 1 shares interpolate to an unrelated value (with overwhelming probability)
    with pytest.raises(RemoteProtocolError, match="inconsistent"):
        shamir.combine(shares[:2], 2, 32)
    with pytest.raises(LocalProtocolError, match="need 3"):
        shamir.combine(shares[:2], 3, 32)
    with pytest.raises(LocalProtocolError, match="threshold"):
        shamir.split(secret, [1, 2], 3)
    with pytest.raises(LocalProtocolError, match="distinct"):
        shamir.split(secret, [1, 1, 2], 2)
    sh = shares[0]
    assert shamir.Share.from_bytes(sh.x, sh.y_bytes()) == sh
    with pytest.raises(RemoteProtocolError, match="outside the field"):
        shamir.Share.from_bytes(1, b"\xff" * shamir.SHARE_BYTES)


def test_messages_round_trip_and_reject_malformed() -> None:
    adv = AdvertiseKeys(RID, b"c" * 32, b"s" * 32, b"b" * 32, b"")
    msgs = [adv, KeyRoster(RID, (RosterEntry("a", adv),)), MaskedInput(RID, b"\x00" * 16),
            UnmaskRequest(RID, ("a", "b")), UnmaskShares(RID, (("a", b"1"),), (("b", b"2"),))]
    for m in msgs:
        assert decode_message(unpack(pack(m.to_wire()))) == m
    bad = adv.to_wire() | {"c_pk": b"short"}
    with pytest.raises(RemoteProtocolError, match="c_pk"):
        decode_message(bad, peer="x")
    with pytest.raises(RemoteProtocolError, match="unknown field"):
        decode_message(adv.to_wire() | {"extra": 1})
    with pytest.raises(RemoteProtocolError, match="unknown type"):
        decode_message({"type": "secagg.nope"})
    with pytest.raises(RemoteProtocolError, match="unknown version"):
        decode_message(adv.to_wire() | {"v": 9})
    with pytest.raises(RemoteProtocolError, match="both"):
        decode_message(UnmaskShares(RID, (("a", b"1"),), (("a", b"2"),)).to_wire())
    with pytest.raises(RemoteProtocolError, match="is not"):
        AdvertiseKeys.from_wire(MaskedInput(RID, b"").to_wire() | {"c_pk": b"c" * 32})


def _three() -> tuple[SecAggConfig, dict[str, SecAggParticipant], SecAggAggregator, list]:
    cfg = SecAggConfig(RID, PEERS[:3], 8, threshold=2)
    parts = {p: SecAggParticipant(cfg, p) for p in cfg.participants}
    agg = SecAggAggregator(cfg, now=0.0, phase_timeout=5.0)
    acts: list = []
    for p, part in parts.items():
        acts += agg.receive(p, part.advertise(), 0.0)
    return cfg, parts, agg, acts


def test_aggregator_rejects_misbehaviour_and_ignores_late_messages() -> None:
    cfg, parts, agg, acts = _three()
    assert agg.phase is Phase.SHARES and all(isinstance(a, Send) for a in acts)
    with pytest.raises(RemoteProtocolError, match="non-participant"):
        agg.receive("stranger", MaskedInput(RID, b""), 0.0)
    with pytest.raises(RemoteProtocolError, match="another round"):
        agg.receive(PEERS[0], MaskedInput(bytes(32), b""), 0.0)
    with pytest.raises(RemoteProtocolError, match="arrived in phase shares"):
        agg.receive(PEERS[0], MaskedInput(RID, b""), 0.0)
    assert agg.receive(PEERS[0], parts[PEERS[0]]._advert, 0.0) == []   # late: ignored
    shares = {p: parts[p].receive(a.message) for p, a in ((a.peer, a) for a in acts)}
    agg.receive(PEERS[0], shares[PEERS[0]], 1.0)
    with pytest.raises(RemoteProtocolError, match="second message"):
        agg.receive(PEERS[0], shares[PEERS[0]], 1.0)
    assert agg.tick(2.0) == []                      # before the deadline nothing happens
    acts = agg.tick(6.0)                            # deadline: PEERS[1], [2] are late...
    assert isinstance(acts[0], Failed) and "only 1 participants shared keys" in acts[0].reason
    assert agg.receive(PEERS[1], shares[PEERS[1]], 7.0) == []


def test_participant_refuses_tampering_and_second_unmask() -> None:
    cfg, parts, agg, acts = _three()
    p0 = PEERS[0]
    roster = next(a.message for a in acts if a.peer == p0)
    assert isinstance(roster, KeyRoster)
    forged = KeyRoster(RID, tuple(e if e.peer != p0 else RosterEntry(p0, AdvertiseKeys(
        RID, b"x" * 32, b"y" * 32, b"z" * 32)) for e in roster.entries))
    fresh = SecAggParticipant(cfg, p0)
    fresh.advertise()
    with pytest.raises(RemoteProtocolError, match="own keys"):
        fresh.on_roster(forged)
    # full happy path by hand, then a second unmask request is refused
    pending = list(acts)
    out: list = []
    while pending:
        a = pending.pop(0)
        if not isinstance(a, Send):
            out.append(a)
            continue
        reply = parts[a.peer].receive(a.message)
        if reply is not None:
            pending += agg.receive(a.peer, reply, 0.0)
        if parts[a.peer].state.value == "ready":
            pending += agg.receive(a.peer, parts[a.peer].masked_input(np.full(8, 0.5)), 0.0)
        if isinstance(a.message, UnmaskRequest) and a.peer == p0:
            with pytest.raises(LocalProtocolError, match="is done"):
                parts[p0].receive(a.message)
    res = completed(out).result
    np.testing.assert_allclose(res.total, np.full(8, 1.5), atol=1e-6)


def test_signed_keys_stop_key_substitution() -> None:
    ids = {p: SigningKey.generate() for p in PEERS[:3]}
    vks = {p: bytes(k.verify_key) for p, k in ids.items()}
    cfg = SecAggConfig(RID, PEERS[:3], 4, threshold=2)
    parts = {p: SecAggParticipant(cfg, p, identity=ids[p], verify_keys=vks) for p in cfg.participants}
    agg = SecAggAggregator(cfg, now=0.0, verify_keys=vks)
    advs = {p: part.advertise() for p, part in parts.items()}
    unsigned = SecAggParticipant(cfg, PEERS[1]).advertise()
    with pytest.raises(RemoteProtocolError, match="not signed"):
        agg.receive(PEERS[1], unsigned, 0.0)
    acts = []
    for p, adv in advs.items():
        acts += agg.receive(p, adv, 0.0)
    roster = next(a.message for a in acts if a.peer == PEERS[0])
    swapped = KeyRoster(RID, tuple(e if e.peer != PEERS[1] else RosterEntry(PEERS[1], unsigned)
                                   for e in roster.entries))
    with pytest.raises(RemoteProtocolError, match="not signed by"):
        parts[PEERS[0]].on_roster(swapped)
    assert parts[PEERS[0]].state.value == "aborted"


def test_bad_share_is_detected_not_summed() -> None:
    cfg, parts, agg, acts = _three()
    pending = list(acts)
    out: list = []
    while pending:
        a = pending.pop(0)
        if not isinstance(a, Send):
            out.append(a)
            continue
        reply = parts[a.peer].receive(a.message)
        if isinstance(reply, UnmaskShares):
            reply = UnmaskShares(RID, tuple((o, (int.from_bytes(d, "big") ^ 1).to_bytes(len(d), "big"))
                                            for o, d in reply.self_mask_shares), reply.key_shares)
        if reply is not None:
            pending += agg.receive(a.peer, reply, 0.0)
        if parts[a.peer].state.value == "ready":
            pending += agg.receive(a.peer, parts[a.peer].masked_input(np.ones(8)), 0.0)
    assert len(out) == 1 and isinstance(out[0], Failed) and "commitment" in out[0].reason


@settings(max_examples=12, deadline=None)
@given(st.sets(st.sampled_from(PEERS[:7]), max_size=4), st.sets(st.sampled_from(PEERS[:7]), max_size=4))
def test_any_dropout_pattern_sums_exactly_or_fails_cleanly(gone: set[str], silent: set[str]) -> None:
    peers = PEERS[:7]
    cfg = SecAggConfig(RID, peers, 20, threshold=4)
    xs = inputs_for(peers, 20, seed=len(gone) * 10 + len(silent))
    silent -= gone
    u3 = [p for p in peers if p not in gone]
    [out] = run_secagg_locally(cfg, xs, drop_before_masking=tuple(gone), drop_before_unmasking=tuple(silent))
    if len(u3) >= 4 and len(set(u3) - silent) >= 4:
        assert isinstance(out, Completed)
        np.testing.assert_allclose(out.result.total, np.sum([xs[p] for p in u3], axis=0), atol=tol(cfg, 7))
    else:
        assert isinstance(out, Failed) and "threshold 4" in out.reason


def test_round_ids_and_default_thresholds() -> None:
    sid = b"s" * 32
    assert round_id_for(sid, 1, 0) != round_id_for(sid, 1, 1) != round_id_for(sid, 2, 0)
    assert len(round_id_for(sid, 1, 0)) == 32
    assert default_threshold(10) == 6 and default_threshold(3) == 2
    assert default_threshold(100, neighbours=10) == 6
    SecAggConfig(RID, PEERS, 5, threshold=default_threshold(10))
    peers = tuple(f"p{i}" for i in range(30))
    SecAggConfig(RID, peers, 5, threshold=default_threshold(30, 8), neighbours=8)
