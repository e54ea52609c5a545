"""Run the operator's alert hook: a program (argv, never a shell) with the alert as JSON on stdin.

The program is started in its own process group; if it has not exited after `timeout`
seconds, the whole group is killed (SIGKILL) and that is logged. Its exit status and the
tail of its stderr are logged; a failing hook never affects the node. Awaits the program's
end (at most `timeout` seconds plus the time to reap it); cancellable (the group is killed).
"""
from __future__ import annotations

import json
import logging
import os
import signal
from typing import Any

import trio

log = logging.getLogger("fognode.monitor")


def _kill_group(proc: trio.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def run_hook(argv: list[str], payload: dict[str, Any], timeout: float) -> str:
    """Run the hook; returns how it ended: "exit 0", "exit 3", "killed after 5 s", "not started: ..."."""
    data = json.dumps(payload).encode() + b"\n"
    killed = False

    async def deliver_cancel(proc: trio.Process) -> None:
        nonlocal killed
        killed = True
        _kill_group(proc)

    try:
        with trio.move_on_after(timeout):
            res = await trio.run_process(argv, stdin=data, capture_stdout=True, capture_stderr=True,
                                         check=False, start_new_session=True, deliver_cancel=deliver_cancel)
            outcome = f"exit {res.returncode}"
            if res.returncode != 0:
                log.warning("alert hook %s exited with %d: %s", argv[0], res.returncode,
                            res.stderr.decode(errors="replace").strip()[-300:])
            return outcome
    except OSError as e:
        log.warning("alert hook %s could not be started: %s", argv[0], e)
        return f"not started: {e}"
    log.warning("alert hook %s did not finish within %g s: killed", argv[0], timeout)
    return f"killed after {timeout:g} s" if killed else "timed out"

