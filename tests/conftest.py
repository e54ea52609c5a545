"""Shared fixtures: `node_factory` starts real daemon processes on 127.0.0.1."""
from __future__ import annotations

import gc
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator

import pytest

from fognode.tools.devnet import Devnet


@pytest.fixture(autouse=True)
def collect_libp2p_sockets() -> Iterator[None]:
    """py-libp2p 0.8.1 leaves some TCP sockets unclosed when in-process hosts stop while
    connected to each other, or when a dial is cut short by a deadline (upstream: its swarm
    does not close a raw connection whose upgrade was cancelled). Their ResourceWarning would
    fire at a later garbage collection, inside whichever test runs then. Collect them at the
    end of every test, with that one warning ignored, so each test answers only for itself.
    (A daemon process is unaffected: the sockets are freed when collected.)"""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir (unix socket paths must stay under 108 bytes; pytest's tmp_path may not)."""
    d = Path(tempfile.mkdtemp(prefix="fn-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


NodeFactory = Callable[..., Devnet]


@pytest.fixture
def node_factory(short_tmp: Path) -> Iterator[NodeFactory]:
    """`node_factory(n, extra_args=[...], env={...}, start=True)` -> a started `Devnet`.

    Every node is a real `fognode run` process with its own data dir, one shared genesis, and a
    fixed 127.0.0.1 port; all are stopped (SIGTERM, then SIGKILL) at the end of the test.
    Node logs are printed for failed tests by pytest's captured output of this fixture.
    """
    nets: list[Devnet] = []

    def make(n: int, *, extra_args: list[str] | None = None, env: dict[str, str] | None = None,
             start: bool = True, timeout: float = 60.0) -> Devnet:
        net = Devnet(short_tmp / f"net{len(nets)}", n, extra_args=extra_args, env=env)
        nets.append(net)
        net.create()
        if start:
            net.start_all(timeout=timeout)
        return net

    yield make
    for net in nets:
        net.stop_all()
