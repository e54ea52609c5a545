"""Reading a job's process tree from the OS (psutil, plus Linux's /proc children lists).

`tree_pids(root)` walks the tree through `/proc/<pid>/task/<tid>/children` (cheap: no scan of
every process) where the kernel has it, else psutil's `children(recursive=True)`.
`sample_tree(root)` sums over the tree: CPU seconds (user + system, plus the cumulative times of
children each process already reaped, so a grandchild that exited is not lost), resident memory,
and the root's peak resident memory (Linux `VmHWM`). It works on an exited-but-unreaped root (a
zombie keeps its CPU times), which is how the executor takes the job's final reading.

A process's own CPU time is read from its kernel CPU-time clock (`process_cpu_s`: Linux's
`clock_gettime` on the clock of another process, in nanoseconds, every thread of the process
counted, exited ones included). `/proc/<pid>/stat` and psutil give the same figure in the
kernel's 10 ms clock ticks, which metered a training of a few ms as 0 or 0.01 s; they remain the
fallback where the clock cannot be read (another OS), and for the times of reaped children
(the kernel offers those in ticks only). Calls are synchronous and take well under a millisecond per process; the
executor runs them in a worker thread so the event loop never waits on /proc.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil

from fognode.protocols.harvest.meter import Sample

_PROC = Path("/proc")
_CPUCLOCK_SCHED = 2     # linux/posix-timers.h: a process clock of type SCHED (user + system, in ns)


def _clock_cpu_s(pid: int) -> float | None:
    """User + system seconds of all threads of `pid` from its kernel CPU-time clock (the clock
    id is `MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)` as in glibc's `clock_getcpuclockid`,
    which Python does not expose); None where the clock cannot be read (not Linux, pid gone)."""
    if sys.platform != "linux":
        return None
    try:
        return time.clock_gettime((~pid << 3) | _CPUCLOCK_SCHED)
    except OSError:
        return None


def _proc_children(pid: int) -> list[int] | None:
    """Direct children from /proc (None when the kernel does not offer the lists)."""
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except FileNotFoundError:
        return []
    except OSError:
        return None
    out: list[int] = []
    for task in tasks:
        try:
            text = (task / "children").read_text()
        except FileNotFoundError:
            if task.exists():
                return None        # no CONFIG_PROC_CHILDREN
            continue
        except OSError:
            continue
        out.extend(int(p) for p in text.split())
    return out


def tree_pids(root: int) -> list[int]:
    """`root` and all its live descendants (root first); [] when root is gone."""
    if _PROC.is_dir():
        seen: list[int] = []
        todo = [root]
        while todo:
            pid = todo.pop()
            kids = _proc_children(pid)
            if kids is None:
                break
            seen.append(pid)
            todo.extend(k for k in kids if k not in seen)
        else:
            return seen if psutil.pid_exists(root) else []
    try:
        proc = psutil.Process(root)
        return [root, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return []


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def sample_tree(root: int) -> tuple[Sample, list[int]]:
    """One reading of the tree under `root` and the pids it covered (root first)."""
    pids = tree_pids(root)
    cpu = 0.0
    rss = 0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                t = proc.cpu_times()
                own = _clock_cpu_s(pid)
                cpu += (t.user + t.system if own is None else own) + t.children_user + t.children_system
                if proc.status() != psutil.STATUS_ZOMBIE:
                    rss += proc.memory_info().rss
        except psutil.Error:
            continue
    return Sample(cpu_s=cpu, rss_bytes=rss, hwm_bytes=_hwm(root) if pids else 0), pids


def process_state(pid: int) -> str:
    """The kernel's one-letter state of `pid` ('R', 'S', 'T' stopped, 'Z', ...), '' if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:][:1].decode()
    except (OSError, ValueError):
        try:
            return {psutil.STATUS_STOPPED: "T", psutil.STATUS_ZOMBIE: "Z"}.get(
                psutil.Process(pid).status(), "R")
        except psutil.Error:
            return ""


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of one process, to the nanosecond where its CPU-time clock
    can be read (module docstring), else in clock ticks; 0.0 if gone."""
    if (own := _clock_cpu_s(pid)) is not None:
        return own
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0

