"""Shared fixtures: `node_factory` starts real daemon processes on 127.0.0.1."""
from __future__ import annotations

import gc
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from fognode.tools.devnet import Devnet

# Property tests judge behaviour, not speed: on 2 loaded cores one example can take longer than
# hypothesis's 200 ms default deadline, which then fails the test as "flaky" (seen in CI).
settings.register_profile("fognode", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fognode")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what collection built (imported modules: torch, hypothesis, libp2p, every test
    module; about 300,000 objects): the full garbage collection after every test (below) then
    walks only what tests created since, not those again each time (0.14 s of CPU a test, two
    minutes over the suite). Frozen objects stay alive, which modules do anyway."""
    gc.collect()
    gc.freeze()


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


HEAVY_LANES = 2          # multi-process scenarios running at once under pytest-xdist
NETNS_WEIGHT = 3         # a network-namespace fault scenario costs about three other slow tests


@pytest.hookimpl(tryfirst=True)   # before xdist reads the xdist_group marks (--dist loadgroup)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the multi-process scenarios (marked `slow`) run in HEAVY_LANES
    lanes: each lane is one xdist group, run test after test by one worker, while the other
    workers run the in-process tests. Without lanes a worker count high enough to fill the
    idle time of the scenarios (daemons waiting on timers and sockets) would also start that
    many five-daemon scenarios at once and starve them all. The fault tests (tests/faults: five
    daemons in network namespaces on one fabric per worker) share one lane; the other slow
    tests go, in collection order, to the lane with the least weight so far. Every worker
    computes the same lanes (xdist requires one collection). A run without workers is
    unchanged: xdist_group marks are ignored there."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    weight = [0] * HEAVY_LANES
    for item in items:
        if item.get_closest_marker("slow") is None:
            continue
        if "tests/faults/" in item.nodeid:
            lane, cost = 0, NETNS_WEIGHT
        else:
            lane, cost = weight.index(min(weight)), 1
        weight[lane] += cost
        item.add_marker(pytest.mark.xdist_group(f"heavy{lane}"))


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
