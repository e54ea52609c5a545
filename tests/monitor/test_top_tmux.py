"""`fognode-cli top` in a real terminal (tmux) against real daemons: it renders the node, its
roles' health, its peer and live figures, updates (the poll count moves, an FL round appears
as it completes), shows the harvest, market and onion lines, and quits with status 0 on `q`."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fognode.tools.devnet import wait_until

from tests.monitor.conftest import MonitoredNet

pytestmark = pytest.mark.slow


class Tmux:
    """A private tmux server (its own socket name) running one command in one pane."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True, timeout=15,
                              check=True).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top")

    def pane(self, fmt: str) -> str:
        return self.run("display-message", "-p", "-t", "top", fmt).strip()


def test_top_renders_updates_and_quits_on_q(monitored_net: MonitoredNet, tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (`make test` installs it as root)")
    pytest.importorskip("rich", reason="fognode-cli top needs the Python package rich")
    net = monitored_net(2, extra_args=["--set", "protocols.fl.tick_interval=0.1",
                                       "--set", "protocols.monitor.sample_interval=0.5"])
    node, other = net.nodes
    wait_until(lambda: any(p["peer_id"] == other.peer_id for p in node.rpc("node.peers")), timeout=30,
               what="the two nodes to connect")
    tmux = Tmux(f"fn-top-{os.getpid()}")
    # rich takes $COLUMNS/$LINES over the terminal's size: the pane's own size must count
    status = tmp_path / "top.status"      # top's exit status, written by the shell that ran it
    top = shlex.join(["env", "-u", "COLUMNS", "-u", "LINES", sys.executable, "-m", "fognode.tools.cli",
                      "--datadir", str(node.datadir), "top",
                      "--interval", "0.5"])
    cmd = f"{top}; echo $? > {shlex.quote(str(status))}"
    try:
        # the pane stays after top exits (remain-on-exit), so its exit status can be read
        tmux.run("new-session", "-d", "-s", "top", "-x", "160", "-y", "48", "sleep 600")
        tmux.run("set-option", "-t", "top", "remain-on-exit", "on")
        tmux.run("set-option", "-t", "top", "window-size", "manual")
        tmux.run("resize-window", "-t", "top", "-x", "160", "-y", "48")
        tmux.run("respawn-pane", "-k", "-t", "top", cmd)

        def poll_count() -> int:
            m = re.search(r"poll (\d+)", tmux.screen())
            return int(m.group(1)) if m else 0

        try:
            wait_until(lambda: poll_count() >= 1, timeout=30, what="top's first screen")
        except TimeoutError:
            raise AssertionError(f"top did not draw; its pane shows:\n{tmux.screen()}") from None
        screen = tmux.screen()
        assert node.peer_id in screen and "fognode top" in screen
        for role in ("monitor", "ledger", "registry", "fl"):
            assert re.search(rf"{role}\s+healthy", screen), screen
        assert other.peer_id[:8] in screen                      # its peer
        assert "loop lag mean ms" in screen and "gossip in /s" in screen
        # it updates: more polls, figures from two readings, and an FL round as it completes
        first = poll_count()
        wait_until(lambda: poll_count() >= first + 2, timeout=30, what="top to refresh")
        assert re.search(r"loop lag mean ms\s+\d", tmux.screen()), tmux.screen()
        sid = node.rpc("fl.start", {"task": "synthetic", "rounds": 1, "min_participants": 2, "participants": 2,
                                    "deadline": 20.0, "optin_seconds": 1.0,
                                    "task_params": {"max_samples": 100}})["session_id"]
        wait_until(lambda: re.search(rf"{sid[:8]}\s+1\s+2\s+\d", tmux.screen()), timeout=90,
                   what=f"round 1 of {sid[:8]} on top's screen")
        # the harvest, market and onion figures the monitor records (monitor.metrics)
        for line in (r"harvest\s+(running|suspended)", r"market\s+\d+ offers", r"onion\s+\d+ circuits"):
            wait_until(lambda: re.search(line, tmux.screen()), timeout=30, what=f"{line!r} on top's screen")
        tmux.run("send-keys", "-t", "top", "q")
        wait_until(lambda: tmux.pane("#{pane_dead}") == "1", timeout=15, what="top to quit on q")
        # (tmux's own #{pane_dead_status} stayed empty in one CI run: the shell writes it instead)
        ended = wait_until(lambda: status.exists() and status.read_text().strip() or None,
                           timeout=10, interval=0.1, what="top's exit status")
        assert ended == "0", f"top ended with status {ended!r}"
    finally:
        subprocess.run(["tmux", "-L", tmux.name, "kill-server"], capture_output=True, timeout=15)
