"""The alert hook dies with the daemon (hook.py, node/reaper.py): a real parent process runs
a hook that starts a child of its own; the parent is SIGKILLed while the hook runs and neither
the hook nor its child survives. Also: a hook that ends is reported by its exit status, one
that cannot be started says so, and one past its limit is killed with its group."""
from __future__ import annotations

from pathlib import Path

import psutil
import trio

from fognode.protocols.monitor.hook import run_hook

from tests.node.test_reaper import parent_ready, survivors_of_sigkill, wait_gone

# The parent runs one hook (a shell whose sleep has a sibling); once the hook's processes and
# the reaper are up it prints "ready" and waits for its SIGKILL.
PARENT = r"""
import sys, psutil, trio
from fognode.protocols.monitor.hook import run_hook

async def main():
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_hook, ["sh", "-c", "sleep 600 & sleep 600"], {"rule": "r"}, 900.0)
        with trio.fail_after(60):   # the hook's sh and its two sleeps, and the reaper guarding them
            while sorted(p.cmdline()[-1:] == ["fognode-reaper"]
                         for p in psutil.Process().children(recursive=True)) != [False] * 3 + [True]:
                await trio.sleep(0.05)
        print("ready", flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


def test_a_running_hook_dies_with_the_daemons_sigkill() -> None:
    with parent_ready(PARENT) as (parent, tree):
        hook = [p for p in tree if p.cmdline()[-1:] != ["fognode-reaper"]]
        assert len(hook) == 3 and len(tree) == 4, [p.cmdline() for p in tree]
        left = survivors_of_sigkill(parent, tree)
        assert not left, [(p.pid, p.status(), p.cmdline()) for p in left]


async def test_a_hook_ends_with_its_status_or_is_killed_at_its_limit(tmp_path: Path) -> None:
    out = tmp_path / "alert.json"
    with trio.fail_after(60):
        assert await run_hook(["sh", "-c", f"cat > {out}"], {"rule": "r"}, 30.0) == "exit 0"
        assert out.read_text() == '{"rule": "r"}\n'
        assert await run_hook(["sh", "-c", "exit 3"], {}, 30.0) == "exit 3"
        assert (await run_hook([str(tmp_path / "missing")], {}, 30.0)).startswith("not started: ")
        pidfile = tmp_path / "child.pid"
        assert await run_hook(["sh", "-c", f"sleep 600 & echo $! > {pidfile}; wait"], {}, 1.0) \
            == "killed after 1 s"
        try:
            child = psutil.Process(int(pidfile.read_text()))
        except psutil.NoSuchProcess:
            return
        assert not wait_gone([child], 10.0)      # the hook's whole group, not only its shell
