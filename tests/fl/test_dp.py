"""Central DP: RDP accountant against exact and published values, and the mechanism."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fognode.protocols.fl.privacy.dp import (
    DPConfig, DPStrategy, RdpAccountant, compute_rdp, epsilon_after, noise_for_epsilon,
    rdp_sampled_gaussian, rdp_to_epsilon)
from fognode.protocols.fl.strategies.base import ClientUpdate, StrategyConfigError, StrategyError
from fognode.protocols.fl.strategies.registry import make_strategy

F32 = np.float32


def test_rdp_without_subsampling_is_exactly_alpha_over_two_sigma_squared() -> None:
    for alpha in (2, 3, 10, 64):
        for sigma in (0.5, 1.0, 2.71828):
            assert rdp_sampled_gaussian(1.0, sigma, alpha) == alpha / (2 * sigma ** 2)
    # and the q -> 1 limit of the subsampled sum agrees with the closed form
    assert rdp_sampled_gaussian(1 - 1e-12, 2.0, 7) == pytest.approx(7 / 8, rel=1e-9)
    assert rdp_sampled_gaussian(0.0, 1.0, 5) == 0.0
    assert rdp_sampled_gaussian(0.5, 0.0, 5) == math.inf


def test_subsampled_gaussian_matches_tf_privacy_published_values() -> None:
    # dp_accounting (TF-Privacy) rdp_privacy_accountant_test.test_compute_rdp_poisson_sampled_
    # gaussian: q = 0.01, z = 2.5, 50 steps; integer orders 5, 50, 100.
    rdp = compute_rdp(0.01, 2.5, 50, [5, 50, 100])
    np.testing.assert_allclose(rdp, [2.18075656e-03, 2.38460375e-02, 1.67416308e02], rtol=1e-4)


def test_epsilon_conversion_matches_tf_privacy_pure_dp_case() -> None:
    # dp_accounting test_compute_epsilon_delta_pure_dp: constant RDP 1.1 on orders 2..32,
    # delta 1e-5 -> epsilon 1.32783806176 at order 32.
    orders = list(range(2, 33))
    eps, order = rdp_to_epsilon(orders, [1.1] * len(orders), 1e-5)
    assert eps == pytest.approx(1.32783806176, abs=1e-9)
    assert order == 32


def test_accountant_composes_rounds_additively() -> None:
    acc = RdpAccountant()
    assert acc.epsilon(1e-5) == 0.0
    for _ in range(10):
        acc.compose(1.1, 0.05)
    np.testing.assert_allclose(acc.rdp, compute_rdp(0.05, 1.1, 10, acc.orders))
    eps = acc.epsilon(1e-5)
    assert eps == pytest.approx(epsilon_after(10, 1.1, 0.05, 1e-5))
    assert 0 < eps < epsilon_after(10, 1.1, 1.0, 1e-5)          # subsampling amplifies
    assert epsilon_after(20, 1.1, 0.05, 1e-5) > eps               # more rounds, more spend
    assert epsilon_after(10, 2.0, 0.05, 1e-5) < eps               # more noise, less spend


def test_gaussian_q1_epsilon_by_hand() -> None:
    # q = 1, z = 4: RDP(a) = k a / 32; epsilon = min_a k a/32 + log(1 - 1/a) - log(delta a)/(a - 1)
    k, z, delta = 3, 4.0, 1e-5
    hand = min(k * a / (2 * z * z) + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
               for a in range(2, 65))
    assert epsilon_after(k, z, 1.0, delta, orders=range(2, 65)) == pytest.approx(hand, rel=1e-12)


def test_dp_strategy_clips_and_adds_calibrated_noise() -> None:
    d = 200_000
    cfg = DPConfig(clip_norm=1.0, noise_multiplier=2.0)
    s = DPStrategy(make_strategy("fedavg", {}), cfg, rng=np.random.default_rng(7))
    big = np.zeros(d, F32)
    big[0] = 10.0                                               # norm 10 -> clipped to 1
    ups = [ClientUpdate(f"p{i}", big, 100 * (i + 1)) for i in range(4)]
    res = s.aggregate(np.zeros(d, F32), ups)
    # mean of clipped updates is e_0; noise std on the average is z*C/n = 0.5
    noise = res.params.astype(np.float64).copy()
    noise[0] -= 1.0
    assert np.std(noise) == pytest.approx(0.5, rel=0.01)
    assert abs(np.mean(noise)) < 0.01
    assert res.weights == {f"p{i}": 0.25 for i in range(4)}      # sample counts ignored
    assert s.epsilon() == pytest.approx(epsilon_after(1, 2.0, 1.0, 1e-5))
    state = s.state_arrays()
    t = DPStrategy(make_strategy("fedavg", {}), cfg)
    t.load_state_arrays(state)
    assert t.epsilon() == s.epsilon()


def test_dp_strategy_secure_sum_path() -> None:
    cfg = DPConfig(clip_norm=1.0, noise_multiplier=1e-6)
    s = DPStrategy(make_strategy("fedadam", {}), cfg, rng=np.random.default_rng(1))
    vec, w = s.client_contribution(np.array([3.0, 4.0], F32), 500)
    np.testing.assert_allclose(vec, [0.6, 0.8], rtol=1e-6)
    assert w == 1.0
    ref = make_strategy("fedadam", {}).aggregate(np.zeros(2, F32), [ClientUpdate("a", np.array([0.6, 0.8], F32), 1)])
    res = s.aggregate_sum(np.zeros(2, F32), vec * 2, 2.0, ["a", "b"])
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-4)
    with pytest.raises(StrategyError, match="did not clip"):
        s.aggregate_sum(np.zeros(2, F32), np.array([30.0, 40.0]), 2.0, ["a", "b"])
    with pytest.raises(StrategyError, match="contributor count"):
        s.aggregate_sum(np.zeros(2, F32), vec, 7.0, ["a", "b"])


def test_dp_config_and_robust_inner_rejected() -> None:
    with pytest.raises(StrategyConfigError, match="mean-based"):
        DPStrategy(make_strategy("median", {}), DPConfig(1.0, 1.0))
    with pytest.raises(StrategyConfigError, match="noise_multiplier"):
        DPConfig(1.0, 0.0)
    with pytest.raises(StrategyConfigError, match="sampling_rate"):
        DPConfig(1.0, 1.0, sampling_rate=0.0)


def test_noise_for_epsilon_inverts_the_accountant() -> None:
    z = noise_for_epsilon(2.0, 50, 0.1, 1e-5)
    assert epsilon_after(50, z, 0.1, 1e-5) <= 2.0 < epsilon_after(50, z * 0.99, 0.1, 1e-5)
    assert noise_for_epsilon(1.0, 50, 0.1, 1e-5) > z
    with pytest.raises(StrategyConfigError, match="target epsilon"):
        noise_for_epsilon(0.0, 10, 1.0, 1e-5)
