"""The first program of every harvest job: apply the limits to itself, then become the work.

    python -m fognode.protocols.harvest.launch --nice 10 [--rlimit-data BYTES]
        [--cgroup DIR] (--module fognode.x.y | -- argv...)

Runs in the job's child process (its own session and process group, made by the executor),
so nothing is left to race: it sets its nice value, RLIMIT_DATA (soft and hard: the work cannot
raise it again) and joins the job's cgroup by writing its pid to `cgroup.procs`, all before any
of the work's code runs; then it `exec`s `argv` (which inherits all three), or, for a Python
module of fognode (the WASM runner), runs it in this same interpreter to save a second start.
A setup step the OS refuses ends the child with exit status 125 and one line on stderr starting
with `harvest launcher:`; the executor reports it as a launch failure, not the job's fault.
"""
from __future__ import annotations

import argparse
import os
import resource
import runpy
import sys

LAUNCH_FAILED = 125
MARK = "harvest launcher:"


def _fail(msg: str) -> None:
    sys.stderr.write(f"{MARK} {msg}\n")
    sys.stderr.flush()
    os._exit(LAUNCH_FAILED)


def main(argv: list[str]) -> None:
    """Parse the launcher's flags, apply the limits, run the work (never returns on exec)."""
    parser = argparse.ArgumentParser(prog="fognode.protocols.harvest.launch")
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--rlimit-data", type=int, default=None)
    parser.add_argument("--cgroup", default=None)
    parser.add_argument("--module", default=None)
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    rest = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    try:
        if args.cgroup:
            with open(os.path.join(args.cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        if args.nice:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        if args.rlimit_data is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (args.rlimit_data, args.rlimit_data))
    except (OSError, ValueError) as e:
        _fail(f"cannot apply the job's limits: {e}")
    if args.module:
        if not args.module.startswith("fognode."):
            _fail(f"--module {args.module!r}: only fognode modules run in-process")
        sys.argv = [args.module, *rest]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        return
    if not rest:
        _fail("no command to run")
    try:
        os.execvp(rest[0], rest)
    except OSError as e:
        _fail(f"cannot run {rest[0]!r}: {e.strerror}")


if __name__ == "__main__":
    main(sys.argv[1:])
