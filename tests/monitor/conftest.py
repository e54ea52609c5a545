"""`monitored_net(n, extra_args=...)`: a started devnet of real daemons whose monitor endpoint
(and so the dashboard) listens on a free 127.0.0.1 port of each node."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from fognode.tools.devnet import Devnet

MonitoredNet = Callable[..., Devnet]


@pytest.fixture
def monitored_net(short_tmp: Path) -> Iterator[MonitoredNet]:
    nets: list[Devnet] = []

    def make(n: int, *, extra_args: list[str] | None = None, timeout: float = 60.0) -> Devnet:
        net = Devnet(short_tmp / f"mon{len(nets)}", n, extra_args=extra_args, metrics=True)
        nets.append(net)
        net.create()
        net.start_all(timeout=timeout)
        return net

    yield make
    for net in nets:
        net.stop_all()
