from __future__ import annotations

import numpy as np
import pytest

from fognode.protocols.registry.eigentrust import global_trust, global_trust_indexed, normalise


def dense_reference(n: int, s: np.ndarray, pre: list[int], alpha: float) -> np.ndarray:
    p = np.zeros(n)
    p[pre] = 1.0 / len(pre)
    c = np.clip(s, 0, None)
    np.fill_diagonal(c, 0)
    rs = c.sum(axis=1)
    C = np.where(rs[:, None] > 0, c / np.where(rs > 0, rs, 1)[:, None], p[None, :])
    t = p.copy()
    for _ in range(1000):
        t = (1 - alpha) * C.T @ t + alpha * p
    return t / t.sum()


def test_matches_dense_power_iteration() -> None:
    rng = np.random.default_rng(1)
    n = 60
    s = rng.normal(0.5, 1.0, (n, n)) * (rng.random((n, n)) < 0.2)
    s[5, :] = 0   # a peer that trusts nobody
    rows, cols = np.nonzero(s)
    t, it, res = global_trust_indexed(n, rows, cols, s[rows, cols], [0, 1, 2], alpha=0.2, eps=1e-12)
    assert res < 1e-12 and it < 200
    assert np.allclose(t, dense_reference(n, s, [0, 1, 2], 0.2), atol=1e-9)
    assert abs(t.sum() - 1.0) < 1e-12


def test_colluders_get_little_trust() -> None:
    # honest 0..9 trust each other; colluders 10..14 rate each other very highly
    n = 15
    rows, cols, vals = [], [], []
    for i in range(10):
        for j in range(10):
            if i != j:
                rows.append(i); cols.append(j); vals.append(1.0)
        rows.append(i); cols.append(10 + i % 5); vals.append(-5.0)   # bad experiences
    for i in range(10, 15):
        for j in range(10, 15):
            if i != j:
                rows.append(i); cols.append(j); vals.append(100.0)
    t, _, _ = global_trust_indexed(n, np.array(rows), np.array(cols), np.array(vals, float), [0, 1],
                                   alpha=0.15)
    assert t[10:].sum() < 1e-9 and t[:10].sum() > 0.999


def test_named_and_edge_cases() -> None:
    r = global_trust(["a", "b"], np.array([0]), np.array([1]), np.array([1.0]), ["z"])
    assert r.peers == ("a", "b", "z")            # pre-trusted peer added
    d = r.as_dict()
    assert d["z"] > 0 and abs(sum(d.values()) - 1) < 1e-9
    assert global_trust([], np.array([], int), np.array([], int), np.array([]), []).peers == ()
    u, _, _ = global_trust_indexed(3, np.array([], int), np.array([], int), np.array([]), [])
    assert np.allclose(u, 1 / 3)                 # no pre-trusted peers, no data: uniform
    with pytest.raises(ValueError):
        global_trust_indexed(2, np.array([0]), np.array([1]), np.array([1.0]), [], alpha=2.0)
    rr, cc, w, dangling = normalise(3, np.array([0, 0, 1]), np.array([1, 0, 2]), np.array([2.0, 5.0, -1.0]))
    assert list(w) == [1.0] and list(dangling) == [False, True, True]
