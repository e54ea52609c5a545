"""Waiting in async tests: poll a condition under a deadline, never sleep a fixed time."""
from __future__ import annotations

from typing import Callable

import trio


async def wait_until(cond: Callable[[], bool], timeout: float = 15.0, what: str = "",
                     interval: float = 0.02) -> None:
    """Await until `cond()` is true; trio.TooSlowError naming `what` after `timeout` seconds."""
    try:
        with trio.fail_after(timeout):
            while not cond():
                await trio.sleep(interval)
    except trio.TooSlowError:
        raise trio.TooSlowError(f"timed out after {timeout} s waiting for {what or cond}") from None
