"""How a start imports (node/startimports.py): OpenBLAS's idle threads sleep at once unless the
operator said otherwise, and the GC is back on with the imports frozen after a block."""
from __future__ import annotations

import gc
import os

import pytest

from fognode.node.startimports import BLAS_THREAD_TIMEOUT, imports_without_gc, quiet_blas_threads


def test_blas_threads_sleep_when_idle_unless_the_operator_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    quiet_blas_threads()
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == BLAS_THREAD_TIMEOUT
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "28")
    quiet_blas_threads()
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "28"


def test_imports_without_gc_turns_it_back_on_and_freezes() -> None:
    if not gc.isenabled():
        pytest.skip("the collector is off in this process")
    frozen = gc.get_freeze_count()
    try:
        with imports_without_gc():
            assert not gc.isenabled()
            kept = [[i] for i in range(1000)]
        assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(kept)
    finally:
        gc.unfreeze()
