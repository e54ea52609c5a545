"""Synthetic(alpha, beta): the non-IID benchmark of the FedProx paper.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in Heterogeneous
Networks", MLSys 2020 (after Shamir, Srebro, Zhang 2014). 60 features, 10 classes. For device k:

    u_k ~ N(0, alpha),  B_k ~ N(0, beta)
    W_k ~ N(u_k, 1) (60x10),  b_k ~ N(u_k, 1) (10)
    v_k ~ N(B_k, 1) (60)
    x ~ N(v_k, Sigma),  Sigma diagonal with Sigma_jj = j^-1.2
    y = argmax softmax(W_k^T x + b_k)

alpha controls how much the local models differ, beta how much the local data differ. As in
the paper's released generator, alpha and beta are used as standard deviations (numpy's
`normal(0, alpha)`) and sample counts follow a power law (`lognormal(4, 2) + 50`); here they
are capped at `max_samples` so one device cannot hold the whole data set. Each device's data
is drawn from its own generator seeded by (seed, k), so a node's data depends only on the data
seed and its own index, never on how many other nodes exist. 90 % of a device's samples are
for training, 10 % held out (as in the paper's generator).

Two tasks on this data: `synthetic` (multinomial logistic regression, the paper's model) and
`synthetic_mlp` (one hidden layer).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from fognode.protocols.fl.tasks.base import LocalData, Task

if TYPE_CHECKING:  # pragma: no cover
    import torch

DIMENSION = 60
NUM_CLASSES = 10
TRAIN_FRACTION = 0.9


def synthetic_device_data(seed: int, index: int, *, alpha: float, beta: float,
                          min_samples: int = 50, max_samples: int = 1000,
                          iid: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """All samples (x float32 [n, 60], y int64 [n]) of device `index` for data seed `seed`."""
    if index < 0 or seed < 0:
        raise ValueError("seed and index must be >= 0")
    rng = np.random.default_rng([seed, index, 0x5F17])
    n = int(rng.lognormal(4, 2)) + min_samples
    n = min(n, max_samples)
    u = rng.normal(0.0, alpha)
    big_b = rng.normal(0.0, beta)
    sigma = np.power(np.arange(1, DIMENSION + 1, dtype=np.float64), -1.2)
    if iid:
        # The paper generator's IID variant: one global model (W, b) for every device, each
        # device's features centred at B_k in every coordinate.
        g = np.random.default_rng([seed, 0x11D])
        w = g.normal(0.0, 1.0, (DIMENSION, NUM_CLASSES))
        b = g.normal(0.0, 1.0, NUM_CLASSES)
        v = np.full(DIMENSION, big_b)
    else:
        w = rng.normal(u, 1.0, (DIMENSION, NUM_CLASSES))
        b = rng.normal(u, 1.0, NUM_CLASSES)
        v = rng.normal(big_b, 1.0, DIMENSION)
    x = v + rng.standard_normal((n, DIMENSION)) * np.sqrt(sigma)
    y = np.argmax(x @ w + b, axis=1)   # argmax of softmax == argmax of the logits
    return x.astype(np.float32), y.astype(np.int64)


class _SyntheticTask(Task):
    param_spec: ClassVar[dict[str, tuple[float, float, float]]] = {
        "alpha": (1.0, 0.0, 100.0),
        "beta": (1.0, 0.0, 100.0),
        "iid": (0.0, 0.0, 1.0),
        "max_samples": (1000.0, 60.0, 100_000.0),
    }

    def local_data(self, seed: int, index: int) -> LocalData:
        x, y = synthetic_device_data(
            seed, index, alpha=self.params["alpha"], beta=self.params["beta"],
            max_samples=int(self.params["max_samples"]), iid=self.params["iid"] >= 0.5)
        cut = int(TRAIN_FRACTION * len(y))
        return LocalData(x[:cut], y[:cut], x[cut:], y[cut:])


class SyntheticLogReg(_SyntheticTask):
    """Multinomial logistic regression on Synthetic(alpha, beta) (the FedProx paper's model).

    Round-0 weights are zeros, as in the paper."""

    name: ClassVar[str] = "synthetic"
    description: ClassVar[str] = "Synthetic(alpha, beta) non-IID data, multinomial logistic regression"

    def build_model(self) -> "torch.nn.Module":
        import torch

        return torch.nn.Linear(DIMENSION, NUM_CLASSES)

    def initial_params(self, seed: int) -> np.ndarray:
        return np.zeros(self.layout().size, dtype=np.float32)


class SyntheticMLP(_SyntheticTask):
    """A one-hidden-layer MLP (60-`hidden`-10, ReLU) on Synthetic(alpha, beta)."""

    name: ClassVar[str] = "synthetic_mlp"
    description: ClassVar[str] = "Synthetic(alpha, beta) non-IID data, MLP with one hidden layer"
    param_spec: ClassVar[dict[str, tuple[float, float, float]]] = {
        **_SyntheticTask.param_spec,
        "hidden": (32.0, 1.0, 4096.0),
    }

    def build_model(self) -> "torch.nn.Module":
        import torch

        hidden = int(self.params["hidden"])
        return torch.nn.Sequential(
            torch.nn.Linear(DIMENSION, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, NUM_CLASSES),
        )
