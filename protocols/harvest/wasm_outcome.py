"""How a WASM job ended (`WasmStatus`, `WasmOutcome`) and the integer ranges of its ABI, apart
from the engine (wasm_engine.py) so that the daemon's side of the runner (wasm.py, wasm_wire.py,
wasm_worker.py) does not import wasmtime: only the job's child process runs it. Statuses and
the ABI: see wasm_engine.py."""
from __future__ import annotations

import enum
from dataclasses import dataclass

I32 = (-(2**31), 2**32 - 1)     # signed or unsigned spelling accepted; wasm sees the bits
I64 = (-(2**63), 2**64 - 1)


class WasmStatus(enum.Enum):
    """How a WASM job ended (see the module docstring)."""

    OK = "ok"
    OUT_OF_FUEL = "out_of_fuel"
    MEMORY_LIMIT = "memory_limit"
    TRAP = "trap"
    INVALID_MODULE = "invalid_module"
    BAD_REQUEST = "bad_request"
    RUNNER_FAILED = "runner_failed"   # set by the parent: the child process gave no answer


@dataclass(frozen=True)
class WasmOutcome:
    """What the engine reports: status, message, output bytes, integer results, fuel used."""

    status: WasmStatus
    message: str = ""
    output: bytes = b""
    results: tuple[int, ...] = ()
    fuel_consumed: int = 0
