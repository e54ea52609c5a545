"""Cold start to RPC-ready, and idle RSS, of one real daemon process.

    python -m fognode.tools.bench.startup [--runs 5]

Each run starts `fognode run` on a fresh data dir (initialised beforehand, not timed) and
measures from process spawn until `node.info` answers on the control socket. Idle RSS is read
from /proc after the node has been idle for 3 s. Targets (issue 2): start < 1.5 s, RSS < 120 MB,
torch not imported. For scale, the same run measures a bare `python -c "import libp2p"`.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fognode.tools.devnet import Devnet, wait_until


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fn-bench-", dir="/tmp"))
    starts, rss, torch_loaded = [], [], []
    try:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import libp2p"], check=True)
        bare_import = time.perf_counter() - t0
        for r in range(args.runs):
            net = Devnet(root / f"r{r}", 1)
            net.create()
            t0 = time.perf_counter()
            net.start(0, wait=False)
            wait_until(lambda: net.nodes[0].rpc("node.info", timeout=2), timeout=30, what="node.info", interval=0.005)
            starts.append(time.perf_counter() - t0)
            time.sleep(3)  # idle period before reading RSS (measurement, not synchronisation)
            pid = net.nodes[0].proc.pid  # type: ignore[union-attr]
            rss.append(rss_mb(pid))
            torch_loaded.append("libtorch" in Path(f"/proc/{pid}/maps").read_text())
            net.stop_all()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    p50 = statistics.median(starts)
    print(f"{'measure':<34} {'value':>10} {'bound':>10}")
    print(f"{'cold start to RPC-ready, p50 (s)':<34} {p50:>10.3f} {'< 1.5':>10}")
    print(f"{'cold start to RPC-ready, max (s)':<34} {max(starts):>10.3f} {'':>10}")
    print(f"{'bare `import libp2p` process (s)':<34} {bare_import:>10.3f} {'(scale)':>10}")
    print(f"{'idle RSS, p50 (MB)':<34} {statistics.median(rss):>10.1f} {'< 120':>10}")
    print(f"{'torch imported by the daemon':<34} {str(any(torch_loaded)):>10} {'False':>10}")


if __name__ == "__main__":
    main()
