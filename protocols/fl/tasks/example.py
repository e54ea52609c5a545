"""Example of a user-defined FL task (copy this file into your own package).

A task is a `Task` subclass with a `name`, numeric hyperparameters in `param_spec`
(default, low, high), a torch model and the node's local data. Register it in *your*
package's `pyproject.toml`, and every node that installs your package can join sessions
that name it:

    [project.entry-points."fognode.fl_tasks"]
    sine = "mypackage.tasks:SineRegression"

Then: `fognode-cli fl start --task sine --rounds 20 --min-participants 3`.

Rules: import torch inside methods (never at module level: the daemon imports task classes
without torch); make `local_data` deterministic from (seed, index); keep float32 parameters.
The network never carries your code, only the task name, `param_spec` values and weights.

This one fits y = sin(x + phase_k) on each device, where every device sees its own slice of
x and its own phase (non-IID), with a small MLP and mean squared error. It overrides `loss`,
`targets` and `metric` because it is a regression, not a classification.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from fognode.protocols.fl.tasks.base import LocalData, Task

if TYPE_CHECKING:  # pragma: no cover
    import torch


class SineRegression(Task):
    name: ClassVar[str] = "sine"
    description: ClassVar[str] = "regression of sin(x + phase) with per-device phase shift"
    param_spec: ClassVar[dict[str, tuple[float, float, float]]] = {
        "hidden": (16.0, 1.0, 256.0),       # hidden units
        "phase_spread": (0.3, 0.0, 3.2),    # how different the devices are
        "samples": (200.0, 10.0, 10_000.0),  # samples per device
    }

    def build_model(self) -> "torch.nn.Module":
        import torch

        h = int(self.params["hidden"])
        return torch.nn.Sequential(torch.nn.Linear(1, h), torch.nn.Tanh(), torch.nn.Linear(h, 1))

    def local_data(self, seed: int, index: int) -> LocalData:
        rng = np.random.default_rng([seed, index])
        n = int(self.params["samples"])
        phase = rng.uniform(-1, 1) * self.params["phase_spread"]
        x = rng.uniform(-np.pi, np.pi, (n, 1)).astype(np.float32)
        y = np.sin(x + phase).astype(np.float32)
        cut = int(0.9 * n)
        return LocalData(x[:cut], y[:cut], x[cut:], y[cut:])

    def loss(self, output: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        import torch.nn.functional as F

        return F.mse_loss(output, target.to(output.dtype).reshape(output.shape))

    def targets(self, y: np.ndarray) -> "torch.Tensor":
        import torch

        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))

    def metric(self, output: "torch.Tensor", target: "torch.Tensor") -> float:
        # "accuracy" for a regression: the share of predictions within 0.1 of the target.
        return float(((output.reshape(-1) - target.reshape(-1)).abs() < 0.1).float().mean())
