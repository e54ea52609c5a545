"""The persistent WASM runner (trio): one child process that runs WASM jobs one after another.

`wasm.run_wasm` starts a fresh Python + wasmtime child per job: about a quarter of a second of
interpreter start and imports before a job of a few milliseconds, and far more on a loaded
machine. A market agreement (or a burst) runs many small jobs, so its provider keeps one
runner for it: `async with open_wasm_worker(executor, name=...) as w: await w.run(job)`.

- The child is `wasm_child --serve`, started by `Executor.serve`: niced, memory- and
  CPU-limited, stopped and continued with all other work by the harvest policy, metered by the
  OS (its CPU seconds and memory go to the harvest session of whoever opened the worker, through
  the `on_start` / `on_end` hooks), killed over its memory limit.
- Jobs go over the child's pipes as frames (wasm_wire.py); the child keeps each compiled module
  (`ModuleCache`, keyed by BLAKE2b-256), and a module is sent once: after that a request names it
  by hash (the child asks for the bytes again if it dropped it). Each job runs in a fresh store
  with its own fuel budget and memory limit, so its outcome and fuel equal a fresh child's; the
  fuel each job reports is charged to the child's meter.
- The child's memory limit is `RUNNER_OVERHEAD` plus the largest linear memory a job asked for
  so far; a job that asks for more gets a new child with the larger limit. A child that dies
  (killed at its memory limit, crashed, refused our request) fails the job it was running with
  MEMORY_LIMIT or RUNNER_FAILED and the executor's reason, as a fresh child would, and the next
  job starts a new one. A job cancelled midway kills its child (its answer would come late).
- One job at a time (a lock): a worker is one core's worth of work.
"""
from __future__ import annotations

import itertools
from functools import partial
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import trio

from fognode.node.wire import digest
from fognode.protocols.harvest.exec_errors import ChildProtocolError
from fognode.protocols.harvest.executor import Executor
from fognode.protocols.harvest.jobs import JobPipe, JobSpec
from fognode.protocols.harvest.meter import Usage
from fognode.protocols.harvest.wasm import (CHILD_MODULE, RUNNER_OVERHEAD, WasmJob, WasmResult,
                                            failed_result, runner_ended)
from fognode.protocols.harvest.wasm_outcome import WasmOutcome, WasmStatus
from fognode.protocols.harvest.wasm_wire import FRAME_SLACK, decode_worker_answer, frame

OnStart = Callable[[str], None]
OnEnd = Callable[[str, Usage], None]


class _Gone(Exception):
    """The child is gone or broke the protocol: the job fails with `status` and `message`."""

    def __init__(self, status: WasmStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WasmWorker:
    """See the module docstring. Made by `open_wasm_worker`, which owns its children."""

    def __init__(self, executor: Executor, nursery: trio.Nursery, *, name: str,
                 nice: int | None, on_start: OnStart | None, on_end: OnEnd | None) -> None:
        self._executor = executor
        self._nursery = nursery
        self._name = name
        self._nice = nice
        self._on_start = on_start
        self._on_end = on_end
        self._lock = trio.Lock()
        self._pipe: JobPipe | None = None
        self._memory = 0            # the linear memory the current child was sized for
        self._held: set[bytes] = set()
        self._buf = bytearray()
        self._numbers = itertools.count(1)
        self.children = 0           # children started so far

    async def run(self, job: WasmJob) -> WasmResult:
        """Run `job` and return its WasmResult (as `wasm.run_wasm` would); its `usage` is the
        child's own CPU count for this job, the wall time and the fuel. ExecutorError if no
        child could be started."""
        async with self._lock:
            t0 = trio.current_time()
            pipe = await self._child(job.memory_bytes)
            key = digest(job.module)
            done = False
            try:
                out = await self._ask(pipe, job, key, resend=key not in self._held)
                if out is None:
                    out = await self._ask(pipe, job, key, resend=True)
                if out is None:
                    raise _Gone(WasmStatus.RUNNER_FAILED, "the WASM runner asked twice for the "
                                                          "module it was sent")
                self._held.add(key)
                outcome, cpu = out
                pipe.add_fuel(outcome.fuel_consumed)
                done = True
            except _Gone as g:
                self._drop()
                return failed_result(g.status, g.message,
                                     Usage(wall_s=trio.current_time() - t0))
            finally:
                if not done and self._pipe is pipe:   # cancelled midway: its answer would come late
                    self._drop(kill=True)
            usage = Usage(cpu_s=cpu, wall_s=trio.current_time() - t0, fuel=outcome.fuel_consumed)
            return WasmResult(outcome.status, outcome.message, outcome.output,
                              digest(outcome.output), outcome.results, outcome.fuel_consumed, usage)

    async def _ask(self, pipe: JobPipe, job: WasmJob, key: bytes,
                   resend: bool) -> tuple[WasmOutcome, float] | None:
        req = job.request()
        req = type(req)(req.module if resend else b"", req.export, req.args, req.input, req.fuel,
                        req.memory_bytes, req.max_output, key)
        try:
            await pipe.send_all(frame(req.encode()))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise await self._gone(pipe) from None
        payload = await self._frame(pipe, job.max_output + FRAME_SLACK)
        try:
            outcome, cpu = decode_worker_answer(payload, job.max_output)
        except ChildProtocolError as e:
            raise _Gone(WasmStatus.RUNNER_FAILED, str(e)) from None
        return None if outcome is None else (outcome, cpu)

    async def _frame(self, pipe: JobPipe, limit: int) -> bytes:
        while True:
            if len(self._buf) >= 4:
                n = int.from_bytes(self._buf[:4], "big")
                if n > limit:
                    raise _Gone(WasmStatus.RUNNER_FAILED,
                                f"the WASM runner's answer of {n} bytes is over {limit}")
                if len(self._buf) >= 4 + n:
                    data = bytes(self._buf[4:4 + n])
                    del self._buf[:4 + n]
                    return data
            chunk = await pipe.receive_some(max(65536, limit + 4 - len(self._buf)))
            if not chunk:
                raise await self._gone(pipe)
            self._buf += chunk

    async def _gone(self, pipe: JobPipe) -> _Gone:
        """Why the child stopped answering (waits for the executor to have reaped it)."""
        with trio.move_on_after(30):
            await pipe.exited.wait()
        r = pipe.result
        if r is None:
            return _Gone(WasmStatus.RUNNER_FAILED, "the runner process ended (no exit status)")
        return _Gone(*runner_ended(r))

    async def _child(self, memory: int) -> JobPipe:
        pipe = self._pipe
        if pipe is not None and not pipe.exited.is_set() and memory <= self._memory:
            return pipe
        self._drop()
        self._memory = max(memory, self._memory)
        label = f"{self._name} #{next(self._numbers)}"
        spec = JobSpec(module=CHILD_MODULE, argv=("--serve",), memory_bytes=self._memory + RUNNER_OVERHEAD,
                       name=label, nice=self._nice)
        pipe = await self._nursery.start(self._host, spec)
        self._pipe = pipe
        self.children += 1
        return pipe

    async def _host(self, spec: JobSpec, task_status: trio.TaskStatus[JobPipe]) -> None:
        """Own one child for its life; its usage goes to `on_end` however it ends."""
        if self._on_start is not None:
            self._on_start(spec.name)
        pipe: JobPipe | None = None
        try:
            async with trio.open_nursery() as n:
                pipe = await n.start(partial(self._executor.serve, spec))
                task_status.started(pipe)
        finally:
            if self._on_end is not None:
                usage = pipe.job.meter.usage(trio.current_time()) if pipe is not None else Usage(jobs=0)
                self._on_end(spec.name, usage)

    def _drop(self, *, kill: bool = False) -> None:
        pipe, self._pipe = self._pipe, None
        self._held.clear()
        self._buf.clear()
        if pipe is not None:
            pipe.release(kill=kill)

    async def aclose(self) -> None:
        """Release the child (it exits at the end of its stdin) and wait for it (bounded)."""
        pipe = self._pipe
        self._drop()
        if pipe is not None:
            with trio.move_on_after(10):
                await pipe.exited.wait()


@asynccontextmanager
async def open_wasm_worker(executor: Executor, *, name: str = "wasm worker", nice: int | None = None,
                           on_start: OnStart | None = None,
                           on_end: OnEnd | None = None) -> AsyncIterator[WasmWorker]:
    """A WasmWorker for the body of the `async with`; its child is released (and waited for,
    at most 10 s, then killed) when the body ends. `nice`: the children's nice (None: the
    executor's); `on_start(label)` / `on_end(label, usage)` are called around each child's life
    (label: "<name> #<n>", the executor job's name)."""
    async with trio.open_nursery() as nursery:
        worker = WasmWorker(executor, nursery, name=name, nice=nice, on_start=on_start,
                            on_end=on_end)
        try:
            yield worker
        finally:
            with trio.CancelScope(shield=True):
                await worker.aclose()
            nursery.cancel_scope.cancel()
