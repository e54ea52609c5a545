"""The task process: where a daemon loads, trains, evaluates and exports FL tasks (torch).

Why a process and not a worker thread: local training is Python-level torch code that holds
the GIL between small ops, and `import torch` holds it for seconds. In a thread of the daemon
it competes with the event loop for the GIL whenever the process does not get a core to
itself. `python -m fognode.tools.bench.fl_training --load 12` (12 busy processes on 2 cores):
with training in a thread the loop's wake-ups were late by 28 ms at p99 (38 ms at worst);
with training in the task process, 4.3 ms (7.6 ms), as with nothing running (4.0 ms). On an
idle machine both are under 2 ms. In its own process, also, the daemon never imports torch, a
crash in a task cannot take the daemon down, and `training_nice` can lower training's CPU
priority.

One task process per daemon, started on first use (or, with `protocols.fl.task_process_at_start`,
when the role starts, importing torch at once: `TaskProcess.warm`) and restarted after it dies. Requests go
one at a time over its stdin and answers come back over its stdout, each a frame: 8-byte
big-endian length, then a msgpack map; parameter vectors travel as raw little-endian float32
bytes. Both pipes are widened to PIPE_BYTES (`widen_pipe`), so a frame of a model of up to
that size goes through in one write instead of 64 KiB at a time, each waiting for the other
process to be scheduled. The daemon writes a request in the event-loop step that asks for
it, before any checkpoint (the lock is taken without a hop when free, the frame goes straight
to the pipe), and reads an answer straight from the pipe, as much as it holds at each wake-up:
on a busy loop each checkpoint waits for every other ready task (model fetches served by a
coordinator as it starts training), and the old path's (lock, write, second read) cost a
training 18 ms on average (9 ms median) with 10 daemons on 2 cores at load 1-9.
The child runs with glibc malloc settings that keep freed memory
for reuse (`MALLOC_ENV`): without them a training request took ~590 page faults. Nothing is
pickled. A task that prints cannot corrupt the channel: the child moves its stdout to stderr
(the daemon's log) and answers on a private copy of the original descriptor.

The child keeps the last `CACHED_TASKS` prepared tasks. A request names the task by its full
`TaskKey`, so a child that restarted rebuilds a task it does not hold (deterministically, from
the key) instead of failing the session.

    python -m fognode.protocols.fl.training.process [--torch-threads N] [--nice K]

runs the child (the daemon starts it; by hand it only makes sense for debugging).
"""
from __future__ import annotations

import argparse
import logging
import os
import struct
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Callable

import msgpack
import numpy as np
import trio

from fognode.protocols.fl.session.rounds import TrainOutcome
from fognode.protocols.fl.tasks import ParamLayout, TaskError, TensorSpec, TrainConfig, TrainResult
from fognode.protocols.fl.training.modelstore import export_state_dict
from fognode.protocols.fl.training.prepared import LocalTask, PreparedTask, TaskKey, load_local, train_round
from fognode.protocols.fl.transfer.tensors import params_hash
from fognode.node.reaper import reaper

log = logging.getLogger("fognode.fl")

HEADER = struct.Struct(">Q")
CACHED_TASKS = 8
# Bytes of pipe buffer asked for each way. A training request carries its base model and the
# answer the trained one (0.58 MB each for synthetic_mlp); through the default 64 KiB pipe
# each went in 9-10 writes, each waiting for the other process to be scheduled: 16 ms median
# per request and 11 ms per answer with 10 daemons on 2 cores at load 12 (up to 1.1 s at
# worst). Linux lets an unprivileged process have up to /proc/sys/fs/pipe-max-size (1 MiB
# by default); elsewhere, or where that is lower, the pipes keep the largest size allowed.
PIPE_BYTES = 1 << 20
# glibc malloc settings of the child (its environment; other C libraries ignore them). By
# default glibc serves large blocks with mmap (from 128 KiB, a threshold it adjusts as it goes)
# and trims the heap's free top beyond M_TRIM_THRESHOLD, giving the memory back at each free;
# the next allocation of that size takes fresh pages, each a page fault: a synthetic_mlp round's tensors (gradients of 0.5 MB every SGD
# step) and frames (0.58 MB) made ~590 minor faults per training request, 1.2 ms of system
# CPU of ~11 ms. Blocks up to 32 MiB (glibc's largest mmap threshold) come from the heap, and
# up to 64 MiB of free heap is kept for reuse: ~23 faults per request, and 0.8 ms less of the
# child's CPU per training (10.65 -> 9.85 ms over 200 trainings; `python -m
# fognode.tools.bench.fl_training` prints the faults). The cost: the child keeps what its
# largest request used (a few models' worth) instead of returning it.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}
STOP_TIMEOUT = 5.0          # seconds a closing child gets to exit before it is killed


# == frames and encodings (both sides) =====================================================

def frame(obj: dict[str, Any]) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def frame_parts(obj: dict[str, Any]) -> tuple[bytes, bytes]:
    """`frame` as its length header and its body (written together with `os.writev`: the
    body, a model's worth of bytes, is not copied once more to join them)."""
    body = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)), body


def unframe(body: bytes) -> dict[str, Any]:
    obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    if not isinstance(obj, dict):
        raise TaskError("task process: a frame is not a map")
    return obj


def vec(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr, dtype="<f4").tobytes()


def unvec(b: Any, what: str) -> np.ndarray:
    if not isinstance(b, bytes) or len(b) % 4:
        raise TaskError(f"task process: {what} is not a float32 vector")
    return np.frombuffer(b, dtype="<f4").astype(np.float32)


def key_to_wire(key: TaskKey) -> list[Any]:
    return [key.name, [list(p) for p in key.params], key.init_seed, key.data_seed, key.data_index]


def key_from_wire(w: Any) -> TaskKey:
    try:
        name, params, init_seed, data_seed, data_index = w
        return TaskKey(str(name), tuple((str(k), float(v)) for k, v in params), int(init_seed),
                       int(data_seed), int(data_index))
    except (TypeError, ValueError) as e:
        raise TaskError(f"task process: malformed task key ({e})") from None


def layout_from_wire(w: Any) -> ParamLayout:
    try:
        return ParamLayout(tuple(TensorSpec(str(n), tuple(int(x) for x in shape), str(dt))
                                 for n, shape, dt in w))
    except (TypeError, ValueError) as e:
        raise TaskError(f"task process: malformed layout ({e})") from None


# == the child ==============================================================================

class TaskHost:
    """The child's state: prepared tasks (LRU) and torch's thread count, set once."""

    def __init__(self, torch_threads: int) -> None:
        self.torch_threads = torch_threads
        self.tasks: OrderedDict[TaskKey, tuple[LocalTask, ParamLayout, np.ndarray]] = OrderedDict()
        self._torch_ready = False

    def warm(self) -> None:
        """Import torch (seconds of CPU, once) and set its thread count."""
        if not self._torch_ready:
            import torch

            if self.torch_threads > 0:
                torch.set_num_threads(self.torch_threads)
            self._torch_ready = True

    def _task(self, key: TaskKey) -> tuple[LocalTask, ParamLayout, np.ndarray]:
        if self.torch_threads > 0:
            self.warm()
        got = self.tasks.get(key)
        if got is None:
            got = load_local(key)
            self.tasks[key] = got
            while len(self.tasks) > CACHED_TASKS:
                self.tasks.popitem(last=False)
        self.tasks.move_to_end(key)
        return got

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "warm":
            self.warm()
            return {"ok": True}
        key = key_from_wire(req.get("key"))
        if op == "prepare":
            _, layout, p0 = self._task(key)
            return {"ok": True, "layout": layout.to_wire(), "initial": vec(p0)}
        if op == "train":
            local, _, _ = self._task(key)
            c = req.get("cfg")
            if not (isinstance(c, list) and len(c) == 4):
                raise TaskError("task process: malformed training config")
            cfg = TrainConfig(int(c[0]), float(c[1]), int(c[2]), float(c[3]))
            out = train_round(local, unvec(req.get("base"), "base"), cfg, int(req.get("seed", 0)))
            r = out.result
            return {"ok": True, "params": vec(r.params), "num_samples": r.num_samples,
                    "loss": float(r.loss), "steps": r.steps, "base_loss": float(out.base_loss),
                    "base_accuracy": float(out.base_accuracy)}
        if op == "export":
            local, _, _ = self._task(key)
            export_state_dict(local.task, unvec(req.get("params"), "params"), Path(str(req.get("path"))))
            return {"ok": True}
        raise TaskError(f"task process: unknown request {op!r}")


def _read_exact(inp: BinaryIO, n: int) -> bytes | None:
    """`n` bytes of `inp` (None at its end). A buffered reader returns them in one read (no
    copy to join them) unless the stream ends."""
    first = inp.read(n) if n else b""
    if len(first) == n:
        return first
    if not first:
        return None
    buf = bytearray(first)
    while len(buf) < n:
        chunk = inp.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def serve(inp: BinaryIO, out: BinaryIO, host: TaskHost) -> None:
    """Answer requests until the parent closes the pipe."""
    while True:
        head = _read_exact(inp, HEADER.size)
        if head is None:
            return
        body = _read_exact(inp, HEADER.unpack(head)[0])
        if body is None:
            return
        try:
            resp = host.handle(unframe(body))
        except (TaskError, ValueError, RuntimeError) as e:
            resp = {"ok": False, "error": "task", "message": f"{e}"}
        except OSError as e:
            resp = {"ok": False, "error": "os", "errno": e.errno or 0,
                    "message": e.strerror or str(e)}
        except MemoryError:
            resp = {"ok": False, "error": "task", "message": "out of memory"}
        out.write(frame(resp))
        out.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fognode.protocols.fl.training.process")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--nice", type=int, default=0)
    args = ap.parse_args(argv)
    # answers go on a private copy of stdout; anything a task prints goes to stderr (the log)
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    if args.nice > 0:
        try:
            os.nice(args.nice)
        except OSError as e:
            print(f"task process: cannot lower its priority: {e}", file=sys.stderr)
    serve(sys.stdin.buffer, channel, TaskHost(args.torch_threads))
    return 0


# == the daemon's side ======================================================================

def widen_pipe(fd: int, size: int = PIPE_BYTES) -> int:
    """Ask for a pipe buffer of `size` bytes on the pipe `fd` (at most the system's limit);
    the pipe's buffer size in effect afterwards (0 where pipes cannot be resized)."""
    import fcntl        # here, not at the top: POSIX only, and only the daemon's side needs it

    setsz = getattr(fcntl, "F_SETPIPE_SZ", None)
    getsz = getattr(fcntl, "F_GETPIPE_SZ", None)
    if setsz is None or getsz is None:
        return 0
    try:
        return int(fcntl.fcntl(fd, setsz, size))
    except OSError:     # over /proc/sys/fs/pipe-max-size (EPERM) or the user's pipe quota
        pass
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        return int(fcntl.fcntl(fd, setsz, min(size, limit)))
    except (OSError, ValueError):
        return int(fcntl.fcntl(fd, getsz))


class TaskProcess:
    """The daemon's handle on its task process (a thin trio adapter). Calls are serialised; a
    call that fails because the child died, or is cancelled half-way, kills it and the next
    call starts a new one. Raises TaskError for a task's own errors and a dead child, OSError
    for an export the file system refused."""

    def __init__(self, *, torch_threads: int = 1, nice: int = 0, max_frame: int = 1 << 30,
                 on_start: Callable[[], object] | None = None) -> None:
        self.torch_threads = torch_threads
        self.on_start = on_start
        self.nice = nice
        self.max_frame = max_frame
        self.starts = 0
        self._proc: trio.Process | None = None
        self._dead: list[trio.Process] = []
        self._buf = bytearray()
        self._lock = trio.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def warm(self) -> None:
        """Start the child and have it import torch now, ahead of its first task (a cold
        start is what a first `prepare` waits for: seconds of CPU, far more on a busy machine)."""
        await self._call({"op": "warm"})

    async def prepare(self, key: TaskKey) -> PreparedTask:
        resp = await self._call({"op": "prepare", "key": key_to_wire(key)})
        layout = layout_from_wire(resp.get("layout"))
        p0 = unvec(resp.get("initial"), "initial model")
        if p0.size != layout.size:
            raise TaskError("task process: round-0 model does not match its layout")
        return PreparedTask(key, layout, p0, params_hash(p0))

    async def train(self, key: TaskKey, base: np.ndarray, cfg: TrainConfig, seed: int) -> TrainOutcome:
        resp = await self._call({"op": "train", "key": key_to_wire(key), "base": vec(base),
                                 "cfg": [cfg.epochs, cfg.lr, cfg.batch_size, cfg.mu], "seed": seed})
        try:
            result = TrainResult(unvec(resp.get("params"), "params"), int(resp["num_samples"]),
                                 float(resp["loss"]), int(resp["steps"]))
            return TrainOutcome(result, float(resp["base_loss"]), float(resp["base_accuracy"]))
        except (KeyError, TypeError, ValueError) as e:
            raise TaskError(f"task process: malformed training answer ({e})") from None

    async def export(self, key: TaskKey, params: np.ndarray, path: Path) -> None:
        await self._call({"op": "export", "key": key_to_wire(key), "params": vec(params),
                          "path": str(path)})

    async def aclose(self) -> None:
        """Close the child's stdin (it exits), wait up to STOP_TIMEOUT, then kill it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with trio.CancelScope(shield=True):
                try:
                    await proc.stdin.aclose()  # type: ignore[union-attr]
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                with trio.move_on_after(STOP_TIMEOUT):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        await self._reap()

    async def _reap(self) -> None:
        with trio.CancelScope(shield=True):
            for p in self._dead:
                await p.wait()
        self._dead.clear()

    async def _start(self) -> trio.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        if self._proc is not None:
            self._dead.append(self._proc)
        await self._reap()
        env = {k: v for k, v in os.environ.items() if k != "FOGNODE_PASSPHRASE"}
        for name, value in MALLOC_ENV.items():
            env.setdefault(name, value)      # (an operator's own setting wins)
        self._proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "fognode.protocols.fl.training.process",
             "--torch-threads", str(self.torch_threads), "--nice", str(self.nice)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        reaper().guard_process(self._proc.pid)     # dies with the daemon, even stopped or kill -9
        assert self._proc.stdin is not None and self._proc.stdout is not None
        for pipe in (self._proc.stdin, self._proc.stdout):
            fileno = getattr(pipe, "fileno", None)      # trio's FdStream: a pipe (POSIX)
            if fileno is not None:
                widen_pipe(fileno())
        self._buf.clear()
        self.starts += 1
        if self.on_start is not None:
            self.on_start()
        log.info("fl: task process started (pid %d, nice +%d)", self._proc.pid, self.nice)
        return self._proc

    def _abandon(self) -> None:
        """The channel is out of step (cancelled mid-call) or the child is gone: kill it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.returncode is None:
                proc.kill()
            self._dead.append(proc)

    async def _call(self, req: dict[str, Any]) -> dict[str, Any]:
        # A free lock is taken without a scheduler hop and the request is written in this
        # step (`_send`): on a busy event loop each hop waits for every other ready task.
        await trio.lowlevel.checkpoint_if_cancelled()     # (no hop unless cancelled)
        if self._lock.locked():
            await self._lock.acquire()
        else:
            self._lock.acquire_nowait()
        try:
            proc = await self._start()        # (no checkpoint while the child runs)
            assert proc.stdin is not None and proc.stdout is not None
            done = False
            try:
                await self._send(proc.stdin, frame_parts(req))
                resp = await self._receive(proc.stdout)
                done = True
            except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
                code = proc.returncode
                raise TaskError("the task process exited" + (f" (code {code})" if code is not None
                                                             else "")) from None
            finally:
                if not done:
                    self._abandon()
        finally:
            self._lock.release()
        if not resp.get("ok"):
            message = str(resp.get("message", "failed"))
            if resp.get("error") == "os":
                raise OSError(int(resp.get("errno", 0)), message)
            raise TaskError(message)
        return resp

    async def _send(self, stdin: trio.abc.SendStream, parts: tuple[bytes, bytes]) -> None:
        """Write a request frame. What the pipe takes goes now, before any checkpoint (the
        child starts on it while this task waits for the loop); the rest, if the pipe is
        full or cannot be written to directly, through the stream."""
        fileno = getattr(stdin, "fileno", None)       # trio's FdStream: a non-blocking pipe
        written = 0
        if fileno is not None:
            try:
                written = os.writev(fileno(), parts)
            except BlockingIOError:
                pass
            except OSError as e:        # EPIPE: the child is gone
                raise trio.BrokenResourceError(f"task process pipe: {e}") from e
        head, body = parts
        if written < len(head) + len(body):
            await stdin.send_all(memoryview(head + body)[written:])

    async def _receive(self, stdout: trio.abc.ReceiveStream) -> dict[str, Any]:
        fileno = getattr(stdout, "fileno", None)

        async def fill(n: int) -> None:
            while len(self._buf) < n:
                want = max(PIPE_BYTES, n - len(self._buf))
                if fileno is None:
                    chunk = await stdout.receive_some(want)
                else:       # read what the pipe holds; one checkpoint only to wait for more
                    try:
                        chunk = os.read(fileno(), want)
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(fileno())
                        continue
                    except OSError as e:
                        raise trio.BrokenResourceError(f"task process pipe: {e}") from e
                if not chunk:
                    raise EOFError
                self._buf += chunk

        await fill(HEADER.size)
        (n,) = HEADER.unpack(self._buf[:HEADER.size])
        if n > self.max_frame:
            raise TaskError(f"task process: a {n}-byte answer is over the {self.max_frame}-byte limit")
        await fill(HEADER.size + n)
        try:
            with memoryview(self._buf) as view, view[HEADER.size:HEADER.size + n] as body:
                return unframe(body)
        except TaskError:
            raise
        except Exception as e:   # msgpack's errors on a garbled answer
            raise TaskError(f"task process: undecodable answer ({type(e).__name__})") from None
        finally:
            del self._buf[:HEADER.size + n]


if __name__ == "__main__":
    sys.exit(main())
