"""The persistent WASM runner (wasm_worker.py): the same outcome and fuel as a fresh child for
every kind of job, the module compiled once, one child for many jobs, suspended with all work,
restarted when it dies or is killed at its memory limit, killed when a job is cancelled."""
from __future__ import annotations

import os
import signal
from typing import Callable

import trio

from fognode.protocols.harvest.executor import Executor
from fognode.protocols.harvest.meter import Usage
from fognode.protocols.harvest.procstat import process_state
from fognode.protocols.harvest.wasm import WasmJob, WasmResult, run_wasm
from fognode.protocols.harvest.wasm_engine import ModuleCache, WasmStatus, execute
from fognode.protocols.harvest.wasm_worker import WasmWorker, open_wasm_worker
from tests.harvest.wat import jobs_module, xorshift
from tests.polling import wait_until

MOD = jobs_module()
LONG_FUEL = 10_000_000_000      # wasm instructions of the "spin" job a test suspends midway

JOBS = [
    WasmJob(MOD, "xorshift", args=(5000,)),
    WasmJob(MOD, "xorshift", args=(5001,)),
    WasmJob(MOD, "fib", args=(90,)),
    WasmJob(MOD, "reverse", input=b"fognode " * 500, fuel=10_000_000),
    WasmJob(MOD, "spin", fuel=3_000_000),                         # out of fuel
    WasmJob(MOD, "div", args=(0,)),                               # trap
    WasmJob(MOD, "hog", memory_bytes=2 * 1024 * 1024),            # memory.grow refused
    WasmJob(MOD, "nope", args=()),                                # bad request
    WasmJob(b"\0asm\x01\0\0\0\xff", "main"),                      # invalid module
    WasmJob(MOD, "xorshift", args=(5000,)),                       # cached module again
]


def test_the_module_cache_gives_the_same_outcome_and_fuel_as_a_fresh_engine() -> None:
    cache = ModuleCache(max_modules=1)
    for job in JOBS * 2:
        req = job.request()
        fresh = execute(req.module, req.export, args=req.args, input=req.input, fuel=req.fuel,
                        memory_bytes=req.memory_bytes, max_output=req.max_output)
        cached = execute(req.module, req.export, args=req.args, input=req.input, fuel=req.fuel,
                         memory_bytes=req.memory_bytes, max_output=req.max_output, cache=cache,
                         key=bytes(32) if req.module == MOD else b"x" * 32)
        assert cached == fresh, job.export
    assert cache.hits > 0


async def test_fuel_and_output_equal_a_fresh_child_for_every_kind_of_job() -> None:
    ex = Executor(nice=0, poll_interval=0.05)
    async with open_wasm_worker(ex, name="t") as w:
        got = [await w.run(job) for job in JOBS]
        assert w.children == 1, "one child for all of them"
    fresh = [await run_wasm(ex, job) for job in JOBS]
    for job, a, b in zip(JOBS, got, fresh):
        assert (a.status, a.message, a.output_hash, a.results, a.fuel_consumed) == \
               (b.status, b.message, b.output_hash, b.results, b.fuel_consumed), job.export
        assert a.usage.fuel == a.fuel_consumed
    assert got[0].results == (xorshift(5000),) and got[4].status is WasmStatus.OUT_OF_FUEL
    assert got[4].fuel_consumed == 3_000_000 and got[6].status is WasmStatus.MEMORY_LIMIT
    assert got[8].status is WasmStatus.INVALID_MODULE


async def test_the_child_is_metered_suspended_and_its_usage_reported() -> None:
    ex = Executor(nice=0, poll_interval=0.05)
    ended: list[tuple[str, Usage]] = []
    started: list[str] = []
    async with open_wasm_worker(ex, name="w", on_start=started.append,
                                on_end=lambda n, u: ended.append((n, u))) as w:
        quick = await w.run(WasmJob(MOD, "xorshift", args=(10,)))
        results = []
        async with trio.open_nursery() as n:
            async def go() -> None:
                results.append(await w.run(WasmJob(MOD, "spin", fuel=LONG_FUEL)))
            n.start_soon(go)
            # a tenth of a second of work, far from the job's end (LONG_FUEL is ~2 s of CPU
            # on a 2026 core; 10**9 was 0.2 s there, done before a 0.3 s mark was seen)
            await wait_until(lambda: bool(ex.status()) and ex.status()[0].usage.cpu_s > 0.1, 60,
                             "the runner to work on the long job")
            pid = ex.status()[0].pid
            ex.suspend()
            await wait_until(lambda: process_state(pid) == "T", 10, "the runner to stop")
            ex.resume()
        [r] = results
    assert r.status is WasmStatus.OUT_OF_FUEL and r.fuel_consumed == LONG_FUEL
    assert started == ["w #1"] and [n for n, _ in ended] == ["w #1"]
    usage = ended[0][1]
    assert usage.fuel == quick.fuel_consumed + LONG_FUEL
    assert usage.cpu_s >= r.usage.cpu_s * 0.5 > 0 and usage.suspended_s > 0 and usage.peak_rss_bytes > 0
    assert not ex.status(), "the child is gone"


async def spin_until(ex: Executor, w: WasmWorker, act: Callable[[int], None]) -> WasmResult:
    """Run an endless job on the worker, `act(pid of its child)` once it works; its result."""
    results: list[WasmResult] = []
    async with trio.open_nursery() as n:
        async def go() -> None:
            results.append(await w.run(WasmJob(MOD, "spin", fuel=10**12)))
        n.start_soon(go)
        await wait_until(lambda: ex.status() and ex.status()[0].usage.cpu_s > 0.1, 60,
                         "the runner to work")
        act(ex.status()[0].pid)
    return results[0]


async def test_a_dead_child_fails_its_job_and_the_next_job_gets_a_new_one() -> None:
    ex = Executor(nice=0, poll_interval=0.05)
    async with open_wasm_worker(ex, name="w") as w:
        assert (await w.run(JOBS[0])).ok
        dead = await spin_until(ex, w, lambda pid: os.kill(pid, signal.SIGKILL))
        assert dead.status is WasmStatus.RUNNER_FAILED and "SIGKILL" in dead.message
        again = await w.run(JOBS[0])
        assert again.ok and again.results == (xorshift(5000),) and w.children == 2


async def test_a_child_over_its_memory_limit_is_killed_and_replaced() -> None:
    ex = Executor(nice=0, poll_interval=0.02)
    async with open_wasm_worker(ex, name="w") as w:
        assert (await w.run(JOBS[0])).ok
        # an allowance below what the child holds: the meter kills it, with the reason
        big = await spin_until(ex, w, lambda pid: ex.set_allowance(1.0, 16 * 1024 * 1024))
        assert big.status is WasmStatus.MEMORY_LIMIT and "memory limit" in big.message, big.message
        ex.set_allowance(1.0, 1 << 30)
        again = await w.run(JOBS[0])
        assert again.ok and w.children == 2


async def test_a_cancelled_job_kills_its_child() -> None:
    ex = Executor(nice=0, poll_interval=0.05)
    async with open_wasm_worker(ex, name="w") as w:
        with trio.move_on_after(1.0):
            await w.run(WasmJob(MOD, "spin", fuel=10**12))
        await wait_until(lambda: not ex.status(), 30, "the child to be killed")
        assert (await w.run(JOBS[0])).ok and w.children == 2
