"""Errors of the harvest executor and WASM runner, each saying whose fault it was.

- `ExecutorError`: this node could not start or control a job (our side: the OS refused a
  fork, a cgroup write, a pipe); the job itself may be fine.
- `BadJobError`: the caller asked for something the executor refuses (an empty command, a
  non-positive limit); the message names the field. The caller's fault.
- `ChildProtocolError`: a job's child process answered with bytes the runner's msgpack protocol
  does not accept (the child's fault: it crashed mid-frame or is not our runner).
"""
from __future__ import annotations

from fognode.node.errors import FognodeError, LocalProtocolError


class ExecutorError(FognodeError):
    """The executor could not start or control a job (an OS error on this node)."""


class BadJobError(LocalProtocolError, ValueError):
    """A job or allowance was refused before it ran; `field` names what was wrong."""

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class ChildProtocolError(FognodeError):
    """A job's child process sent a frame the runner protocol refuses (the child's fault)."""
