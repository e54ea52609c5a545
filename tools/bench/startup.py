"""Cold start of one real daemon process against a bare `import libp2p`, measured in the same run.

    python -m fognode.tools.bench.startup [--runs 5]

What "cold start" means here: a fresh `fognode run` process on a data dir initialised beforehand
(not timed), default node.toml (every built-in role enabled), timed from `Popen` until
`node.info` answers with a result on the control socket, which the daemon gives only once the
overlay listens and every enabled role has started. The control socket opens earlier and
answers "warming up" (NODE_NOT_READY, code 100) until then; the time to that first answer is
printed too ("control socket answering").

The bound is a bare `python -c "import libp2p"` process (spawn to exit), timed in every run
just before the daemon starts, so both see the same machine load; the ratio is the median of
the daemon's times over the median of the bare imports (target: <= 1.15x, issue 16). On a
shared, loaded machine the wall times of one run vary by several times; the CPU seconds each
process used (the bare import's from wait4, the daemon's from /proc when node.info answers,
every thread counted) vary far less, and their ratio is printed too.

Both kinds of process run with compiled bytecode, as an installed package does: the benchmark
unsets PYTHONDONTWRITEBYTECODE and points PYTHONPYCACHEPREFIX at its own temp dir, and one
untimed warm-up run of each fills it (without it, every start would compile our ~700 modules
from source while libp2p's site-packages bytecode is cached: an unfair comparison). "Cold" is
therefore a new process, not a cold page cache.

Some roles finish loading after node.info answers: the fl role's numeric core (numpy, the
round engine) is imported in a worker thread once the node is ready, and its health row says
"loading" until then (protocols/fl/loading.py). So nobody takes "node.info answers" for "the
node can train", two extra rows give the time (and CPU) until no role's row says "loading";
they are not part of the ratio, which is the filed one.

Idle RSS is read from /proc after the node has been idle for 3 s; torch must not be loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fognode.tools.devnet import Devnet

TARGET_RATIO = 1.15
NODE_NOT_READY = 100          # fognode.node.rpc.methods.NODE_NOT_READY (not imported: keep this light)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def ask_info(path: Path) -> str | None:
    """'ready' (node.info answered), 'warming' (NODE_NOT_READY), or None (no answer yet)."""
    reply = info_reply(path)
    if reply is None:
        return None
    if "result" in reply:
        return "ready"
    if reply.get("error", {}).get("code") == NODE_NOT_READY:
        return "warming"
    raise SystemExit(f"unexpected reply to node.info: {reply}")


def loading_roles(path: Path) -> list[str] | None:
    """The roles whose health row says "loading" (a deferred load not finished), or None when
    node.info gave no result."""
    reply = info_reply(path)
    if reply is None or "result" not in reply:
        return None
    return [name for name, row in reply["result"]["roles"].items() if "loading" in row]


def info_reply(path: Path) -> dict | None:
    """One node.info call's reply, or None (no answer)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect(str(path))
        s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"node.info"}\n')
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk
    except OSError:
        return None
    finally:
        s.close()
    reply: dict = json.loads(buf.partition(b"\n")[0])
    return reply


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_import() -> tuple[float, float]:
    """One bare `import libp2p` process: (wall seconds, CPU seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "import libp2p"])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"`import libp2p` failed (exit {proc.returncode})")
    return wall, usage.ru_utime + usage.ru_stime


def daemon_start(root: Path, timeout: float = 60.0) -> tuple[float, float, float, float, bool, float, float]:
    """One cold start: (seconds to the first answer, seconds to node.info, CPU seconds the
    daemon process had used when node.info answered, idle RSS MB, torch?, seconds and CPU
    seconds until no role says "loading")."""
    net = Devnet(root, 1)
    net.create()
    node = net.nodes[0]
    try:
        t0 = time.perf_counter()
        net.start(0, wait=False)
        first: float | None = None
        deadline = t0 + timeout
        while True:
            state = ask_info(node.socket)
            now = time.perf_counter()
            if state is not None and first is None:
                first = now - t0
            if state == "ready":
                ready = now - t0
                assert node.proc is not None
                cpu = cpu_seconds(node.proc.pid)
                break
            if now > deadline or not node.alive():
                raise SystemExit(f"the daemon did not answer node.info within {timeout:g} s:\n{net.log_tail(0)}")
            time.sleep(0.01)  # poll interval: 1 % resolution, and little load on the daemon it measures
        while True:
            loading = loading_roles(node.socket)
            now = time.perf_counter()
            if loading == []:
                assert node.proc is not None
                loaded, loaded_cpu = now - t0, cpu_seconds(node.proc.pid)
                break
            if now > deadline or not node.alive():
                raise SystemExit(f"roles {loading} did not finish loading within {timeout:g} s:\n{net.log_tail(0)}")
            time.sleep(0.01)
        time.sleep(3)  # idle period before reading RSS (measurement, not synchronisation)
        assert node.proc is not None
        pid = node.proc.pid
        rss = rss_mb(pid)
        torch = "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    finally:
        net.stop_all()
    assert first is not None
    return first, ready, cpu, rss, torch, loaded, loaded_cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fognode.tools.bench.startup", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="fn-bench-", dir="/tmp"))
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    bare, bare_cpu, first, ready, cpu, rss, torch, loaded, loaded_cpu = [], [], [], [], [], [], [], [], []
    try:
        bare_import()                      # warm-up: compile bytecode into the prefix (not timed)
        daemon_start(root / "warmup")
        for r in range(args.runs):
            w, c = bare_import()
            bare.append(w)
            bare_cpu.append(c)
            f, s, u, m, t, d, dc = daemon_start(root / f"r{r}")
            first.append(f)
            ready.append(s)
            cpu.append(u)
            rss.append(m)
            torch.append(t)
            loaded.append(d)
            loaded_cpu.append(dc)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    b50 = statistics.median(bare)
    r50 = statistics.median(ready)
    ratio = r50 / b50
    ok = ratio <= TARGET_RATIO and not any(torch)
    print(f"cold start benchmark: {args.runs} runs, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{'measure':<44} {'p50':>8} {'min':>8} {'max':>8}")
    for name, xs in (("bare `import libp2p` process (s)", bare),
                     ("daemon: control socket answering (s)", first),
                     ("daemon: node.info answering, all roles up (s)", ready),
                     ("bare `import libp2p`: CPU (s)", bare_cpu),
                     ("daemon: CPU until node.info answers (s)", cpu),
                     ("idle RSS (MB)", rss),
                     ("daemon: deferred loads finished (s)", loaded),
                     ("daemon: CPU until deferred loads done (s)", loaded_cpu)):
        print(f"{name:<44} {statistics.median(xs):>8.3f} {min(xs):>8.3f} {max(xs):>8.3f}")
    print(f"cold start / bare import (p50 over p50): {ratio:.2f}x, target <= {TARGET_RATIO}x: "
          f"{'PASS' if ratio <= TARGET_RATIO else 'FAIL'}")
    print(f"control socket answering / bare import: {statistics.median(first) / b50:.2f}x")
    print(f"CPU until node.info / CPU of the bare import (p50 over p50; less sensitive to other "
          f"load than the wall times): {statistics.median(cpu) / statistics.median(bare_cpu):.2f}x")
    print(f"torch imported by the daemon: {any(torch)} (must be False)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
