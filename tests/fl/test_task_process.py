"""The task process (protocols/fl/training/process.py): a real child process over real pipes."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import trio

from fognode.protocols.fl.tasks import TaskError, TrainConfig
from fognode.protocols.fl.training.prepared import TaskKey, prepare_task, train_round
from fognode.protocols.fl.training.process import TaskProcess
from tests.polling import wait_until
from tests.steps import TaskSteps

PARAMS = {"max_samples": 60.0}
KEY = TaskKey.of("synthetic", PARAMS, 5, data_seed=3, data_index=2)
CFG = TrainConfig(epochs=1, lr=0.05, batch_size=10)


def run(fn) -> None:  # type: ignore[no-untyped-def]
    trio.run(fn)


def _dead(pid: int) -> bool:
    """Our child `pid` can be reaped (`waitid` with WNOWAIT: nothing is reaped here). A
    thread group's leader shows as a zombie in /proc while its other threads (torch's) are
    still exiting, and `waitpid` does not report it until they have; the task process's own
    liveness check is `waitpid`, so this waits for what it will see."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:       # already reaped
        return True
    return info is not None


def test_a_round_in_the_task_process_equals_the_same_round_here() -> None:
    local = prepare_task("synthetic", PARAMS, 5, data_seed=3, data_index=2)
    assert local.local is not None
    want = train_round(local.local, local.initial_params, CFG, 7)

    async def main() -> None:
        tp = TaskProcess(nice=10)
        try:
            prepared = await tp.prepare(KEY)
            assert prepared.layout == local.layout and prepared.initial_hash == local.initial_hash
            assert prepared.local is None            # the task lives in the child only
            got = await tp.train(KEY, prepared.initial_params, CFG, 7)
            assert np.array_equal(got.result.params, want.result.params)
            assert got.result.num_samples == want.result.num_samples
            assert got.base_loss == pytest.approx(want.base_loss)
            assert got.base_accuracy == pytest.approx(want.base_accuracy)
            # the child runs at the configured lower priority
            pid = tp.pid
            assert pid is not None
            assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 10 \
                or os.getpriority(os.PRIO_PROCESS, pid) == 19
        finally:
            await tp.aclose()
        assert tp.pid is None

    run(main)


def test_a_dead_task_process_is_replaced_and_rebuilds_the_task_from_its_key() -> None:
    async def main() -> None:
        tp = TaskProcess()
        try:
            prepared = await tp.prepare(KEY)
            first = await tp.train(KEY, prepared.initial_params, CFG, 1)
            # killed during a training: that call fails with the reason
            big = TrainConfig(epochs=200, lr=0.05, batch_size=1)    # seconds of work
            pid = tp.pid
            assert pid is not None

            async def kill_soon() -> None:
                await trio.sleep(0.3)
                os.kill(pid, signal.SIGKILL)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_soon)
                with pytest.raises(TaskError, match="task process exited"):
                    await tp.train(KEY, prepared.initial_params, big, 1)
            # the next call starts a new child, which rebuilds the task from the key it is sent
            again = await tp.train(KEY, prepared.initial_params, CFG, 1)
            assert np.array_equal(again.result.params, first.result.params)
            assert tp.starts == 2 and tp.pid not in (None, pid)
            # killed between calls: replaced before the next call, which does not fail
            pid2 = tp.pid
            assert pid2 is not None
            os.kill(pid2, signal.SIGKILL)
            # exited and waitable before the call: at load 36 it took over 0.2 s
            await wait_until(lambda: _dead(pid2), timeout=60, what="the killed task process to exit")
            again = await tp.train(KEY, prepared.initial_params, CFG, 1)
            assert np.array_equal(again.result.params, first.result.params) and tp.starts == 3
        finally:
            await tp.aclose()

    run(main)


def test_task_errors_come_back_with_their_reason_and_the_child_lives_on(tmp_path: Path) -> None:
    async def main() -> None:
        tp = TaskProcess()
        try:
            with pytest.raises(TaskError, match="no FL task named .no_such_task. is installed"):
                await tp.prepare(TaskKey.of("no_such_task", {}, 0, data_seed=0, data_index=0))
            with pytest.raises(TaskError, match="unknown parameter"):
                await tp.prepare(TaskKey.of("synthetic", {"gamma": 1.0}, 0, data_seed=0, data_index=0))
            prepared = await tp.prepare(KEY)
            with pytest.raises(TaskError, match="parameter vector has 3 values"):
                await tp.train(KEY, np.zeros(3, np.float32), CFG, 0)
            # export: a state dict file for the user; a path the file system refuses is an OSError
            out = tmp_path / "model.pt"
            await tp.export(KEY, prepared.initial_params, out)
            assert out.stat().st_size > 0 and not (tmp_path / "model.pt.tmp").exists()
            with pytest.raises(OSError, match="no directory"):
                await tp.export(KEY, prepared.initial_params, tmp_path / "missing" / "model.pt")
            assert tp.starts == 1
        finally:
            await tp.aclose()

    run(main)


def test_a_call_cancelled_half_way_kills_the_child_and_the_next_call_works() -> None:
    async def main() -> None:
        tp = TaskProcess()
        try:
            prepared = await tp.prepare(KEY)
            pid = tp.pid
            big = TrainConfig(epochs=200, lr=0.05, batch_size=1)    # seconds of work
            with trio.move_on_after(0.3):
                await tp.train(KEY, prepared.initial_params, big, 0)
            assert tp.pid is None                     # out of step: killed, not reused
            got = await tp.train(KEY, prepared.initial_params, CFG, 0)
            assert got.result.num_samples > 0 and tp.starts == 2 and tp.pid != pid
        finally:
            await tp.aclose()

    run(main)


def test_the_pipes_to_the_task_process_hold_a_whole_model_frame() -> None:
    """A training request and its answer each go through in one write (process.PIPE_BYTES),
    not 64 KiB at a time waiting for the other process to be scheduled."""
    import fcntl

    from fognode.protocols.fl.training.process import PIPE_BYTES

    limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())

    async def main() -> None:
        tp = TaskProcess()
        try:
            prepared = await tp.prepare(KEY)
            proc = tp._proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            for pipe in (proc.stdin, proc.stdout):
                assert fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) >= min(PIPE_BYTES, limit)
            got = await tp.train(KEY, prepared.initial_params, CFG, 3)
            assert got.result.params.shape == prepared.initial_params.shape
        finally:
            await tp.aclose()

    run(main)


def test_a_training_call_takes_one_scheduler_step_each_way() -> None:
    """The request is written in the step that asks for it (no hop for the free lock or before
    the write) and the whole answer is read in the step that wakes on it: on a busy event loop
    each extra step waits for every other ready task (process.TaskProcess._call). Counted
    with a trio instrument: the calling task's steps."""

    async def main() -> None:
        tp = TaskProcess()
        try:
            prepared = await tp.prepare(KEY)
            want = await tp.train(KEY, prepared.initial_params, CFG, 4)    # (the child is up)
            got: list[np.ndarray] = []

            async def one_training() -> None:
                got.append((await tp.train(KEY, prepared.initial_params, CFG, 4)).result.params)

            with TaskSteps("one training") as steps:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(one_training, name="one training")
            assert np.array_equal(got[0], want.result.params)
            # write, then wait; woken: read, decode, return (2; the path before took 5). A
            # third when the answer arrives in two pieces: a pipe write over PIPE_BUF is not
            # atomic, and under load the reader can wake on its first part (seen once in a
            # suite run on 2 busy cores). One when the OS deschedules this process between
            # the write and the first read for as long as the child trains: the answer is
            # then read whole in the writing step (seen once in CI on 2 busy cores)
            assert 1 <= steps.count <= 3
        finally:
            await tp.aclose()

    run(main)


def test_a_warmed_task_process_has_torch_loaded_before_its_first_task() -> None:
    """`warm` (protocols.fl.task_process_at_start) starts the child and imports torch; the
    first `prepare` then runs in the same child, without a second start."""
    async def main() -> None:
        tasks = TaskProcess()
        try:
            with trio.fail_after(120):
                await tasks.warm()
                pid = tasks.pid
                assert pid is not None and tasks.starts == 1
                maps = Path(f"/proc/{pid}/maps").read_text()
                assert "libtorch" in maps          # torch's shared libraries are loaded
                prepared = await tasks.prepare(KEY)
                assert prepared.initial_params.size > 0 and tasks.pid == pid and tasks.starts == 1
        finally:
            await tasks.aclose()
    run(main)


def test_the_task_process_keeps_freed_memory_for_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child starts with process.MALLOC_ENV (no page faults per request once warm); an
    operator's own setting of one of them wins."""
    from fognode.protocols.fl.training.process import MALLOC_ENV

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345678")

    async def main() -> None:
        tp = TaskProcess()
        try:
            with trio.fail_after(120):
                await tp.prepare(KEY)
            assert tp.pid is not None
            env = dict(item.split(b"=", 1) for item in
                       Path(f"/proc/{tp.pid}/environ").read_bytes().split(b"\0") if b"=" in item)
            assert env[b"MALLOC_MMAP_THRESHOLD_"] == MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"].encode()
            assert env[b"MALLOC_TRIM_THRESHOLD_"] == b"12345678"
        finally:
            await tp.aclose()

    run(main)
