"""The round's update matrix (strategies/matrix.py): rows leased to transfers, taken over by a
retried stream, released on failure, committed without a copy, sealed into one prefix; the
tensor decoder writing straight into a row; every strategy giving over the sealed rows what
it gives over separate arrays; and a simulated round aggregating over its matrix."""
from __future__ import annotations

import numpy as np
import pytest

from fognode.protocols.fl.privacy.dp import DPConfig, DPStrategy
from fognode.protocols.fl.strategies.base import ClientUpdate, StrategyError
from fognode.protocols.fl.strategies.fedavg import weighted_sum
from fognode.protocols.fl.strategies.matrix import UpdateMatrix, sealed_updates, stacked_rows
from fognode.protocols.fl.strategies.registry import make_strategy
from fognode.protocols.fl.transfer.tensors import (
    MIN_CHUNK_SIZE, TensorDecoder, TensorRejected, encode_tensor)

from tests.fl.harness import Sim
from tests.fl.test_session import run, spec


def shares_memory(a: np.ndarray, b: np.ndarray) -> bool:
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0]


def test_rows_are_leased_lowest_first_and_a_retried_stream_takes_its_row_over() -> None:
    m = UpdateMatrix(3, 4)
    a, b = m.lease("a"), m.lease("b")
    assert (a.index, b.index) == (0, 1) and a.lost() is None
    a2 = m.lease("a")                          # the same peer streams again
    assert a2.index == 0 and a.lost() == "superseded" and a2.lost() is None
    a.release()                                # the old stream's failure frees nothing
    assert m.lease("c").index == 2
    b.release()                                # a failed transfer frees its row
    assert m.lease("d").index == 1
    with pytest.raises(StrategyError, match="taken"):
        m.lease("e")                           # more peers than the round has


def test_commit_keeps_a_streamed_row_and_copies_anything_else() -> None:
    m = UpdateMatrix(2, 3)
    lease = m.lease("a")
    lease.row[:] = [1.0, 2.0, 3.0]
    kept = m.commit("a", lease.row)
    assert shares_memory(kept, lease.row) and lease.lost() == "superseded"
    own = np.array([4.0, 5.0, 6.0], dtype=np.float32)   # e.g. the aggregator's own update
    row = m.commit("b", own)
    assert not shares_memory(row, own) and np.array_equal(row, own)
    with pytest.raises(StrategyError):
        m.commit("a", own)                     # one update per peer
    with pytest.raises(StrategyError):
        m.lease("a")


def test_seal_moves_the_committed_rows_into_one_prefix_and_stops_open_streams() -> None:
    m = UpdateMatrix(5, 2)
    leases = {p: m.lease(p) for p in "abcde"}
    for i, p in enumerate("abcde"):
        leases[p].row[:] = [i, 10 * i]
    leases["a"].release()                      # a failed transfer: a hole at row 0
    for p in "cde":
        m.commit(p, leases[p].row)
    # b is still streaming when the round aggregates
    peers, rows = m.seal()
    assert peers == ("d", "e", "c") and rows.shape == (3, 2)
    assert rows.tolist() == [[3, 30], [4, 40], [2, 20]]       # d and e filled the holes
    assert leases["b"].lost() == "round closed"
    assert stacked_rows(list(rows)) is not None
    with pytest.raises(StrategyError, match="sealed"):
        m.lease("a")
    m.close()
    assert m.closed and leases["b"].lost() == "round closed"


def test_sealed_updates_keep_their_metadata_in_row_order() -> None:
    m = UpdateMatrix(3, 4)
    held = {}
    for i, p in enumerate(("x", "y")):
        row = m.commit(p, np.full(4, i, dtype=np.float32))
        held[p] = ClientUpdate(p, row, 5 + i, loss=0.5 * i)
    ups = sealed_updates(m, held)
    assert [(u.peer, u.num_samples, u.loss) for u in ups] == [("x", 5, 0.0), ("y", 6, 0.5)]
    assert stacked_rows([u.delta for u in ups]) is not None


def test_stacked_rows_only_for_consecutive_rows_of_one_matrix() -> None:
    a = np.arange(20, dtype=np.float32).reshape(4, 5)
    assert stacked_rows(list(a[1:3])).shape == (2, 5)
    assert shares_memory(stacked_rows(list(a[1:3])), a[1])
    assert stacked_rows([a[0], a[2]]) is None                    # not consecutive
    assert stacked_rows([a[1], a[0]]) is None                    # not in order
    assert stacked_rows([a[0], a[1].copy()]) is None             # not one matrix
    assert stacked_rows(list(a.astype(np.float64))) is None       # not float32
    assert stacked_rows([a[0, :4], a[1, :4]]) is None             # not back to back
    assert stacked_rows([a[:, 0]]) is None                         # not contiguous
    assert not stacked_rows(list(a[1:3])).flags.writeable
    assert stacked_rows([]) is None


@pytest.mark.parametrize("wire_dtype", ["float32", "float16"])
def test_the_decoder_writes_straight_into_the_leased_row(wire_dtype: str) -> None:
    vec = (np.arange(3000, dtype=np.float32) - 1500) / 64       # exact in float16 too
    m = UpdateMatrix(2, vec.size)
    lease = m.lease("a")
    h, chunks = encode_tensor(vec, wire_dtype=wire_dtype, chunk_size=MIN_CHUNK_SIZE + 2)
    dec = TensorDecoder(h, sink=lease)
    for c in chunks:
        dec.feed(bytes(c))
    out = dec.finish()
    assert shares_memory(out, lease.row) and np.array_equal(lease.row, vec)


def test_a_decoder_whose_row_was_taken_back_stops_writing() -> None:
    vec = np.ones(2000, dtype=np.float32)
    m = UpdateMatrix(1, vec.size)
    old = m.lease("a")
    h, chunks = encode_tensor(vec, chunk_size=MIN_CHUNK_SIZE)
    dec = TensorDecoder(h, sink=old)
    dec.feed(bytes(chunks[0]))
    new = m.lease("a")                       # the peer's retried stream takes the row over
    new.row[:] = 7.0
    with pytest.raises(TensorRejected) as ei:
        dec.feed(bytes(chunks[1]))
    assert ei.value.reason == "superseded"
    assert (new.row == 7.0).all()            # nothing of the old stream landed after that


def test_nonfinite_values_in_a_row_are_refused_after_the_hash_check() -> None:
    raw = np.array([1.0, np.nan, 2.0] * 400, dtype="<f4")
    m = UpdateMatrix(1, raw.size)
    h, chunks = encode_tensor(np.ones(raw.size, dtype=np.float32), chunk_size=MIN_CHUNK_SIZE)
    from fognode.protocols.fl.transfer.tensors import TensorHeader, tensor_hash
    b = raw.tobytes()
    h = TensorHeader("float32", raw.shape, len(b), MIN_CHUNK_SIZE, tensor_hash(b))
    dec = TensorDecoder(h, sink=m.lease("a"))
    for i in range(0, len(b), MIN_CHUNK_SIZE):
        dec.feed(b[i:i + MIN_CHUNK_SIZE])
    with pytest.raises(TensorRejected) as ei:
        dec.finish()
    assert ei.value.reason == "nonfinite"


def round_on_matrix(n: int, d: int, seed: int) -> tuple[tuple[ClientUpdate, ...], list[ClientUpdate]]:
    """The same n updates as sealed matrix rows and as separate arrays (one of them an outlier,
    so the robust rules leave something out)."""
    rng = np.random.default_rng(seed)
    m = UpdateMatrix(n, d)
    held, apart = {}, []
    for i in range(n):
        v = (rng.standard_normal(d) * (30.0 if i == 2 else 0.1)).astype(np.float32)
        u = ClientUpdate(f"p{i}", v, 10 + 7 * i, loss=0.5 + 0.1 * i)
        apart.append(u)
        held[u.peer] = ClientUpdate(u.peer, m.commit(u.peer, v), u.num_samples, loss=u.loss)
    return sealed_updates(m, held), apart


STRATEGY_CASES = [("fedavg", {}), ("fedprox", {"mu": 0.01}), ("fedavgm", {}), ("fedadam", {}),
                  ("fedyogi", {}), ("fedadagrad", {}), ("qfedavg", {}), ("median", {}),
                  ("trimmed_mean", {"beta": 0.2}), ("krum", {"f": 1}), ("multikrum", {"f": 1}),
                  ("bulyan", {"f": 1}), ("fedavg", {"clip_norm": 1.0})]


@pytest.mark.parametrize("name,params", STRATEGY_CASES)
def test_every_strategy_gives_over_the_sealed_rows_what_it_gives_over_separate_arrays(
        name: str, params: dict[str, object]) -> None:
    """Tolerance: float32 rounding only (rtol 1e-5, atol 1e-6 of values around 0.1 to 30):
    the matrix path sums the same products in another order (one sgemv instead of a
    multiply-add per update); the selection (accepted/rejected) must be identical."""
    g = np.random.default_rng(1).standard_normal(3001).astype(np.float32)
    on_matrix, apart = round_on_matrix(11, 3001, 2)
    for _ in range(2):                      # twice: the server optimisers' state moves alike
        r1 = make_strategy(name, params).aggregate(g, on_matrix)
        r2 = make_strategy(name, params).aggregate(g, apart)
        assert r1.accepted == r2.accepted and r1.rejected == r2.rejected
        assert r1.weights == pytest.approx(r2.weights)
        np.testing.assert_allclose(r1.params, r2.params, rtol=1e-5, atol=1e-6)
    # the rows are left as they were (median and trimmed mean sort a copy)
    assert all(np.array_equal(a.delta, b.delta) for a, b in zip(on_matrix, apart))


def test_fedavg_over_the_matrix_matches_the_float64_reference_and_dp_runs_on_it() -> None:
    """Tolerance: float32 rounding of a sum of 11 products (rtol 1e-6 of the result's scale)."""
    g = np.zeros(5000, dtype=np.float32)
    on_matrix, apart = round_on_matrix(11, 5000, 3)
    n = np.array([u.num_samples for u in apart], dtype=np.float64)
    ref = (n / n.sum()) @ np.stack([u.delta.astype(np.float64) for u in apart])
    got = make_strategy("fedavg", {}).aggregate(g, on_matrix).params
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    w = np.full(11, 1.0 / 11)
    np.testing.assert_allclose(weighted_sum([u.delta for u in on_matrix], w),
                               weighted_sum([u.delta for u in apart], w), rtol=1e-6, atol=1e-7)
    dp = DPStrategy(make_strategy("fedavg", {}), DPConfig(1.0, 1.0))
    assert set(dp.aggregate(g, on_matrix).accepted) == {u.peer for u in apart}


def test_a_round_aggregates_over_its_matrix_and_drops_it_when_done() -> None:
    """A simulated session with a straggler: every aggregation got consecutive rows of one
    matrix (one per update that arrived), and no aggregator keeps a matrix after its round."""
    sim = Sim(5)
    sim.nodes[3].hold_updates = True
    sid = sim.start(spec(rounds=2))
    st = run(sim, sid)
    assert st["state"] == "completed"
    acts = [a for nd in sim.nodes for a in nd.aggregations]
    assert len(acts) >= 2
    for a in acts:
        rows = stacked_rows([u.delta for u in a.updates])
        assert rows is not None and rows.shape[0] == len(a.updates) == 4
        owner = a.updates[0].delta.base
        assert owner is not None and owner.shape[0] == 5            # one row per participant
    for nd in sim.nodes:
        s = nd.core.sessions[sid]
        assert s.aggregator is None or s.aggregator.matrix is None
