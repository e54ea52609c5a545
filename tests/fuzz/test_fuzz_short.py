"""The fuzz targets in CI: the seed corpus and the regression inputs replayed through every
target in-process, and a short coverage-guided atheris run of all targets in one process
(`run.py --mixed`: fognode is instrumented once; SHORT_SECONDS of fuzzing, about 35 s in all).
The long run is `python -m tests.fuzz.run` (README, "Fuzzing")."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.run import CORPUS, CRASHES, ROOT
from tests.fuzz.targets import TARGETS, run_one

SHORT_SECONDS = 15         # all targets together, after ~3 s of start-up (instrumenting fognode)


def _inputs(base: Path, name: str) -> list[Path]:
    d = base / name
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_corpus_replays_cleanly(name: str) -> None:
    """Every committed seed and every regression input (a crash found and fixed) goes
    through its target raising nothing but the decoders' own errors."""
    seeds = _inputs(CORPUS, name)
    assert len(seeds) >= 5, f"tests/fuzz/corpus/{name} has {len(seeds)} seeds; run python -m tests.fuzz.make_corpus"
    for p in seeds + _inputs(CRASHES, name):
        try:
            run_one(name, p.read_bytes())
        except Exception as e:  # a bug: say which input
            raise AssertionError(f"{p.relative_to(ROOT)}: {type(e).__name__}: {e}") from e


def test_every_target_accepts_some_seed() -> None:
    """The seeds are real encodings: each target decodes at least one of them without error
    (else the fuzzer would start from garbage and never get past the first check)."""
    dead = []
    for name, t in TARGETS.items():
        ok = 0
        for p in _inputs(CORPUS, name):
            try:
                t.run(p.read_bytes())
                ok += 1
            except t.expected:
                pass
        if not ok:
            dead.append(name)
    assert not dead, f"no seed gets through {dead}"


@pytest.mark.slow
def test_short_fuzz_run_finds_no_crash(tmp_path: Path) -> None:
    """libFuzzer through atheris on all targets at once for SHORT_SECONDS; the run fails
    (naming the target and the crashing input) on any error but the decoders' own."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", "--mixed", "--seconds", str(SHORT_SECONDS),
         "--workdir", str(tmp_path), "--rss-mb", "1024"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=SHORT_SECONDS + 150)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report + (tmp_path / "logs" / "mixed.log").read_text(errors="replace")[-6000:]
    mixed = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith("mixed ")]
    assert mixed and mixed[0][-1] == "ok" and int(mixed[0][2]) > 200, report     # cov: edges reached
    per_target = {c[0]: int(c[1]) for c in (ln.split() for ln in proc.stdout.splitlines())
                  if len(c) == 2 and c[0] in TARGETS}
    starved = sorted(n for n in TARGETS if per_target.get(n, 0) < 20)
    assert not starved, f"targets hardly fuzzed: {starved}\n{report}"
