"""The WASM runner's pipe protocol: one msgpack request on the child's stdin, one answer on its
stdout, each decoded by one validating decoder (never pickle).

Request (`harvest.WasmRequest`, version 1), the whole of stdin:
    {"v": 1, "module": bin, "export": str, "args": [int], "input": bin | nil,
     "fuel": int | nil, "memory_bytes": int, "max_output": int, "module_hash": bin(32) | nil}
Answer (`harvest.WasmAnswer`, version 1), the whole of stdout:
    {"v": 1, "status": str, "message": str, "output": bin, "results": [int], "fuel_consumed": int}

The persistent runner (wasm_worker.py) speaks the same messages, each in a frame (a 4-byte
big-endian length, then the msgpack bytes), one request and one answer at a time. Its requests
carry `module_hash` (BLAKE2b-256 of the module) and may leave `module` empty when the child
already compiled that module; a child that does not hold it answers `{"v": 1, "need": <hash>}`
and the parent sends it again with the bytes. Its answers add `"cpu_s"`: the child's CPU
seconds for that job (its own count, for the job's result; the session's meter reads the OS).

The request comes from this node (a decoding error in the child is our bug, reported as a
BAD_REQUEST answer); the answer comes from a process running foreign code under limits, so the
parent decodes it as untrusted (`ChildProtocolError` naming the field).
"""
from __future__ import annotations

from dataclasses import dataclass

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import DIGEST_LEN, Fields, pack, unpack
from fognode.protocols.harvest.exec_errors import ChildProtocolError
from fognode.protocols.harvest.wasm_outcome import I64, WasmOutcome, WasmStatus

VERSION = 1
MAX_MODULE = 16 * 1024 * 1024
MAX_INPUT = 16 * 1024 * 1024
MAX_OUTPUT = 16 * 1024 * 1024
MAX_ARGS = 64
MAX_EXPORT_NAME = 256
MAX_FUEL = 2**63 - 1
MAX_WASM_MEMORY = 4 * 1024**3
MIN_WASM_MEMORY = 65536
FRAME_SLACK = 4096


@dataclass(frozen=True)
class WasmRequest:
    """One job for the child: module, export, integer args or bytes input, fuel, limits."""

    module: bytes
    export: str
    args: tuple[int, ...]
    input: bytes | None
    fuel: int | None
    memory_bytes: int
    max_output: int
    module_hash: bytes | None = None     # the persistent runner's cache key (module may be b"")

    def encode(self) -> bytes:
        return pack({"v": VERSION, "module": self.module, "export": self.export,
                     "args": list(self.args), "input": self.input, "fuel": self.fuel,
                     "memory_bytes": self.memory_bytes, "max_output": self.max_output,
                     "module_hash": self.module_hash})

    @classmethod
    def decode(cls, data: bytes) -> WasmRequest:
        """RemoteProtocolError naming the field on anything wrong."""
        raw = unpack(data, max_size=MAX_MODULE + MAX_INPUT + FRAME_SLACK, what="harvest.WasmRequest")
        f = Fields(raw, "harvest.WasmRequest", versions={VERSION})
        module = f.bytes("module", max_len=MAX_MODULE)
        export = f.str("export", max_len=MAX_EXPORT_NAME)
        args = f.list("args", max_len=MAX_ARGS)
        for i, a in enumerate(args):
            if isinstance(a, bool) or not isinstance(a, int) or not I64[0] <= a <= I64[1]:
                raise RemoteProtocolError(f"harvest.WasmRequest: args[{i}] must be a 64-bit integer")
        data_in = f.bytes("input", max_len=MAX_INPUT, optional=True)
        fuel = f.int("fuel", lo=1, hi=MAX_FUEL, optional=True)
        memory = f.int("memory_bytes", lo=MIN_WASM_MEMORY, hi=MAX_WASM_MEMORY)
        max_output = f.int("max_output", lo=0, hi=MAX_OUTPUT)
        module_hash = f.bytes("module_hash", size=DIGEST_LEN, optional=True)
        f.done()
        return cls(module, export, tuple(args), data_in, fuel, memory, max_output, module_hash)


def encode_answer(o: WasmOutcome) -> bytes:
    """The child's answer for an engine outcome."""
    return pack({"v": VERSION, "status": o.status.value, "message": o.message, "output": o.output,
                 "results": list(o.results), "fuel_consumed": o.fuel_consumed})


def decode_answer(data: bytes, max_output: int) -> WasmOutcome:
    """Decode the child's stdout; ChildProtocolError naming what was wrong."""
    return _decode_answer(data, max_output, worker=False)[0]


def encode_worker_answer(o: WasmOutcome, cpu_s: float) -> bytes:
    """The persistent runner's answer: the engine outcome and the job's CPU seconds."""
    return pack({"v": VERSION, "status": o.status.value, "message": o.message, "output": o.output,
                 "results": list(o.results), "fuel_consumed": o.fuel_consumed,
                 "cpu_s": float(cpu_s)})


def encode_need(module_hash: bytes) -> bytes:
    """The persistent runner's answer when it does not hold the module named by hash."""
    return pack({"v": VERSION, "need": module_hash})


def decode_worker_answer(data: bytes, max_output: int) -> tuple[WasmOutcome | None, float]:
    """Decode one answer frame of the persistent runner: (outcome, CPU seconds), or (None, 0)
    when it asks for the module's bytes. ChildProtocolError naming what was wrong."""
    return _decode_answer(data, max_output, worker=True)


def frame(payload: bytes) -> bytes:
    """One frame of the persistent runner's pipes: the length, then the bytes."""
    return len(payload).to_bytes(4, "big") + payload


def _decode_answer(data: bytes, max_output: int, *, worker: bool) -> tuple[WasmOutcome | None, float]:
    try:
        raw = unpack(data, max_size=max_output + FRAME_SLACK, what="harvest.WasmAnswer")
        if worker and isinstance(raw, dict) and "need" in raw:
            f = Fields(raw, "harvest.WasmAnswer", versions={VERSION})
            f.bytes("need", size=DIGEST_LEN)
            f.done()
            return None, 0.0
        f = Fields(raw, "harvest.WasmAnswer", versions={VERSION})
        status_s = f.str("status", max_len=32)
        try:
            status = WasmStatus(status_s)
        except ValueError:
            raise RemoteProtocolError(f"harvest.WasmAnswer: unknown status {status_s!r}") from None
        message = f.str("message", max_len=4096)
        output = f.bytes("output", max_len=max_output)
        results = f.list("results", max_len=MAX_ARGS)
        for i, r in enumerate(results):
            if isinstance(r, bool) or not isinstance(r, int) or not I64[0] <= r <= I64[1]:
                raise RemoteProtocolError(f"harvest.WasmAnswer: results[{i}] must be a 64-bit integer")
        fuel = f.int("fuel_consumed", lo=0, hi=MAX_FUEL)
        cpu = f.float("cpu_s", lo=0.0, hi=1e9) if worker else 0.0
        f.done()
    except RemoteProtocolError as e:
        raise ChildProtocolError(f"the WASM runner's answer was refused: {e}") from None
    return WasmOutcome(status, message, output, tuple(results), fuel), cpu
