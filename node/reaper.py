"""The reaper: a daemon's children die with it, however it dies (exit, crash, OOM, kill -9).

One small `sh` process per daemon process (`reaper()`, started on first use) holds the read
end of a pipe whose only write end is the daemon's. The daemon writes a line for each child it
starts (`guard_group`: a harvest job's process group and its cgroup; `guard_process`: one
process, the FL task process, which lives in the daemon's own group) and one when it has
reaped it (`release`). When the daemon dies, the kernel closes the write end; the reaper reads
end-of-file and SIGKILLs everything still registered, then exits:
- a job's cgroup through `cgroup.kill` (every process in it, also those that left its group),
- a job's process group (`kill -KILL -PGID`), a guarded process by its pid.
SIGKILL ends a stopped (SIGSTOP) process too. Nothing else would: a job's process group is in
a session of its own, so the kernel's SIGHUP+SIGCONT to newly orphaned groups with stopped
members never applies to it, and a job stopped when the daemon died stayed stopped forever.

A pid is killed only if /proc says it is still the process registered (its start time, field
22 of /proc/PID/stat, is the one read at registration), so a reused pid is never touched. A
process group whose leader is gone (reaped) is killed all the same: Linux does not hand out a
pid that is still some group's id. Where there is no /proc (other POSIX systems), no start time
is recorded and registered ids are killed unchecked; there is no cgroup.kill there either.

The reaper runs in a session of its own and ignores SIGINT, SIGTERM, SIGHUP, SIGQUIT and the
terminal stop signals, so Ctrl-C or a signal to the daemon's process group does not end it
first. It costs one `sh` (about a megabyte, a millisecond to start) per daemon, whatever the
number of jobs. Writes to it are single non-blocking `write`s of one short line (atomic on a
pipe). If it is gone or its pipe is full (someone stopped it), it is SIGKILLed (before its pipe
is closed, so it cannot kill our live children) and a new one is started with every live entry;
`guard_*` raise OSError only if no reaper can be started at all. A child started by `fork`
without `exec` closes its inherited write end (`os.register_at_fork`), which would otherwise
keep the reaper waiting.

Why not PR_SET_PDEATHSIG in each child: the signal fires when the *thread* that forked the child
exits, and trio forks children from a worker thread (`open_process` runs Popen through
`trio.to_thread`) that its thread cache retires after 10 s idle; it reaches the direct child
only, not a job's descendants; and the shell launcher cannot call prctl (a Python launcher
costs an interpreter start per job). The gap it leaves: a child started in the microseconds
before its `guard_*` line is written is not covered if the daemon dies just then; on hosts
where jobs get cgroups, `cgroup.probe_cgroup` kills leftovers of dead daemons at the next start.
"""
from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

SCRIPT = r"""
trap '' INT TERM HUP QUIT TSTP TTIN TTOU PIPE
ids=
started() {
  s=
  read -r s < "/proc/$1/stat" 2>/dev/null || return 0
  set -- ${s##*) }
  echo "${20}"
}
while read -r op token kind id start cg; do
  case $token in ''|*[!0-9]*) continue;; esac
  if [ "$op" = "+" ]; then
    case $id in ''|*[!0-9]*) continue;; esac
    eval "known=\${k_$token-}"
    [ -n "$known" ] || ids="$ids $token"
    eval "k_$token=\$kind i_$token=\$id s_$token=\$start c_$token=\$cg"
  else
    unset "k_$token" "i_$token" "s_$token" "c_$token"
    left=
    for t in $ids; do [ "$t" = "$token" ] || left="$left $t"; done
    ids=$left
  fi
done
for t in $ids; do
  eval "kind=\$k_$t id=\$i_$t start=\$s_$t cg=\$c_$t"
  if [ -n "$cg" ] && [ "$cg" != - ]; then echo 1 > "$cg/cgroup.kill" 2>/dev/null; fi
  now=$(started "$id")
  if [ "$kind" = g ]; then
    if [ -z "$now" ] || [ "$start" = - ] || [ "$now" = "$start" ]; then kill -KILL -"$id" 2>/dev/null; fi
  elif [ -n "$now" ] && { [ "$start" = - ] || [ "$now" = "$start" ]; }; then
    kill -KILL "$id" 2>/dev/null
  fi
done
"""


@dataclass(frozen=True)
class Guarded:
    """One registered child: a process group ("g", with its cgroup or None) or a process ("p")."""

    kind: str
    pid: int
    start: str          # its start time in clock ticks from /proc, "-" where there is none
    cgroup: str | None = None

    def line(self, token: int) -> bytes:
        """The reaper's registration line for this entry."""
        return f"+ {token} {self.kind} {self.pid} {self.start} {self.cgroup or '-'}\n".encode()


def start_time(pid: int) -> str:
    """`pid`'s start time (field 22 of /proc/PID/stat), "-" where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "-"
    fields = stat.rpartition(") ")[2].split()
    return fields[19] if len(fields) > 19 else "-"


class Reaper:
    """The daemon's side of the reaper (see the module docstring). Thread-safe."""

    def __init__(self, shell: str | None = None) -> None:
        self._shell = shell or shutil.which("sh") or "/bin/sh"
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._entries: dict[int, Guarded] = {}
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    @property
    def pid(self) -> int | None:
        """The reaper process's pid (None before the first guard)."""
        return self._proc.pid if self._proc is not None else None

    def guard_group(self, pgid: int, cgroup: Path | None = None) -> int:
        """Register a process group (and its cgroup) to kill when this process dies; the token
        to `release` it with. OSError if no reaper can be started."""
        if cgroup is not None and "\n" in str(cgroup):
            raise ValueError(f"a cgroup path with a newline: {cgroup!r}")
        return self._add(Guarded("g", pgid, start_time(pgid), None if cgroup is None else str(cgroup)))

    def guard_process(self, pid: int) -> int:
        """Register one process to kill when this process dies; the token. Process entries
        whose process has ended are dropped here, so an owner need not release them."""
        with self._lock:
            for token, e in list(self._entries.items()):
                if e.kind == "p" and start_time(e.pid) != e.start:
                    self._drop(token)
        return self._add(Guarded("p", pid, start_time(pid)))

    def release(self, token: int | None) -> None:
        """Forget an entry (its child was reaped). None and unknown tokens are ignored."""
        if token is None:
            return
        with self._lock:
            self._drop(token)

    def close(self) -> None:
        """Close the pipe (the reaper kills what is still registered, then exits) and wait
        for it (bounded). For this process's exit."""
        with self._lock:
            proc, fd, self._proc, self._fd = self._proc, self._fd, None, -1
            if fd >= 0:
                os.close(fd)
            if proc is not None:
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _add(self, entry: Guarded) -> int:
        with self._lock:
            token = next(self._tokens)
            self._entries[token] = entry
            self._send(entry.line(token))
            return token

    def _drop(self, token: int) -> None:
        if self._entries.pop(token, None) is not None:
            self._send(f"- {token}\n".encode())

    def _send(self, line: bytes) -> None:
        if self._fd >= 0 and self._proc is not None and self._proc.poll() is None:
            try:
                if os.write(self._fd, line) == len(line):
                    return
            except OSError:
                pass
        self._restart()

    def _restart(self) -> None:
        """A new reaper holding every live entry; the old one is killed first, so that closing
        its pipe cannot make it kill our children."""
        old, fd = self._proc, self._fd
        if old is not None:
            old.kill()
            old.wait()
        if fd >= 0:
            os.close(fd)
        self._proc, self._fd = None, -1
        proc = subprocess.Popen([self._shell, "-c", SCRIPT, "fognode-reaper"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd="/", start_new_session=True)
        assert proc.stdin is not None
        self._fd = os.dup(proc.stdin.fileno())   # non-inheritable, like the original
        proc.stdin.close()
        os.set_blocking(self._fd, False)
        self._proc = proc
        lines = b"".join(e.line(t) for t, e in self._entries.items())
        view = memoryview(lines)
        while view:     # a fresh pipe: the reaper drains it as we write
            try:
                view = view[os.write(self._fd, view):]
            except BlockingIOError:
                threading.Event().wait(0.001)

    def _forget(self) -> None:
        """In a child forked without exec: drop the inherited write end."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._proc, self._entries = -1, None, {}


_REAPER: Reaper | None = None
_MAKE = threading.Lock()


def reaper() -> Reaper:
    """This process's reaper (one per process, whatever the number of executors)."""
    global _REAPER
    with _MAKE:
        if _REAPER is None:
            _REAPER = Reaper()
            atexit.register(_REAPER.close)
        return _REAPER

