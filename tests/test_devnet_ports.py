"""free_port (tools/devnet.py) under concurrency: ports below the kernel's ephemeral range,
never handed out twice, whether to this process or to another one (pytest-xdist workers)."""
from __future__ import annotations

import socket
import subprocess
import sys

from fognode.tools.devnet import _ephemeral_low, free_port


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    low = _ephemeral_low()
    assert low and all(p < low for p in ports), (low, ports)
    for p in ports[:5]:
        with socket.socket() as s:        # reserved for us, and free to listen on
            s.bind(("127.0.0.1", p))


def test_another_process_never_gets_a_port_this_one_holds() -> None:
    mine = {free_port() for _ in range(200)}
    code = ("from fognode.tools.devnet import free_port\n"
            "print(' '.join(str(free_port()) for _ in range(2000)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    theirs = {int(p) for p in out.stdout.split()}
    assert len(theirs) == 2000 and not mine & theirs
