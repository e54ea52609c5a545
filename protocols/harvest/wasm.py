"""The WASM job runner (trio): a module run under wasmtime in a child process of the executor.

`await run_wasm(executor, job)` starts `wasm_child.py` through `Executor.run` (so the job is
niced, memory- and CPU-limited, stopped by `suspend()`, metered), hands it the `WasmJob` as one
msgpack request on stdin and decodes its one answer from stdout (wasm_wire.py; never pickle).
The result carries the engine's status and message, the output bytes and their BLAKE2b-256
hash, the integer results, the fuel consumed (deterministic: two honest nodes report the same
number for the same module, export, input and budget) and the process's `Usage` with the fuel
charged to it. The child's process limit is the WASM memory limit plus `RUNNER_OVERHEAD` (the
interpreter, wasmtime and the compiled module); if the process dies anyway (killed at that
limit, a crash) the status is MEMORY_LIMIT or RUNNER_FAILED with the executor's reason.
Cancellable like `Executor.run`. ABI and statuses: see wasm_engine.py.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from fognode.node.wire import digest
from fognode.protocols.harvest.exec_errors import BadJobError, ChildProtocolError
from fognode.protocols.harvest.executor import Executor
from fognode.protocols.harvest.jobs import JobEnd, JobResult, JobSpec
from fognode.protocols.harvest.meter import Usage
from fognode.protocols.harvest.wasm_outcome import I64, WasmStatus
from fognode.protocols.harvest.wasm_wire import (MAX_ARGS, MAX_EXPORT_NAME, MAX_FUEL, MAX_INPUT,
                                                 MAX_MODULE, MAX_OUTPUT, MAX_WASM_MEMORY,
                                                 MIN_WASM_MEMORY, WasmRequest, decode_answer)

CHILD_MODULE = "fognode.protocols.harvest.wasm_child"
RUNNER_OVERHEAD = 128 * 1024 * 1024
FRAME_SLACK = 4096


@dataclass(frozen=True)
class WasmJob:
    """A WASM job: `module` (binary WASM), `export` to call, and either integer `args` or bytes
    `input` (the bytes ABI); `fuel` budget; `memory_bytes` for the module's linear memory;
    `max_output` bytes. BadJobError names a bad field."""

    module: bytes
    export: str
    args: tuple[int, ...] = ()
    input: bytes | None = None
    fuel: int = 1_000_000_000
    memory_bytes: int = 64 * 1024 * 1024
    max_output: int = 1024 * 1024

    def __post_init__(self) -> None:
        if isinstance(self.module, (bytearray, memoryview)):   # wasmtime.wat2wasm gives bytearray
            object.__setattr__(self, "module", bytes(self.module))
        if not isinstance(self.module, bytes) or not 0 < len(self.module) <= MAX_MODULE:
            raise BadJobError(f"must be 1..{MAX_MODULE} bytes", field="module")
        if not isinstance(self.export, str) or not 0 < len(self.export) <= MAX_EXPORT_NAME:
            raise BadJobError(f"must be a name of 1..{MAX_EXPORT_NAME} characters", field="export")
        if len(self.args) > MAX_ARGS or not all(
                isinstance(a, int) and not isinstance(a, bool) and I64[0] <= a <= I64[1]
                for a in self.args):
            raise BadJobError(f"must be at most {MAX_ARGS} 64-bit integers", field="args")
        if self.input is not None and (not isinstance(self.input, bytes)
                                       or len(self.input) > MAX_INPUT):
            raise BadJobError(f"must be bytes of at most {MAX_INPUT}", field="input")
        if self.input is not None and self.args:
            raise BadJobError("give integer args or bytes input, not both", field="args")
        _int_in("fuel", self.fuel, 1, MAX_FUEL)
        _int_in("memory_bytes", self.memory_bytes, MIN_WASM_MEMORY, MAX_WASM_MEMORY)
        _int_in("max_output", self.max_output, 0, MAX_OUTPUT)

    def request(self) -> WasmRequest:
        return WasmRequest(self.module, self.export, tuple(self.args), self.input, self.fuel,
                           self.memory_bytes, self.max_output)


def _int_in(name: str, v: object, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadJobError(f"must be an integer in {lo}..{hi}, got {v!r}", field=name)


@dataclass(frozen=True)
class WasmResult:
    """The outcome of a WASM job (see the module docstring)."""

    status: WasmStatus
    message: str
    output: bytes
    output_hash: bytes
    results: tuple[int, ...]
    fuel_consumed: int
    usage: Usage

    @property
    def ok(self) -> bool:
        return self.status is WasmStatus.OK


async def run_wasm(executor: Executor, job: WasmJob, *, name: str = "wasm",
                   nice: int | None = None) -> WasmResult:
    """Run `job` in a child process of `executor` (at `nice`, None: the executor's) and return
    its WasmResult. Everything the module does wrong is a status, not an exception; raises
    ExecutorError if no child could be started. Cancellable (the child is killed and reaped)."""
    spec = JobSpec(module=CHILD_MODULE, input=job.request().encode(),
                   memory_bytes=job.memory_bytes + RUNNER_OVERHEAD,
                   max_output=job.max_output + FRAME_SLACK, name=name, nice=nice)
    res = await executor.run(spec)
    if res.end is JobEnd.EXITED and res.returncode == 0:
        try:
            outcome = decode_answer(res.stdout, job.max_output)
        except ChildProtocolError as e:
            return failed_result(WasmStatus.RUNNER_FAILED, str(e), res.usage)
        usage = replace(res.usage, fuel=outcome.fuel_consumed)
        return WasmResult(outcome.status, outcome.message, outcome.output,
                          digest(outcome.output), outcome.results, outcome.fuel_consumed, usage)
    return failed_result(*runner_ended(res), res.usage)


def runner_ended(res: JobResult) -> tuple[WasmStatus, str]:
    """The status and message of a job whose runner process ended without answering: killed
    at its memory limit (MEMORY_LIMIT) or anything else (RUNNER_FAILED, with its last words)."""
    status = WasmStatus.MEMORY_LIMIT if res.end is JobEnd.MEMORY else WasmStatus.RUNNER_FAILED
    tail = res.stderr_tail.decode(errors="replace").strip().splitlines()[-1:]
    detail = f": {tail[0]}" if tail and res.end is not JobEnd.MEMORY else ""
    return status, f"the runner process ended ({res.reason}){detail}"


def failed_result(status: WasmStatus, message: str, usage: Usage) -> WasmResult:
    """A job that produced nothing: `status` and why, and what it used."""
    return WasmResult(status, message, b"", digest(b""), (), 0, usage)
