"""cgroup v2 for harvest jobs: find a delegated cgroup the node may use, and one cgroup per job.

`probe_cgroup(parent)` decides whether the node may limit jobs with cgroup v2: the unified
hierarchy is mounted (from /proc/self/mountinfo), the parent (`parent`, or the cgroup this
process is in, from /proc/self/cgroup) is writable, offers the `memory` and `cpu` controllers
and has them enabled for its children (it tries `+memory +cpu` in `cgroup.subtree_control`,
which the kernel refuses in a non-root cgroup that holds processes: a daemon under systemd
needs `Delegate=yes` and a parent given in config), and a child cgroup can really be created.
The answer says why not when it is no, e.g. on a hybrid host whose memory controller is
still on cgroup v1.

When the parent is a writable cgroup v2 that does not offer memory and cpu (a hybrid host
whose controllers are bound to cgroup v1 hierarchies), jobs still get cgroups for what the v2
core gives without controllers (`CgroupSupport.limits` False): containment (the launcher puts
the job in its cgroup before the work runs, so every descendant stays in it, even one that
left the job's process group with setsid; `cgroup.kill` takes them all at once) and exact CPU
accounting of the whole tree (`cpu.stat` usage_usec, counting descendants that were never
reaped by the job); the limits stay RLIMIT_DATA, the meter and the duty cycle. The probe also
cleans up after daemons that are gone (a SIGKILL, or the reaper itself killed, see node/reaper.py):
it SIGKILLs what is left in their job cgroups (`cgroup.kill`) and removes the empty ones.

`JobCgroup` is one job's cgroup `fognode-<pid>-job<n>` under that parent: with limits,
`memory.max` (and `memory.swap.max` 0, so the limit is not dodged into swap;
`memory.oom.group` 1, so an OOM kill takes the whole job) and `cpu.max`, the OOM-kill count
from `memory.events`; always `cgroup.kill`, `cpu.stat`, and removal once it is empty. The job's
launcher writes its own pid to `cgroup.procs` before it runs the work, so no allocation
escapes the limit. Writes to cgroupfs are synchronous and take microseconds. (The development
host is hybrid: every controller but hugetlb is on cgroup v1, and a cgroup2 mount in a private
mount namespace, even with the v1 cpu and pids hierarchies unmounted there, still offers only
hugetlb, because the host's mounts keep those hierarchies alive. So the containment mode runs
there and is tested; the memory.max / cpu.max path is not, and its test skips, saying why.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fognode.protocols.harvest.limits import cgroup_cpu_max

NEEDED = ("memory", "cpu")


@dataclass(frozen=True)
class CgroupSupport:
    """Whether jobs get cgroups: `parent` when they do, `reason` when they do not."""

    available: bool
    parent: Path | None
    reason: str
    limits: bool = True      # memory and cpu controllers (False: containment and accounting only)


def cgroup2_mount(mountinfo: str) -> Path | None:
    """The mount point of the unified (v2) hierarchy in a /proc/self/mountinfo text."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if sep and right.split(" ", 1)[0] == "cgroup2":
            fields = left.split()
            if len(fields) >= 5:
                return Path(fields[4])
    return None


def own_cgroup(proc_cgroup: str) -> str | None:
    """This process's path in the unified hierarchy (the `0::` line of /proc/self/cgroup)."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def probe_cgroup(parent: Path | None = None) -> CgroupSupport:
    """Find out whether this node may give each job a cgroup v2 (never raises)."""
    if parent is None:
        mount = cgroup2_mount(_read(Path("/proc/self/mountinfo")))
        if mount is None:
            return CgroupSupport(False, None, "no cgroup v2 (unified) hierarchy is mounted")
        own = own_cgroup(_read(Path("/proc/self/cgroup")))
        if own is None:
            return CgroupSupport(False, None, "this process is in no cgroup v2")
        parent = mount / own.lstrip("/")
    if not parent.is_dir():
        return CgroupSupport(False, None, f"{parent} is not a cgroup directory")
    if not os.access(parent, os.W_OK):
        return CgroupSupport(False, None, f"{parent} is not writable (no delegation)")
    offered = _read(parent / "cgroup.controllers").split()
    missing = [c for c in NEEDED if c not in offered]
    _remove_stale(parent)
    if missing:
        return _containment(parent, f"{parent} does not offer the {'/'.join(missing)} "
                                    "controller(s) (a cgroup v1 or hybrid host?)")
    enabled = _read(parent / "cgroup.subtree_control").split()
    if not all(c in enabled for c in NEEDED):
        try:
            (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in NEEDED))
        except OSError as e:
            return CgroupSupport(False, None, f"cannot enable memory/cpu for children of {parent} "
                                 f"({e.strerror}; a cgroup holding processes needs a delegated "
                                 "sub-cgroup as parent)")
    probe = parent / f"fognode-{os.getpid()}-probe"
    try:
        probe.mkdir(exist_ok=True)
        ok = (probe / "memory.max").exists() and (probe / "cpu.max").exists()
        probe.rmdir()
    except OSError as e:
        return CgroupSupport(False, None, f"cannot create a cgroup under {parent} ({e.strerror})")
    if not ok:
        return CgroupSupport(False, None, f"a child of {parent} has no memory.max/cpu.max")
    return CgroupSupport(True, parent, f"jobs get cgroups under {parent}")


def _containment(parent: Path, why: str) -> CgroupSupport:
    """Jobs get cgroups without limits under `parent` if a child with cgroup.kill can be made
    there; else no cgroups, saying `why`."""
    probe = parent / f"fognode-{os.getpid()}-probe"
    try:
        probe.mkdir(exist_ok=True)
        ok = (probe / "cgroup.kill").exists() and (probe / "cpu.stat").exists()
        probe.rmdir()
    except OSError:
        ok = False
    if not ok:
        return CgroupSupport(False, None, why)
    return CgroupSupport(True, parent, f"{why}: jobs get cgroups under {parent} for containment "
                         "and CPU accounting only; limits by RLIMIT_DATA, the meter and the "
                         "duty cycle", limits=False)


def _remove_stale(parent: Path) -> None:
    """Kill what is left in the job cgroups of daemons that are gone, and remove them."""
    try:
        children = list(parent.glob("fognode-*-*"))
    except OSError:
        return
    for child in children:
        pid = child.name.split("-")[1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            try:
                if (child / "cgroup.kill").exists():
                    (child / "cgroup.kill").write_text("1")
                child.rmdir()
            except OSError:
                pass     # its processes are still dying: removed at a later start


class JobCgroup:
    """One job's cgroup; OSError from the kernel propagates to the executor."""

    def __init__(self, parent: Path, job_id: int, *, limits: bool = True) -> None:
        self.path = parent / f"fognode-{os.getpid()}-job{job_id}"
        self.limits = limits

    def create(self, memory_bytes: int, cpu_fraction: float) -> None:
        """Make the cgroup and set its limits, where it has them (before any process joins)."""
        self.path.mkdir()
        if self.limits:
            self.set_limits(memory_bytes, cpu_fraction)

    def cpu_seconds(self) -> float:
        """CPU seconds of every process that ran in the cgroup (`cpu.stat` usage_usec)."""
        for line in _read(self.path / "cpu.stat").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec" and value.strip().isdigit():
                return int(value) / 1e6
        return 0.0

    def set_limits(self, memory_bytes: int, cpu_fraction: float) -> None:
        """Apply (or change, live) the memory limit and CPU fraction."""
        (self.path / "memory.max").write_text(str(memory_bytes))
        swap = self.path / "memory.swap.max"
        if swap.exists():
            swap.write_text("0")
        (self.path / "cpu.max").write_text(cgroup_cpu_max(cpu_fraction, os.cpu_count() or 1))
        group = self.path / "memory.oom.group"
        if group.exists():   # an OOM kill takes the whole job, not one of its processes
            group.write_text("1")

    def oom_kills(self) -> int:
        """How many of the job's processes the kernel OOM-killed at memory.max."""
        for line in _read(self.path / "memory.events").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def kill(self) -> None:
        """SIGKILL every process in the cgroup (where the kernel has cgroup.kill)."""
        target = self.path / "cgroup.kill"
        if target.exists():
            try:
                target.write_text("1")
            except OSError:
                pass

    def remove(self) -> bool:
        """Remove the (empty) cgroup; False while it still holds processes."""
        try:
            self.path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            return False
