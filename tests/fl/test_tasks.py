from __future__ import annotations

import threading

import numpy as np
import pytest

from fognode.protocols.fl.tasks import (
    LocalData,
    TaskError,
    TrainConfig,
    installed_tasks,
    load_task,
)
from fognode.protocols.fl.tasks.example import SineRegression
from fognode.protocols.fl.tasks.synthetic import DIMENSION, NUM_CLASSES, synthetic_device_data


def test_entry_points_name_both_synthetic_tasks() -> None:
    assert {"synthetic", "synthetic_mlp"} <= set(installed_tasks())
    assert load_task("synthetic").name == "synthetic"
    assert load_task("synthetic_mlp", {"hidden": 8}).name == "synthetic_mlp"


def test_unknown_task_and_bad_params_are_refused() -> None:
    with pytest.raises(TaskError, match="no FL task named 'nope'"):
        load_task("nope")
    with pytest.raises(TaskError, match="unknown parameter"):
        load_task("synthetic", {"gamma": 1.0})
    with pytest.raises(TaskError, match="outside"):
        load_task("synthetic", {"alpha": -1.0})
    with pytest.raises(TaskError, match="finite"):
        load_task("synthetic", {"alpha": float("nan")})


def test_synthetic_data_is_deterministic_per_seed_and_index() -> None:
    x1, y1 = synthetic_device_data(3, 4, alpha=1, beta=1)
    x2, y2 = synthetic_device_data(3, 4, alpha=1, beta=1)
    x3, _ = synthetic_device_data(3, 5, alpha=1, beta=1)
    x4, _ = synthetic_device_data(4, 4, alpha=1, beta=1)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert x1.shape[1] == DIMENSION and x1.dtype == np.float32 and y1.dtype == np.int64
    assert x1.shape != x3.shape or not np.array_equal(x1, x3)
    assert x1.shape != x4.shape or not np.array_equal(x1, x4)
    assert y1.min() >= 0 and y1.max() < NUM_CLASSES


def test_synthetic_matches_the_papers_generative_model() -> None:
    # Feature variances around the device mean follow Sigma_jj = j^-1.2.
    big = next(x for k in range(100)
               if len(x := synthetic_device_data(1, k, alpha=0, beta=0, max_samples=100_000)[0]) >= 2000)
    rng_counts = [len(synthetic_device_data(1, k, alpha=1, beta=1, max_samples=100_000)[1])
                  for k in range(200)]
    assert min(rng_counts) >= 50
    # power law: a heavy tail (the largest device holds many times the median)
    assert max(rng_counts) > 10 * float(np.median(rng_counts))
    var = big.var(axis=0)
    want = np.power(np.arange(1, DIMENSION + 1), -1.2)
    assert np.allclose(var, want, rtol=0.25)


def test_heterogeneity_grows_with_alpha_beta() -> None:
    def label_spread(a: float, b: float) -> float:
        hists = []
        for k in range(20):
            _, y = synthetic_device_data(0, k, alpha=a, beta=b)
            hists.append(np.bincount(y, minlength=NUM_CLASSES) / len(y))
        return float(np.std(np.array(hists), axis=0).mean())

    assert label_spread(1, 1) > label_spread(0, 0) * 0.8
    x_iid = [synthetic_device_data(0, k, alpha=1, beta=1, iid=True)[0].mean() for k in range(10)]
    x_non = [synthetic_device_data(0, k, alpha=1, beta=1)[0].mean() for k in range(10)]
    assert np.std(x_non) > np.std(x_iid)


def test_params_round_trip_and_layout() -> None:
    t = load_task("synthetic_mlp", {"hidden": 8})
    lay = t.layout()
    assert [s.name for s in lay.tensors] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert lay.size == 60 * 8 + 8 + 8 * 10 + 10
    p = t.initial_params(5)
    assert p.dtype == np.float32 and p.shape == (lay.size,)
    assert np.array_equal(p, t.initial_params(5))
    assert not np.array_equal(p, t.initial_params(6))
    model = t.build_model()
    t.set_params(model, p)
    assert np.array_equal(t.get_params(model), p)
    with pytest.raises(TaskError, match="float32"):
        t.set_params(model, p.astype(np.float64))
    with pytest.raises(TaskError, match="values"):
        t.set_params(model, p[:-1])
    assert lay.digest() == load_task("synthetic_mlp", {"hidden": 8}).layout().digest()
    assert lay.digest() != load_task("synthetic_mlp", {"hidden": 9}).layout().digest()
    sd = t.state_dict(p)
    assert tuple(sd["0.weight"].shape) == (8, 60)


def test_logreg_starts_at_zero_and_learns_locally() -> None:
    t = load_task("synthetic")
    data = t.local_data(7, 1)
    p0 = t.initial_params(0)
    assert not p0.any()
    before = t.evaluate(p0, data.x_train, data.y_train)
    r = t.train(p0, data, TrainConfig(epochs=5, lr=0.05, batch_size=10), seed=1)
    after = t.evaluate(r.params, data.x_train, data.y_train)
    assert r.num_samples == data.num_train and r.steps == 5 * -(-data.num_train // 10)
    assert after.loss < before.loss and after.accuracy > 0.8
    # same seed, same result: local training is deterministic
    r2 = t.train(p0, data, TrainConfig(epochs=5, lr=0.05, batch_size=10), seed=1)
    assert np.array_equal(r.params, r2.params)


def test_one_working_model_per_thread_gives_the_numbers_of_fresh_models() -> None:
    """evaluate and train load the parameters into the thread's working model (`loaded`);
    what they return is what a task that never trained before returns."""
    t = load_task("synthetic_mlp", {"hidden": 64.0, "max_samples": 60.0})
    data = t.local_data(7, 1)
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=10)
    p0 = t.initial_params(0)
    r1 = t.train(p0, data, cfg, seed=1)
    model = t.loaded(p0)
    e = t.evaluate(r1.params, data.x_test, data.y_test)
    r2 = t.train(r1.params, data, cfg, seed=2)
    assert t.loaded(p0) is model       # built once
    fresh = load_task("synthetic_mlp", {"hidden": 64.0, "max_samples": 60.0})
    assert fresh.evaluate(r1.params, data.x_test, data.y_test) == e
    assert np.array_equal(fresh.train(r1.params, data, cfg, seed=2).params, r2.params)
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(t.loaded(p0)))
    thread.start()
    thread.join(30)
    assert other and other[0] is not model     # another thread has its own


def test_fedprox_term_keeps_local_model_near_the_global_one() -> None:
    t = load_task("synthetic")
    data = t.local_data(7, 2)
    p0 = t.initial_params(0)
    free = t.train(p0, data, TrainConfig(epochs=10, lr=0.05, batch_size=10, mu=0.0), seed=3)
    prox = t.train(p0, data, TrainConfig(epochs=10, lr=0.05, batch_size=10, mu=1.0), seed=3)
    assert np.linalg.norm(prox.params - p0) < np.linalg.norm(free.params - p0)


def test_train_config_is_validated() -> None:
    for bad in (dict(epochs=-1), dict(lr=0.0), dict(batch_size=0), dict(mu=-0.1)):
        with pytest.raises(TaskError):
            TrainConfig(**bad)  # type: ignore[arg-type]


def test_documented_example_task_trains() -> None:
    t = SineRegression(hidden=8)
    data = t.local_data(0, 0)
    assert isinstance(data, LocalData) and data.y_train.dtype == np.float32
    p = t.initial_params(0)
    before = t.evaluate(p, data.x_test, data.y_test)
    r = t.train(p, data, TrainConfig(epochs=30, lr=0.05, batch_size=16), seed=0)
    after = t.evaluate(r.params, data.x_test, data.y_test)
    assert after.loss < before.loss / 2


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_sgd_steps_are_those_of_torch_optim_sgd(mu: float) -> None:
    """`Task.train` writes SGD out (w -= lr * grad); torch's own SGD gives the same bits."""
    import torch

    t = load_task("synthetic_mlp", {"hidden": 16})
    data = t.local_data(3, 6)
    p0 = t.initial_params(5)
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=10, mu=mu)
    model = t.new_model()
    t.set_params(model, p0)
    anchor = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    x, y = torch.from_numpy(data.x_train), t.targets(data.y_train)
    gen = torch.Generator().manual_seed(9)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            opt.zero_grad()
            objective = t.loss(model(x[idx]), y[idx])
            if mu > 0:
                objective = objective + 0.5 * mu * sum(((p - a) ** 2).sum()
                                                       for p, a in zip(model.parameters(), anchor))
            objective.backward()
            opt.step()
    assert np.array_equal(t.train(p0, data, cfg, seed=9).params, t.get_params(model))


def test_local_round_is_two_evaluations_and_a_training() -> None:
    t = load_task("synthetic_mlp", {"hidden": 16})
    data = t.local_data(3, 6)
    p0 = t.initial_params(5)
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=10)
    on_train, on_test, result = t.local_round(p0, data, cfg, seed=4)
    fresh = load_task("synthetic_mlp", {"hidden": 16})
    assert on_train == fresh.evaluate(p0, data.x_train, data.y_train)
    assert on_test == fresh.evaluate(p0, data.x_test, data.y_test)
    want = fresh.train(p0, data, cfg, seed=4)
    assert np.array_equal(result.params, want.params)
    assert (result.loss, result.steps, result.num_samples) == (want.loss, want.steps, want.num_samples)
