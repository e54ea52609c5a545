"""Time to first paint of the dashboard's node page in headless Chromium, against a static file
(`/assets/about.html`: HTML and CSS, no script) served by the same daemon's HTTP server, in
the same run.

    python -m fognode.tools.bench.dashboard [--runs 15]

Starts one real daemon on 127.0.0.1 with its monitor port, drives Debian's Chromium
(/usr/bin/chromium) with Playwright, and loads each page `--runs` times, alternating, each in
a new browser context (no cache: the dashboard answers `Cache-Control: no-store`). Per load it
reads the browser's own Paint Timing (`first-contentful-paint`, from the start of navigation)
and, for the node page, the `fognode-data` mark the page sets when its first data is on screen
(node.info, health, peers, figures rendered). The table shows medians and p90s with the bounds:
- node page first paint at most FCP_EXTRA_MS over the static file's (median): the shell paints
  before any data arrives;
- node page data on screen at most DATA_EXTRA_MS after the static file's first paint (median).
Both are relative to the static file's paint, measured in the same run, because this machine's
load (other jobs on 2 cores) moves every absolute figure.
Exit code 1 when a bound is missed.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from fognode.tools.devnet import Devnet

CHROMIUM = "/usr/bin/chromium"
# as root, on a machine without a network: no sandbox, and nothing that calls home
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--metrics-recording-only", "--mute-audio"]
FCP_EXTRA_MS = 150.0       # the node page's shell paints about as soon as a static page
DATA_EXTRA_MS = 750.0      # its data (6 in-process read calls, charts drawn) follows within this

PAINT_JS = """() => new Promise((resolve) => {
  const read = () => {
    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
    const data = performance.getEntriesByName('fognode-data')[0];
    return {fcp: fcp ? fcp.startTime : null, data: data ? data.startTime : null};
  };
  const t0 = performance.now();
  const poll = () => {
    const r = read();
    if ((r.fcp !== null && (r.data !== null || !document.querySelector('script[type=module]')))
        || performance.now() - t0 > 10000) resolve(r);
    else setTimeout(poll, 20);
  };
  poll();
})"""


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure(runs: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="fn-bench-dash-", dir="/tmp"))
    out: dict[str, list[float]] = {"static_fcp": [], "node_fcp": [], "node_data": []}
    try:
        with Devnet(root, 1, metrics=True) as net:
            net.create()
            net.start_all()
            url = net.nodes[0].rpc("monitor.dashboard")["url"]
            base, token = url.split("/?token=")
            cookie: Any = {"name": "fognode_dashboard", "value": token, "url": base}
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                for i in range(runs + 1):               # the first pair warms the daemon and the browser
                    for name, path in (("static", "/assets/about.html"), ("node", "/")):
                        ctx = browser.new_context()
                        ctx.add_cookies([cookie])
                        page = ctx.new_page()
                        resp = page.goto(base + path)
                        if resp is None or resp.status != 200:
                            raise RuntimeError(f"{path}: HTTP {resp.status if resp else '?'}")
                        r: dict[str, Any] = page.evaluate(PAINT_JS)
                        ctx.close()
                        if i == 0:
                            continue
                        if r["fcp"] is None:
                            raise RuntimeError(f"{path}: no first-contentful-paint entry")
                        out[f"{name}_fcp"].append(r["fcp"])
                        if name == "node":
                            if r["data"] is None:
                                raise RuntimeError("the node page never showed its data (no fognode-data mark)")
                            out["node_data"].append(r["data"])
                browser.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args(argv)
    if shutil.which(CHROMIUM) is None:
        print(f"{CHROMIUM} is missing: apt-get install chromium", file=sys.stderr)
        return 2
    m = measure(args.runs)
    static, node, data = (statistics.median(m[k]) for k in ("static_fcp", "node_fcp", "node_data"))
    rows = [("static file: first paint", static, pct(m["static_fcp"], 0.9), "-", True),
            ("node page: first paint", node, pct(m["node_fcp"], 0.9), f"<= static + {FCP_EXTRA_MS:g}",
             node <= static + FCP_EXTRA_MS),
            ("node page: data on screen", data, pct(m["node_data"], 0.9), f"<= static + {DATA_EXTRA_MS:g}",
             data <= static + DATA_EXTRA_MS)]
    print(f"dashboard in Chromium, {args.runs} loads each (ms from navigation start)")
    print(f"{'what':28} {'median':>8} {'p90':>8}  {'bound (median)':18} ok")
    for what, med, p90, bound, ok in rows:
        print(f"{what:28} {med:8.1f} {p90:8.1f}  {bound:18} {'yes' if ok else 'NO'}")
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
