"""Run the operator's alert hook: a program (argv, never a shell) with the alert as JSON on stdin.

The program is started in its own process group; if it has not exited after `timeout`
seconds, the whole group is killed (SIGKILL) and that is logged. Its exit status and the
tail of its stderr are logged; a failing hook never affects the node. Awaits the program's
end (at most `timeout` seconds plus the time to reap it); cancellable (the group is killed).

While the program runs, its process group is registered with this process's reaper
(node/reaper.py), so a hook still running when the daemon dies (kill -9 included) is
killed with its group; the entry is released once the program has been reaped (what it left
running in the background after its own exit is no longer watched). A hook the reaper cannot
guard is killed at once ("killed: no reaper ...").
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from typing import Any

import trio

from fognode.node.reaper import reaper

log = logging.getLogger("fognode.monitor")


def _kill_group(proc: trio.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def run_hook(argv: list[str], payload: dict[str, Any], timeout: float) -> str:
    """Run the hook; returns how it ended: "exit 0", "exit 3", "killed after 5 s", "not started: ...",
    "killed: no reaper (...)"."""
    data = json.dumps(payload).encode() + b"\n"
    killed = False
    unguarded: OSError | None = None
    ended: list[subprocess.CompletedProcess[bytes]] = []

    async def deliver_cancel(proc: trio.Process) -> None:
        nonlocal killed
        killed = True
        _kill_group(proc)

    async def run(*, task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED) -> None:
        ended.append(await trio.run_process(
            argv, stdin=data, capture_stdout=True, capture_stderr=True, check=False,
            start_new_session=True, deliver_cancel=deliver_cancel, task_status=task_status))

    guard: int | None = None
    try:
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                try:
                    proc = await nursery.start(run)
                except OSError as e:
                    log.warning("alert hook %s could not be started: %s", argv[0], e)
                    return f"not started: {e}"
                try:
                    guard = reaper().guard_group(proc.pid)
                except OSError as e:     # nothing would kill it if the daemon died: it does not run
                    unguarded = e
                    nursery.cancel_scope.cancel()
    finally:
        reaper().release(guard)
    if unguarded is not None:
        log.warning("alert hook %s killed: no reaper to guard it (%s)", argv[0], unguarded)
        return f"killed: no reaper ({unguarded})"
    if ended:
        res = ended[0]
        if res.returncode != 0:
            log.warning("alert hook %s exited with %d: %s", argv[0], res.returncode,
                        res.stderr.decode(errors="replace").strip()[-300:])
        return f"exit {res.returncode}"
    log.warning("alert hook %s did not finish within %g s: killed", argv[0], timeout)
    return f"killed after {timeout:g} s" if killed else "timed out"
