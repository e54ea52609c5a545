"""The task interface: what a federated-learning task is on each node.

A task is code installed on the node (entry-point group `fognode.fl_tasks`); the network only
ever carries its name, numeric hyperparameters and flat parameter arrays. A task knows:

- its torch model (`build_model`) and so its parameter layout (name, shape, dtype per tensor),
- the node's local data, deterministic from a data seed and the node's index,
- a local training step (epochs, learning rate, batch size, optional FedProx proximal term
  `mu/2 * ||w - w_global||^2`) and an evaluation (loss, accuracy).

Weights move as one flat float32 numpy array in layout order (`get_params` / `set_params`), so
nothing is ever pickled or `torch.load`ed. torch is imported lazily inside methods: importing
this module (which the daemon does at start) never imports torch.

Methods that train or evaluate are synchronous and CPU-bound: they run in the task process
(training/process.py) or a worker thread. They load the parameters into one model kept per
thread (`loaded`: `set_params` loads every parameter and buffer, strictly) instead of building a
model per call: building one draws its random initialisation, which was about a fifth of a
round's local CPU for `synthetic_mlp` (evaluate twice + train built three). A round's local work
(`local_round`: the base model evaluated on the training and test data, then trained) loads the
base model once for all three.

Training is plain minibatch SGD, `w -= lr * grad` on each parameter, written out instead of
going through `torch.optim.SGD`: the same arithmetic (torch's SGD without momentum or weight
decay does exactly this `add_`, the results are bit-identical), without the optimizer's per-step
bookkeeping (hooks, profiler records, grad-mode switches: 15-20 % of a `synthetic_mlp` round's
CPU at batch 10) and without its first use importing `torch._dynamo` (1 s of CPU, in a node's
first round).
"""
from __future__ import annotations

import abc
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fognode.node.errors import FognodeError
from fognode.node.wire import digest, pack

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

SUPPORTED_DTYPES = ("float32",)
_GLOBAL_RNG = threading.RLock()


class TaskError(FognodeError):
    """A task was asked for something it cannot do (unknown task, bad hyperparameter, bad
    parameter vector). Whose fault it is depends on the caller: the RPC client, or a peer's
    announcement naming a task or values this node does not accept."""


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a model: `name` as in the torch state dict, shape, dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))


@dataclass(frozen=True)
class ParamLayout:
    """The ordered tensors of a model; the flat parameter vector concatenates them in order."""

    tensors: tuple[TensorSpec, ...]

    @property
    def size(self) -> int:
        return sum(t.size for t in self.tensors)

    def to_wire(self) -> list[list[Any]]:
        return [[t.name, list(t.shape), t.dtype] for t in self.tensors]

    def digest(self) -> bytes:
        """BLAKE2b-256 of the canonical encoding: two nodes agree on a layout iff equal."""
        return digest(pack(self.to_wire()))

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Views of `flat` per tensor name, reshaped (raises TaskError on a size mismatch)."""
        if flat.ndim != 1 or flat.size != self.size:
            raise TaskError(f"parameter vector has {flat.size} values, layout wants {self.size}")
        out: dict[str, np.ndarray] = {}
        off = 0
        for t in self.tensors:
            out[t.name] = flat[off:off + t.size].reshape(t.shape)
            off += t.size
        return out


@dataclass(frozen=True)
class LocalData:
    """A node's training and held-out data (features float32, integer labels)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])


@dataclass(frozen=True)
class TrainConfig:
    """Local work for one round. `mu > 0` adds the FedProx proximal term."""

    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 10
    mu: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise TaskError(f"epochs must be >= 0, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TaskError(f"lr must be a positive finite number, got {self.lr}")
        if self.batch_size < 1:
            raise TaskError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.mu >= 0 and math.isfinite(self.mu)):
            raise TaskError(f"mu must be >= 0 and finite, got {self.mu}")


@dataclass(frozen=True)
class TrainResult:
    """Parameters after local training, how many samples they were trained on, the mean
    training loss (without the proximal term) over the last epoch, and SGD steps taken."""

    params: np.ndarray
    num_samples: int
    loss: float
    steps: int


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    num_samples: int


class Task(abc.ABC):
    """Base class of every FL task. Subclasses set `name`, `param_spec` and implement
    `build_model` and `local_data`; the training and evaluation loops are provided (override
    `loss` for another objective than cross-entropy on class labels).

    `param_spec` maps each numeric hyperparameter to (default, low, high); a session announces
    values for them and `__init__` validates those values (TaskError on unknown or out of range).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    param_spec: ClassVar[dict[str, tuple[float, float, float]]] = {}

    def __init__(self, **params: float) -> None:
        unknown = sorted(set(params) - set(self.param_spec))
        if unknown:
            raise TaskError(f"task {self.name!r}: unknown parameter(s) {unknown}; "
                            f"known: {sorted(self.param_spec)}")
        values: dict[str, float] = {}
        for key, (default, lo, hi) in self.param_spec.items():
            v = params.get(key, default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TaskError(f"task {self.name!r}: parameter {key!r} must be a finite number")
            if not lo <= v <= hi:
                raise TaskError(f"task {self.name!r}: parameter {key!r} = {v} is outside [{lo}, {hi}]")
            values[key] = float(v)
        self.params = values
        self._layout: ParamLayout | None = None
        self._scratch = threading.local()     # .model: the model `loaded` reuses, per thread

    # -- what a task defines -------------------------------------------------------------

    @abc.abstractmethod
    def build_model(self) -> "torch.nn.Module":
        """A fresh torch model (float32 parameters). Imports torch."""

    @abc.abstractmethod
    def local_data(self, seed: int, index: int) -> LocalData:
        """This node's data: deterministic from (seed, index), independent of other nodes."""

    def loss(self, output: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        """The training objective (mean over the batch); cross-entropy by default."""
        import torch.nn.functional as F

        return F.cross_entropy(output, target)

    def targets(self, y: np.ndarray) -> "torch.Tensor":
        """Labels as the tensor `loss` expects; int64 class indices by default."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))

    def metric(self, output: "torch.Tensor", target: "torch.Tensor") -> float:
        """The quality figure reported as "accuracy"; top-1 accuracy by default."""
        return float((output.argmax(dim=1) == target).float().mean())

    # -- parameters ----------------------------------------------------------------------

    def layout(self) -> ParamLayout:
        """The model's parameter layout (cached)."""
        if self._layout is None:
            model = self.new_model()
            specs = []
            for name, p in model.state_dict().items():
                dtype = str(p.dtype).removeprefix("torch.")
                if dtype not in SUPPORTED_DTYPES:
                    raise TaskError(f"task {self.name!r}: tensor {name!r} has dtype {dtype}; "
                                    f"only {SUPPORTED_DTYPES} travel")
                specs.append(TensorSpec(name, tuple(int(s) for s in p.shape), dtype))
            self._layout = ParamLayout(tuple(specs))
        return self._layout

    def initial_params(self, seed: int) -> np.ndarray:
        """The round-0 global model, deterministic from `seed` (same on every node)."""
        import torch

        # torch's default generator is process-global: two threads (two nodes in one process,
        # or a training thread) must not seed and draw from it at the same time
        with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)
            model = self.build_model()
        return self.get_params(model)

    def new_model(self) -> "torch.nn.Module":
        """`build_model()` under the lock of torch's global generator (parameter init draws
        from it; see `initial_params`)."""
        with _GLOBAL_RNG:
            return self.build_model()

    def loaded(self, params: np.ndarray) -> "torch.nn.Module":
        """This thread's working model of the task, holding `params` (built on first use)."""
        model = getattr(self._scratch, "model", None)
        if model is None:
            model = self._scratch.model = self.new_model()
        self.set_params(model, params)
        return model

    def get_params(self, model: "torch.nn.Module") -> np.ndarray:
        """The model's parameters as one flat float32 array in layout order (a copy)."""
        state = model.state_dict()
        parts = [state[t.name].detach().cpu().numpy().astype(np.float32, copy=False).ravel()
                 for t in self.layout().tensors]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)   # (a new array)

    def set_params(self, model: "torch.nn.Module", flat: np.ndarray) -> None:
        """Load a flat float32 vector into `model` (TaskError on a size/dtype mismatch)."""
        import torch

        if flat.dtype != np.float32:
            raise TaskError(f"parameter vector must be float32, got {flat.dtype}")
        parts = self.layout().split(flat)
        state = {k: torch.from_numpy(np.ascontiguousarray(v).copy()) for k, v in parts.items()}
        model.load_state_dict(state, strict=True)

    def state_dict(self, flat: np.ndarray) -> dict[str, Any]:
        """A torch state dict (name -> tensor) of a flat vector, e.g. for `torch.save`."""
        model = self.new_model()
        self.set_params(model, flat)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    # -- training and evaluation ----------------------------------------------------------

    def train(self, params: np.ndarray, data: LocalData, cfg: TrainConfig, *,
              seed: int = 0) -> TrainResult:
        """Minibatch SGD from `params` on `data.x_train` for `cfg.epochs` epochs.

        With `cfg.mu > 0` the objective is loss + mu/2 * ||w - params||^2 (FedProx). The shuffle
        order is deterministic from `seed`. CPU-bound: call it from a worker thread.
        """
        return self._train_loaded(self.loaded(params), data, cfg, seed)

    def evaluate(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> EvalResult:
        """Mean loss and accuracy of `params` on (x, y). CPU-bound."""
        if int(y.shape[0]) == 0:
            return EvalResult(float("nan"), float("nan"), 0)
        return self._evaluate_loaded(self.loaded(params), x, y)

    def local_round(self, params: np.ndarray, data: LocalData, cfg: TrainConfig, *,
                    seed: int = 0) -> tuple[EvalResult, EvalResult, TrainResult]:
        """One round's local work from the base model `params`: its loss and accuracy on the
        training data, then on the test data, then `train` from it; the same results as
        `evaluate` twice and `train`, with the base model loaded once. CPU-bound."""
        model = self.loaded(params)
        on_train = self._evaluate_loaded(model, data.x_train, data.y_train)
        on_test = self._evaluate_loaded(model, data.x_test, data.y_test)
        return on_train, on_test, self._train_loaded(model, data, cfg, seed)

    def _train_loaded(self, model: "torch.nn.Module", data: LocalData, cfg: TrainConfig,
                      seed: int) -> TrainResult:
        """`train` of the working model, which holds the base parameters (`loaded`)."""
        import torch

        model.train()
        params = list(model.parameters())
        anchor = [p.detach().clone() for p in params] if cfg.mu > 0 else []
        x = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
        y = self.targets(data.y_train)
        n = int(y.shape[0])
        gen = torch.Generator().manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)
        steps = 0
        last_loss = float("nan")
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)
            total, count = 0.0, 0
            for start in range(0, n, cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                for p in params:
                    p.grad = None
                loss = self.loss(model(x[idx]), y[idx])
                objective = loss
                if cfg.mu > 0:
                    prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
                    objective = loss + 0.5 * cfg.mu * prox
                objective.backward()
                with torch.no_grad():       # SGD: w -= lr * grad (see the module docstring)
                    for p in params:
                        if p.grad is not None:
                            p.add_(p.grad, alpha=-cfg.lr)
                steps += 1
                total += float(loss.detach()) * int(idx.shape[0])
                count += int(idx.shape[0])
            last_loss = total / max(count, 1)
        if cfg.epochs == 0:
            last_loss = self._evaluate_loaded(model, data.x_train, data.y_train).loss
        return TrainResult(self.get_params(model), n, last_loss, steps)

    def _evaluate_loaded(self, model: "torch.nn.Module", x: np.ndarray, y: np.ndarray) -> EvalResult:
        """`evaluate` of the working model as it stands."""
        import torch

        n = int(y.shape[0])
        if n == 0:
            return EvalResult(float("nan"), float("nan"), 0)
        model.eval()
        with torch.no_grad():
            xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            yt = self.targets(y)
            output = model(xt)
            loss = float(self.loss(output, yt))
            acc = self.metric(output, yt)
        return EvalResult(loss, acc, n)
