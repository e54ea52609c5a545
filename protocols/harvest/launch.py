"""The first program of every harvest job: a POSIX shell that applies the limits to itself and
then `exec`s the work (sans-IO: this module only builds the command line).

    sh -c LAUNCHER fognode-harvest CGROUP_DIR DATA_KIB NICE argv...

The child runs in its own session and process group (made by the executor). Before any of the
work's code runs, the shell joins the job's cgroup (writes its pid to `cgroup.procs`), sets
RLIMIT_DATA (`ulimit -d`, soft and hard: the work cannot raise it again) and execs the work
through `nice -n NICE` (niceness added to the daemon's own); the work inherits all three, so
nothing races the limits. Where the kernel groups sessions for the scheduler (Linux
autogroup, `/proc/sys/kernel/sched_autogroup_enabled`), a process's nice only ranks it inside
its own session, and each job is a new session: so the shell also sets the session's autogroup
nice (`/proc/self/autogroup`), without which a "nice 19" job would compete with the owner's
programs as an equal. A shell starts in about a millisecond, where a Python launcher would
cost a second interpreter start per job. A step the OS refuses ends the child with exit status
125 and one line on stderr starting with `harvest launcher:`; the executor reports it as a
launch failure, not the job's fault.
"""
from __future__ import annotations

from typing import Sequence

LAUNCH_FAILED = 125
MARK = "harvest launcher:"

SCRIPT = r"""
fail() { echo "harvest launcher: $*" >&2; exit 125; }
cg=$1 kib=$2 nice=$3
shift 3
if [ -n "$cg" ]; then
  echo $$ > "$cg/cgroup.procs" 2>/dev/null || fail "cannot join the cgroup $cg"
fi
if [ -n "$kib" ]; then
  ulimit -d "$kib" 2>/dev/null || fail "cannot set RLIMIT_DATA to $kib KiB"
fi
command -v "$1" >/dev/null 2>&1 || fail "cannot run '$1': No such file or directory"
if [ "$nice" != 0 ]; then
  if [ -w /proc/self/autogroup ]; then
    echo "$nice" > /proc/self/autogroup 2>/dev/null
  fi
  exec nice -n "$nice" "$@"
fi
exec "$@"
"""


def launch_command(shell: str, argv: Sequence[str], *, nice: int, rlimit_data: int | None,
                   cgroup: str | None) -> list[str]:
    """The child's command line: `shell` running SCRIPT, then the work's `argv`.
    `rlimit_data` in bytes (rounded down to KiB, as `ulimit -d` counts), None for no limit."""
    kib = "" if rlimit_data is None else str(max(1, rlimit_data // 1024))
    return [shell, "-c", SCRIPT, "fognode-harvest", cgroup or "", kib, str(nice), *argv]
