"""The WASM runner: deterministic fuel and output, fuel and memory limits, refused modules, the
bytes ABI, the child's msgpack protocol, and WASM jobs under the executor (suspend, metering)."""
from __future__ import annotations

import hashlib

import pytest
import trio
import wasmtime

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import pack
from fognode.protocols.harvest.exec_errors import BadJobError, ChildProtocolError
from fognode.protocols.harvest.executor import Executor
from fognode.protocols.harvest.procstat import process_state
from fognode.protocols.harvest.wasm import WasmJob, WasmResult, run_wasm
from fognode.protocols.harvest.wasm_engine import WasmOutcome, WasmStatus, execute
from fognode.protocols.harvest.wasm_wire import WasmRequest, decode_answer
from tests.harvest.wat import BIG_MEMORY_WAT, IMPORTS_WAT, jobs_module, xorshift
from tests.polling import wait_until


MOD = jobs_module()


def run(export: str, *, module: bytes = MOD, args: tuple[int, ...] = (), input: bytes | None = None,
        fuel: int = 50_000_000, memory_bytes: int = 4 * 1024 * 1024,
        max_output: int = 1 << 20) -> WasmOutcome:
    """The engine in this process, with the tests' default limits."""
    return execute(module, export, args=args, input=input, fuel=fuel, memory_bytes=memory_bytes,
                   max_output=max_output)


# ---- the engine, in process (fast) --------------------------------------------------------

def test_results_and_fuel_are_deterministic() -> None:
    a, b = run("xorshift", args=(10_000,)), run("xorshift", args=(10_000,))
    assert a == b and a.status is WasmStatus.OK        
    assert a.results == (xorshift(10_000),)            
    assert a.fuel_consumed > 10_000                    
    more = run("xorshift", args=(20_000,))
    assert more.fuel_consumed > a.fuel_consumed        
    nan = run("nanbits")
    assert nan.results == (0x7FF8000000000000,)        


def test_an_infinite_loop_stops_at_its_fuel_budget() -> None:
    o = run("spin", fuel=123_456)
    assert o.status is WasmStatus.OUT_OF_FUEL and o.fuel_consumed == 123_456
    assert "123456" in o.message                        


def test_growing_past_the_memory_limit_fails_cleanly() -> None:
    o = run("hog", memory_bytes=1024 * 1024)
    assert o.status is WasmStatus.MEMORY_LIMIT, o      
    assert "1048576" in o.message                       
    big = run("x", module=bytes(wasmtime.wat2wasm(BIG_MEMORY_WAT)))
    assert big.status is WasmStatus.MEMORY_LIMIT and "pages" in big.message


def test_refused_modules_say_why() -> None:
    not_wasm = run("main", module=b"print('hello')")
    assert not_wasm.status is WasmStatus.INVALID_MODULE and "magic" in not_wasm.message
    broken = run("main", module=b"\0asm\x01\0\0\0\x99garbage")
    assert broken.status is WasmStatus.INVALID_MODULE
    imports = run("main", module=bytes(wasmtime.wat2wasm(IMPORTS_WAT)))
    assert imports.status is WasmStatus.INVALID_MODULE and "fd_write" in imports.message


def test_traps_and_bad_requests() -> None:
    trap = run("div", args=(0,))
    assert trap.status is WasmStatus.TRAP and "divide by zero" in trap.message
    assert run("div", args=(7,)).results == (14,)       
    assert run("nope").status is WasmStatus.BAD_REQUEST 
    assert run("div", args=(1, 2)).status is WasmStatus.BAD_REQUEST
    assert run("div", args=(2**40,)).status is WasmStatus.BAD_REQUEST
    liar = run("liar", input=b"x")
    assert liar.status is WasmStatus.BAD_REQUEST and "outside memory" in liar.message
    no_abi = run("fib", input=b"x")
    assert no_abi.status is WasmStatus.BAD_REQUEST      


def test_bytes_abi_round_trip() -> None:
    data = bytes(range(256)) * 300
    o = run("reverse", input=data)
    assert o.status is WasmStatus.OK and o.output == data[::-1]
    small = run("reverse", input=data, max_output=1000)
    assert small.status is WasmStatus.BAD_REQUEST and "limit" in small.message


# ---- the pipe protocol ----------------------------------------------------------------------

def test_request_and_answer_decoders_refuse_bad_fields() -> None:
    req = WasmRequest(MOD, "fib", (5,), None, 100, 65536, 10)
    assert WasmRequest.decode(req.encode()) == req
    good: dict[str, object] = {"v": 1, "module": MOD, "export": "fib", "args": [5], "input": None, "fuel": 100,
            "memory_bytes": 65536, "max_output": 10}
    bad: tuple[tuple[str, object], ...] = (("args", [True]), ("fuel", 0), ("memory_bytes", 1),
                                           ("export", 5))
    for key, value in bad:
        with pytest.raises(RemoteProtocolError, match=key):
            WasmRequest.decode(pack({**good, key: value}))
    answer: dict[str, object] = {"v": 1, "status": "ok", "message": "", "output": b"abc", "results": [1],
              "fuel_consumed": 5}
    assert decode_answer(pack(answer), 10).output == b"abc"
    wrong: tuple[tuple[str, object], ...] = (("status", "great"), ("output", b"x" * 11),
                                             ("results", ["1"]), ("fuel_consumed", -1))
    for key, value in wrong:
        with pytest.raises(ChildProtocolError, match=key):
            decode_answer(pack({**answer, key: value}), 10)
    with pytest.raises(ChildProtocolError):
        decode_answer(b"\x80\x04junk", 10)


def test_wasm_job_refuses_bad_fields() -> None:
    for kw, field in (({"module": b""}, "module"), ({"export": ""}, "export"),
                      ({"args": (True,)}, "args"), ({"fuel": 0}, "fuel"),
                      ({"memory_bytes": 10}, "memory_bytes"),
                      ({"args": (1,), "input": b"x"}, "args")):
        with pytest.raises(BadJobError) as e:
            WasmJob(**{"module": MOD, "export": "fib", **kw})
        assert e.value.field == field


# ---- through the executor (real child processes) -----------------------------------------------

async def test_a_job_metered_twice_gives_identical_fuel_and_output() -> None:
    ex = Executor(nice=0, poll_interval=0.05)
    data = b"fognode harvest " * 1000
    job = WasmJob(MOD, "reverse", input=data, fuel=10_000_000)
    a, b = await run_wasm(ex, job), await run_wasm(ex, job)
    assert a.ok and b.ok, (a.message, b.message)
    assert a.output == b.output == data[::-1]
    assert a.output_hash == b.output_hash == hashlib.blake2b(data[::-1], digest_size=32).digest()
    assert a.fuel_consumed == b.fuel_consumed > 0
    assert a.usage.fuel == a.fuel_consumed and a.usage.cpu_s > 0 and a.usage.peak_rss_bytes > 0
    ints = await run_wasm(ex, WasmJob(MOD, "xorshift", args=(5000,)))
    assert ints.results == (xorshift(5000),)


async def test_runner_reports_fuel_memory_and_refusals_from_the_child() -> None:
    ex = Executor(nice=0, poll_interval=0.05)
    spin = await run_wasm(ex, WasmJob(MOD, "spin", fuel=2_000_000))
    assert spin.status is WasmStatus.OUT_OF_FUEL and spin.fuel_consumed == 2_000_000
    hog = await run_wasm(ex, WasmJob(MOD, "hog", memory_bytes=2 * 1024 * 1024))
    assert hog.status is WasmStatus.MEMORY_LIMIT and not hog.ok
    junk = await run_wasm(ex, WasmJob(b"#!/bin/sh\nrm -rf /\n", "main"))
    assert junk.status is WasmStatus.INVALID_MODULE and "magic" in junk.message


async def test_a_wasm_job_is_suspended_and_resumed_with_the_same_fuel() -> None:
    ex = Executor(nice=0, poll_interval=0.05)
    job = WasmJob(MOD, "spin", fuel=10_000_000_000)    # ~2 s of CPU on a 2026 core
    results: list[WasmResult] = []
    async with trio.open_nursery() as nursery:
        async def go() -> None:
            results.append(await run_wasm(ex, job))
        nursery.start_soon(go)
        await wait_until(lambda: bool(ex.status()) and ex.status()[0].usage.cpu_s > 0.1, 30,
                         "the WASM child to run")
        pid = ex.status()[0].pid
        ex.suspend()
        await wait_until(lambda: process_state(pid) == "T", 10, "the WASM child to stop")
        ex.resume()
    [r] = results
    assert r.status is WasmStatus.OUT_OF_FUEL and r.fuel_consumed == 10_000_000_000
    assert r.usage.suspended_s > 0
