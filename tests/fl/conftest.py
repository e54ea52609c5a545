"""FL tests train tiny torch models: one intra-op thread is several times faster than two on
the 2-core CI machines (thread hand-off dominates), as the role's `torch_threads` default."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)
