"""Run the atheris (libFuzzer) fuzz targets of tests/fuzz/targets.py.

    python -m tests.fuzz.run                          # every target, 5 min each (the long run)
    python -m tests.fuzz.run ledger_order --seconds 60
    python -m tests.fuzz.run --mixed --seconds 40     # what CI runs (tests/fuzz/test_fuzz_short.py)
    python -m tests.fuzz.run --list

Each target runs in its own process (atheris.Fuzz never returns), with fognode's modules
instrumented for coverage (`atheris.instrument_imports(include=["fognode"])`), seeded from the
committed corpus tests/fuzz/corpus/<target>/ and the regression inputs tests/fuzz/crashes/<target>/.
New interesting inputs go to `<workdir>/corpus/<target>/` (default workdir .fuzz/, kept between
runs, so a long run resumes where the last stopped); a crashing input is written to
`<workdir>/artifacts/<target>/crash-*` and the run of that target fails. Logs: `<workdir>/logs/`.

`--mixed` fuzzes all targets in ONE process (the first input byte picks the target), so the
~3 s of instrumenting fognode is paid once: CI's short run. Per input libFuzzer enforces `-timeout` (a hang is a crash) and `-rss_limit_mb`. The summary
gives, per target, executions, coverage (libFuzzer's `cov` = covered edges, `ft` = features),
corpus size, speed and the outcome; exit status 1 if any target crashed.

Reproduce a crash: `python -m tests.fuzz.run TARGET --replay FILE` (no instrumentation; prints
the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"
MIXED = "mixed"            # the pseudo-target that fuzzes every target in one process
_STATS = re.compile(r"#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+).*?exec/s: (\d+)")


@dataclass
class Outcome:
    target: str
    execs: int = 0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    exec_s: int = 0
    seconds: float = 0.0
    status: str = "?"
    log: Path | None = None

    def row(self) -> str:
        return (f"{self.target:22} {self.execs:>10} {self.cov:>6} {self.ft:>7} {self.corpus:>6} "
                f"{self.exec_s:>7} {self.seconds:>7.1f}  {self.status}")


HEADER = f"{'target':22} {'execs':>10} {'cov':>6} {'ft':>7} {'corpus':>6} {'exec/s':>7} {'secs':>7}  outcome"


def child(name: str, libfuzzer_args: list[str]) -> None:
    """In the fuzzing process: instrument fognode, then hand over to libFuzzer (never returns)."""
    import atheris
    already = sorted(m for m in sys.modules if m == "fognode" or m.startswith("fognode."))
    if already:
        raise SystemExit(f"fognode modules imported before instrumentation: {already[:5]}")
    with atheris.instrument_imports(include=["fognode"]):
        from tests.fuzz.targets import TARGETS, run_one
    if name == MIXED:
        one_input = _mixed_input(list(TARGETS), run_one, os.environ.get("FOGNODE_FUZZ_COUNTS"))
    elif name in TARGETS:
        def one_input(data: bytes) -> None:
            run_one(name, data)
    else:
        raise SystemExit(f"unknown fuzz target {name!r}; known: {', '.join(TARGETS)}")

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


def _mixed_input(names: list[str], run_one: Callable[[str, bytes], None],
                 counts_path: str | None) -> Callable[[bytes], None]:
    """The mixed target: the first byte picks the target (index in TARGETS), the rest is its
    input. Executions per target are written to `counts_path` every 2048 inputs."""
    counts = dict.fromkeys(names, 0)
    total = [0]

    def one_input(data: bytes) -> None:
        if not data:
            return
        name = names[data[0] % len(names)]
        counts[name] += 1
        total[0] += 1
        if counts_path and total[0] % 2048 == 0:
            Path(counts_path).write_text(json.dumps(counts))
        try:
            run_one(name, data[1:])
        except Exception:
            print(f"\nfuzz target {name} failed on this input", file=sys.stderr, flush=True)
            raise
    return one_input


def mixed_seeds(dest: Path, names: list[str]) -> Path:
    """The mixed target's seed corpus: every target's seeds and regression inputs, each
    prefixed with the target's index byte."""
    dest.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        for base in (CORPUS, CRASHES):
            d = base / n
            for p in sorted(d.iterdir()) if d.is_dir() else []:
                (dest / f"{n}-{base.name}-{p.name}").write_bytes(bytes([i]) + p.read_bytes())
    return dest


def replay(name: str, files: list[Path]) -> int:
    """Run inputs through a target without libFuzzer; the first bug's traceback is printed."""
    import traceback

    from tests.fuzz.targets import TARGETS, run_one
    bad = 0
    for f in files:
        for p in sorted(f.iterdir()) if f.is_dir() else [f]:
            try:
                if name == MIXED:
                    _mixed_input(list(TARGETS), run_one, None)(p.read_bytes())
                else:
                    run_one(name, p.read_bytes())
            except Exception:
                bad += 1
                print(f"--- {p}")
                traceback.print_exc()
    print(f"{name}: {bad} of the inputs raised an unexpected error" if bad else f"{name}: all inputs handled")
    return 1 if bad else 0


def line_coverage(names: list[str], dirs: list[Path]) -> None:
    """Replay corpora (the committed seeds, the crashes and each of `dirs`/<target>/) under
    sys.settrace and print, per fognode module, the lines run out of the lines of the
    functions that ran at all (a decoder's untaken branches show; unrelated code does not)."""
    import types

    from tests.fuzz.targets import run_one
    ran: dict[types.CodeType, set[int]] = {}

    def tracer(frame: types.FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if not code.co_filename.startswith(str(ROOT)) or "/tests/" in code.co_filename:
            return None
        lines = ran.setdefault(code, set())

        def local(frame: types.FrameType, event: str, arg: Any) -> Any:
            if event == "line":
                lines.add(frame.f_lineno)
            return local
        return local
    for n in names:
        files = [p for d in (CORPUS / n, CRASHES / n, *(x / n for x in dirs)) if d.is_dir()
                 for p in sorted(d.iterdir())]
        sys.settrace(tracer)
        try:
            for p in files:
                try:
                    run_one(n, p.read_bytes())
                except Exception:
                    pass
        finally:
            sys.settrace(None)
        print(f"{n}: {len(files)} inputs replayed")
    per_file: dict[str, list[int]] = {}
    for code, lines in ran.items():
        body = {ln for _, _, ln in code.co_lines() if ln is not None and ln != code.co_firstlineno}
        tot = per_file.setdefault(code.co_filename, [0, 0])
        tot[0] += len(lines & body)
        tot[1] += len(body)
    for f, (hit, total) in sorted(per_file.items()):
        print(f"  {Path(f).relative_to(ROOT)!s:45} {hit:>5}/{total:<5} {100 * hit / max(total, 1):5.1f}%")


def fuzz(name: str, *, seconds: float, runs: int | None, workdir: Path, extra: list[str],
         rss_mb: int, timeout: int) -> Outcome:
    """Fuzz one target in a child process; parse libFuzzer's final stats line."""
    new = workdir / "corpus" / name
    arts = workdir / "artifacts" / name
    logs = workdir / "logs"
    for d in (new, arts, logs):
        d.mkdir(parents=True, exist_ok=True)
    if name == MIXED:
        from tests.fuzz.targets import TARGETS
        seeds = [str(mixed_seeds(workdir / "mixed-seeds", list(TARGETS)))]
    else:
        seeds = [str(d) for d in (CORPUS / name, CRASHES / name) if d.is_dir()]
    args = [f"-max_total_time={max(1, int(seconds))}", f"-timeout={timeout}", f"-rss_limit_mb={rss_mb}",
            f"-artifact_prefix={arts}/", "-print_final_stats=1", "-max_len=65536", *extra]
    if runs is not None:
        args.append(f"-runs={runs}")
    cmd = [sys.executable, "-m", "tests.fuzz.run", "--child", name, "--", *args, str(new), *seeds]
    log = logs / f"{name}.log"
    t0 = time.monotonic()
    with log.open("wb") as out:
        # the child's own limit is -max_total_time; this bound only catches a wedged libFuzzer
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=seconds + 120,
                                env={**os.environ, "FOGNODE_FUZZ_COUNTS": str(logs / f"{name}-counts.json")}
                                ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    o = Outcome(name, seconds=time.monotonic() - t0, log=log)
    text = log.read_text(errors="replace")
    for st in _STATS.finditer(text):
        o.execs, o.cov, o.ft, o.corpus, o.exec_s = (int(st.group(1)), int(st.group(3)), int(st.group(4)),
                                                     int(st.group(5)), int(st.group(7)))
    units = re.search(r"stat::number_of_executed_units: (\d+)", text)
    if units:
        o.execs = int(units.group(1))
    crash = re.search(r"Test unit written to (\S+)", text)
    which = re.search(r"fuzz target (\S+) failed on this input", text)
    if rc == 0:
        o.status = "ok"
    elif crash:
        o.status = f"CRASH {crash.group(1)}" + (f" (in {which.group(1)})" if which and name == MIXED else "")
    elif rc == -1:
        o.status = "WEDGED (killed)"
    else:
        o.status = f"FAILED rc={rc} (see {log})"
    return o


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        rest = argv[2:]
        child(argv[1], rest[1:] if rest[:1] == ["--"] else rest)
        return 0
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help="targets to fuzz (default: all)")
    ap.add_argument("--seconds", type=float, default=300.0, help="fuzzing time per target (default 300)")
    ap.add_argument("--runs", type=int, default=None, help="stop a target after this many inputs")
    ap.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once (default 1)")
    ap.add_argument("--workdir", type=Path, default=ROOT / ".fuzz", help="new corpus, crashes and logs")
    ap.add_argument("--rss-mb", type=int, default=2048, help="libFuzzer -rss_limit_mb (default 2048)")
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take (default 10)")
    ap.add_argument("--replay", nargs="+", type=Path, metavar="FILE", help="replay inputs (files or dirs) "
                    "through the target without libFuzzer")
    ap.add_argument("--mixed", action="store_true", help="fuzz the chosen targets in ONE process (one "
                    "start-up; the first input byte picks the target): CI's short run")
    ap.add_argument("--lines", nargs="*", type=Path, metavar="DIR", help="replay the seeds, the "
                    "crashes and DIR/<target>/ (e.g. .fuzz/corpus) and print line coverage per module")
    ap.add_argument("--list", action="store_true", help="list the targets")
    extra: list[str] = []
    if "--" in argv:  # after --: extra libFuzzer flags, e.g. -- -max_len=4096 -dict=FILE
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = ap.parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if args.lines is not None:
        from tests.fuzz.targets import TARGETS
        line_coverage(args.targets or list(TARGETS), args.lines)
        return 0
    if args.list or args.replay:
        from tests.fuzz.targets import TARGETS
        if args.list:
            for t in TARGETS.values():
                print(f"{t.name:22} {t.what}")
            return 0
        if args.mixed:
            return replay(MIXED, args.replay)
        return max(replay(n, args.replay) for n in (args.targets or list(TARGETS)))
    from tests.fuzz.targets import TARGETS
    names = args.targets or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown targets {unknown}; --list shows them")
    print(HEADER, flush=True)

    def one(n: str) -> Outcome:
        o = fuzz(n, seconds=args.seconds, runs=args.runs, workdir=args.workdir, extra=extra,
                 rss_mb=args.rss_mb, timeout=args.timeout)
        print(o.row(), flush=True)
        return o
    if args.mixed:
        if args.targets:
            ap.error("--mixed fuzzes every target")
        o = fuzz(MIXED, seconds=args.seconds, runs=args.runs, workdir=args.workdir, extra=extra,
                 rss_mb=args.rss_mb, timeout=args.timeout)
        print(o.row(), flush=True)
        counts_file = args.workdir / "logs" / f"{MIXED}-counts.json"
        counts = json.loads(counts_file.read_text()) if counts_file.is_file() else {}
        for n in names:
            print(f"  {n:20} {counts.get(n, 0):>10}", flush=True)
        print(f"1 mixed run, {o.execs} executions, " + ("0 failed" if o.status == "ok" else f"1 failed: {o.status}"))
        return 0 if o.status == "ok" else 1
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        outcomes = list(pool.map(one, names))
    bad = [o for o in outcomes if o.status != "ok"]
    print(f"{len(outcomes)} targets, {sum(o.execs for o in outcomes)} executions, "
          f"{len(bad)} failed" + (": " + ", ".join(o.target for o in bad) if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
