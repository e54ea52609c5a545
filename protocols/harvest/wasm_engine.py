"""Running one WASM job under wasmtime, deterministically, with fuel and a memory limit (no trio).

This is what the job's child process executes (`wasm_child.py`), and what the benchmark runs
bare. The engine is configured so that two honest nodes get the same output and the same fuel:
fuel metering on (`Config.consume_fuel`; fuel counts WASM operators and is fixed for a given
wasmtime version, 50.0.1 here), NaN canonicalisation (`cranelift_nan_canonicalization`, so
float results never depend on the CPU), no threads, no shared memory, no relaxed SIMD (whose
results are platform-defined), no memory64, single-threaded compilation (the compilation cache is off by default).
The module may import nothing: no WASI, no filesystem, no network, no clock, no randomness;
a module with any import is refused as invalid. The store is limited to one instance, one
memory of at most `memory_bytes` and 10 000 table elements.

The job's ABI (two modes):
- integers: `args` (each i32 or i64 as the export's parameter types say) go to the export;
  its integer results come back in `results`. Float parameters or results are refused.
- bytes: `input` is given to the module as bytes. The module exports `memory`, `alloc(len:
  i32) -> i32` (returns a pointer to `len` writable bytes in `memory`) and the entry
  `export(ptr: i32, len: i32) -> i64`, which returns `(out_ptr << 32) | out_len`; the output is
  `memory[out_ptr : out_ptr + out_len]`, at most `max_output` bytes. `alloc` and the entry run
  on the same fuel budget.

Outcomes (`WasmStatus`): OK; OUT_OF_FUEL (the budget ran out: fuel consumed = the budget);
MEMORY_LIMIT (the module asked for more memory than its limit at instantiation, or trapped
after `memory.grow` was refused at the limit); TRAP (with wasmtime's message: unreachable,
division by zero, out-of-bounds access, stack overflow, ...); INVALID_MODULE (not a WASM
binary, fails validation, or imports something); BAD_REQUEST (no such export, wrong argument
count or types, the bytes ABI not followed: the caller's or the module author's fault).
Stack overflow depends on the machine's native stack use: a module that recurses near the
limit is not guaranteed the same outcome on every node.

`ModuleCache` keeps the engines and compiled modules of a persistent runner (wasm_worker.py)
between jobs. A cached job gets a fresh `Store` and `Instance` like an uncached one, and fuel
counts only what runs in the store (instantiation and the calls, never compilation), so the
outcome and the fuel of a job are the same whether its module was cached or not.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import wasmtime

from fognode.protocols.harvest.wasm_outcome import I32, I64, WasmOutcome, WasmStatus

WASM_MAGIC = b"\0asm"
PAGE = 65536
MAX_WASM_STACK = 1024 * 1024
MAX_TABLE_ELEMENTS = 10_000
MAX_MESSAGE_CHARS = 512


def engine_config(*, fuel: bool = True) -> wasmtime.Config:
    """The deterministic configuration (fuel can be switched off for the benchmark only)."""
    c = wasmtime.Config()
    c.consume_fuel = fuel
    c.cranelift_nan_canonicalization = True
    c.wasm_threads = False
    c.shared_memory = False
    c.wasm_relaxed_simd = False
    c.wasm_memory64 = False
    c.parallel_compilation = False
    c.max_wasm_stack = MAX_WASM_STACK
    return c


class ModuleCache:
    """Engines (one per fuel mode) and compiled modules by content hash, least recently used
    dropped past `max_modules` modules or `max_bytes` bytes of WASM. A module that fails to
    compile is not kept (the next job reports INVALID_MODULE again)."""

    def __init__(self, *, max_modules: int = 8, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_modules = max_modules
        self.max_bytes = max_bytes
        self._engines: dict[bool, wasmtime.Engine] = {}
        self._modules: OrderedDict[tuple[bool, bytes], tuple[wasmtime.Module, int]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def engine(self, fuel: bool) -> wasmtime.Engine:
        e = self._engines.get(fuel)
        if e is None:
            e = self._engines[fuel] = wasmtime.Engine(engine_config(fuel=fuel))
        return e

    def module(self, fuel: bool, key: bytes, module_bytes: bytes) -> wasmtime.Module:
        """The compiled module for `key` (its content hash); WasmtimeError if it is invalid."""
        got = self._modules.get((fuel, key))
        if got is not None:
            self._modules.move_to_end((fuel, key))
            self.hits += 1
            return got[0]
        self.misses += 1
        m = wasmtime.Module(self.engine(fuel), module_bytes)
        self._modules[(fuel, key)] = (m, len(module_bytes))
        while len(self._modules) > self.max_modules or (
                len(self._modules) > 1 and sum(n for _, n in self._modules.values()) > self.max_bytes):
            self._modules.popitem(last=False)
        return m

    def holds(self, fuel: bool, key: bytes) -> bool:
        return (fuel, key) in self._modules


class _Refused(Exception):
    def __init__(self, status: WasmStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _message(e: BaseException) -> str:
    text = " | ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text[:MAX_MESSAGE_CHARS] if text else type(e).__name__


def _int_types(types: list[wasmtime.ValType], what: str) -> list[tuple[int, int]]:
    ranges = []
    for t in types:
        if t == wasmtime.ValType.i32():
            ranges.append(I32)
        elif t == wasmtime.ValType.i64():
            ranges.append(I64)
        else:
            raise _Refused(WasmStatus.BAD_REQUEST, f"the export's {what} include {t}: "
                           "only i32 and i64 are supported")
    return ranges


def _wrap(v: int, lo_hi: tuple[int, int]) -> int:
    """An integer in the signed representation wasmtime's Python API expects."""
    bits = 32 if lo_hi == I32 else 64
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >= 1 << (bits - 1) else v


class _Run:
    def __init__(self, module_bytes: bytes, memory_bytes: int, fuel: int | None,
                 cache: ModuleCache | None = None, key: bytes = b"") -> None:
        metered = fuel is not None
        if not (cache is not None and cache.holds(metered, key)) \
                and not module_bytes.startswith(WASM_MAGIC):
            raise _Refused(WasmStatus.INVALID_MODULE, "not a WebAssembly binary (no \\0asm magic)")
        self.engine = cache.engine(metered) if cache is not None else \
            wasmtime.Engine(engine_config(fuel=metered))
        try:
            self.module = cache.module(metered, key, module_bytes) if cache is not None else \
                wasmtime.Module(self.engine, module_bytes)
        except wasmtime.WasmtimeError as e:
            raise _Refused(WasmStatus.INVALID_MODULE, f"invalid module: {_message(e)}") from None
        imports = [f"{i.module}.{i.name}" for i in self.module.imports]
        if imports:
            raise _Refused(WasmStatus.INVALID_MODULE,
                           f"the module imports {', '.join(imports[:5])}: jobs may import nothing")
        self.store = wasmtime.Store(self.engine)
        self.store.set_limits(memory_size=memory_bytes, table_elements=MAX_TABLE_ELEMENTS,
                              instances=1, tables=4, memories=1)
        self.fuel = fuel
        if fuel is not None:
            self.store.set_fuel(fuel)
        self.memory_bytes = memory_bytes
        self.instance: wasmtime.Instance | None = None

    def consumed(self) -> int:
        if self.fuel is None:
            return 0
        try:
            return self.fuel - self.store.get_fuel()
        except wasmtime.WasmtimeError:
            return self.fuel

    def memory(self) -> wasmtime.Memory | None:
        if self.instance is None:
            return None
        for ext in self.instance.exports(self.store).by_index:
            if isinstance(ext, wasmtime.Memory):
                return ext
        return None

    def failure(self, e: Exception) -> _Refused:
        """Classify a trap or error raised while instantiating or calling."""
        code = e.trap_code if isinstance(e, wasmtime.Trap) else None
        msg = _message(e)
        if code == wasmtime.TrapCode.OUT_OF_FUEL or "all fuel consumed" in str(e):
            return _Refused(WasmStatus.OUT_OF_FUEL, f"out of fuel after {self.fuel} units")
        mem = self.memory()
        if self.instance is None and "memory" in msg and ("limit" in msg or "exceeds" in msg):
            return _Refused(WasmStatus.MEMORY_LIMIT,
                            f"the module needs more memory than its limit of "
                            f"{self.memory_bytes} bytes: {msg}")
        if mem is not None and mem.data_len(self.store) + PAGE > self.memory_bytes:
            return _Refused(WasmStatus.MEMORY_LIMIT,
                            f"memory.grow was refused at {mem.data_len(self.store)} bytes (limit "
                            f"{self.memory_bytes} bytes) and the module then trapped: {msg}")
        return _Refused(WasmStatus.TRAP, f"trap: {msg}")

    def func(self, name: str) -> wasmtime.Func:
        assert self.instance is not None
        ext = self.instance.exports(self.store).get(name)
        if not isinstance(ext, wasmtime.Func):
            raise _Refused(WasmStatus.BAD_REQUEST, f"the module exports no function {name!r}")
        return ext


def _call_ints(run: _Run, export: str, args: tuple[int, ...]) -> tuple[int, ...]:
    f = run.func(export)
    ty = f.type(run.store)
    ranges = _int_types(list(ty.params), "parameters")
    _int_types(list(ty.results), "results")
    if len(args) != len(ranges):
        raise _Refused(WasmStatus.BAD_REQUEST,
                       f"{export!r} takes {len(ranges)} argument(s), {len(args)} given")
    for i, (a, (lo, hi)) in enumerate(zip(args, ranges)):
        if not lo <= a <= hi:
            raise _Refused(WasmStatus.BAD_REQUEST, f"argument {i} = {a} does not fit its type")
    out = f(run.store, *(_wrap(a, r) for a, r in zip(args, ranges)))
    if out is None:
        return ()
    return tuple(out) if isinstance(out, list) else (out,)


def _call_bytes(run: _Run, export: str, data: bytes, max_output: int) -> bytes:
    mem = run.memory()
    if mem is None:
        raise _Refused(WasmStatus.BAD_REQUEST, "the bytes ABI needs an exported memory")
    alloc = run.func("alloc")
    entry = run.func(export)
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    if list(alloc.type(run.store).params) != [i32] or list(alloc.type(run.store).results) != [i32]:
        raise _Refused(WasmStatus.BAD_REQUEST, "the bytes ABI needs alloc(len: i32) -> i32")
    ety = entry.type(run.store)
    if list(ety.params) != [i32, i32] or list(ety.results) != [i64]:
        raise _Refused(WasmStatus.BAD_REQUEST,
                       f"the bytes ABI needs {export}(ptr: i32, len: i32) -> i64")
    ptr = alloc(run.store, len(data)) & 0xFFFFFFFF
    if data:
        if ptr + len(data) > mem.data_len(run.store):
            raise _Refused(WasmStatus.BAD_REQUEST, f"alloc returned {ptr}, outside memory")
        mem.write(run.store, data, ptr)
    packed = entry(run.store, ptr, len(data)) & 0xFFFFFFFFFFFFFFFF
    out_ptr, out_len = packed >> 32, packed & 0xFFFFFFFF
    if out_len > max_output:
        raise _Refused(WasmStatus.BAD_REQUEST,
                       f"the output is {out_len} bytes, over the limit of {max_output}")
    if out_ptr + out_len > mem.data_len(run.store):
        raise _Refused(WasmStatus.BAD_REQUEST,
                       f"the output [{out_ptr}, +{out_len}) lies outside memory")
    return bytes(mem.read(run.store, out_ptr, out_ptr + out_len))


def execute(module: bytes, export: str, *, args: tuple[int, ...] = (), input: bytes | None = None,
            fuel: int | None, memory_bytes: int, max_output: int,
            cache: ModuleCache | None = None, key: bytes = b"") -> WasmOutcome:
    """Run one job; never raises for anything the module or the request does (see statuses).
    `fuel=None` runs without fuel metering (benchmarks only: nothing bounds the run then).
    With `cache`, the engine and the module compiled for `key` (the module's content hash,
    which the caller vouches for) are reused; the outcome is the same."""
    run: _Run | None = None
    try:
        run = _Run(module, memory_bytes, fuel, cache, key)
        try:
            run.instance = wasmtime.Instance(run.store, run.module, [])
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise run.failure(e) from None
        try:
            if input is None:
                results = _call_ints(run, export, args)
                return WasmOutcome(WasmStatus.OK, "", b"", results, run.consumed())
            output = _call_bytes(run, export, input, max_output)
            return WasmOutcome(WasmStatus.OK, "", output, (), run.consumed())
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise run.failure(e) from None
    except _Refused as r:
        return WasmOutcome(r.status, r.message, b"", (), run.consumed() if run else 0)
