"""`fognode-cli top`: a full-screen live view of one daemon, in the style of htop.

Every INTERVAL seconds (default 1) it asks the daemon over the control socket for node.info,
node.peers, monitor.figures (rates and event-loop lag), monitor.network, fl.sessions (and the
compact fl.status of live sessions), monitor.alerts and monitor.metrics when the node has them,
and redraws: the node and its roles' health, the figures with sparklines (and the harvest,
market and onion figures the monitor records), the peers, the network, FL
rounds as they complete, and the alerts. `q` (or Ctrl-C) quits. A daemon that stops answering
is shown as such and asked again at the next tick.

Built on `rich` (imported here only: plain fognode-cli starts with the standard library);
the figures are computed by top_model.py.
"""
from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.layout import Layout
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from fognode.node.errors import RpcError
from fognode.node.rpc.client import DaemonUnreachable, RpcClient
from fognode.tools.top_model import TopModel, sparkline

NODE_NOT_READY = 100   # node/rpc/methods.py: the daemon is warming up

HEALTH_STYLE = {"healthy": "green", "ok": "green", "starting": "yellow", "degraded": "yellow",
                "unhealthy": "red", "stopped": "red"}


def short(pid: str) -> str:
    return f"{pid[:8]}…{pid[-6:]}" if isinstance(pid, str) and len(pid) > 16 else str(pid)


def duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    return f"{d}d {h}h" if d else f"{h}h {m}m" if h else f"{m}m {s % 60}s" if m else f"{s}s"


def num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


class Poller:
    """One connection to the daemon, re-opened after a failure."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.client: RpcClient | None = None
        self.methods: set[str] = set()
        self.down: str = ""

    def _call(self, method: str, params: Any = None) -> Any:
        if self.client is None:
            self.client = RpcClient(self.path, timeout=self.timeout)
            self.methods = {m["name"] for m in self.client.call("rpc.discover")["methods"]}
        return self.client.call(method, params)

    def poll(self, model: TopModel) -> dict[str, Any]:
        reading: dict[str, Any] = {"errors": {}}
        try:
            reading["node.info"] = self._call("node.info")
            for m in ("node.peers", "monitor.figures", "monitor.network", "monitor.alerts", "monitor.metrics",
                      "fl.sessions"):
                if m not in self.methods:
                    continue
                try:
                    reading[m] = self._call(m)
                except RpcError as e:
                    reading["errors"][m] = e.message
            if "fl.sessions" in reading:
                model.sessions = reading["fl.sessions"]
                reading["fl.status"] = {}
                for sid in model.live_sessions():
                    try:
                        reading["fl.status"][sid] = self._call("fl.status", {"session": sid})
                    except RpcError as e:
                        reading["errors"]["fl.status"] = e.message
            self.down = ""
        except (DaemonUnreachable, OSError, ValueError) as e:
            self.down = str(e)
            if self.client is not None:
                self.client.close()
            self.client = None
        except RpcError as e:   # a daemon warming up answers NODE_NOT_READY: shown, polled again
            if e.code != NODE_NOT_READY:
                raise
            self.down = e.message
            if self.client is not None:
                self.client.close()
            self.client = None
        return reading


def render(model: TopModel, poller: Poller, interval: float) -> Layout:
    info = model.info
    head = Text()
    head.append(" fognode top ", style="bold reverse")
    if info:
        head.append(f"  {info.get('peer_id', '')}  v{info.get('version', '?')}  up {duration(info.get('uptime_s'))}")
        if info.get("region"):
            head.append(f"  region {info['region']}")
    head.append(f"  every {interval:g}s  poll {model.polls}", style="dim")
    if poller.down:
        head.append(f"\n daemon not answering: {poller.down}", style="bold red")

    roles = Table(expand=True, box=None, pad_edge=False)
    for col in ("role", "health", "restarts", "detail"):
        roles.add_column(col, no_wrap=col != "detail")
    for name, r in (info.get("roles") or {}).items():
        h = r.get("health", "?")
        roles.add_row(name, Text(h, style=HEALTH_STYLE.get(h, "")), str(r.get("restarts", 0)), r.get("detail") or "")

    figs = Table(expand=True, box=None, pad_edge=False)
    figs.add_column("figure", no_wrap=True)
    figs.add_column("now", justify="right", no_wrap=True)
    figs.add_column("last minute", no_wrap=True)
    rows = [("peers", str(len(model.peers)), "peers"),
            ("loop lag mean ms", num(model.lag[0] * 1000, 3) if model.lag else "-", "lag_ms"),
            ("loop lag p99 ≤ ms", num(model.lag[1] * 1000, 3) if model.lag else "-", ""),
            ("gossip in /s", num(model.rates.get("gossip_in"), 3), "gossip_in"),
            ("gossip out /s", num(model.rates.get("gossip_out"), 3), "gossip_out"),
            ("gossip dropped /s", num(model.rates.get("gossip_drops"), 3), "gossip_drops"),
            ("rpc requests /s", num(model.rates.get("rpc_requests"), 3), "rpc_requests"),
            ("cpu % of a core", num(model.rates.get("cpu"), 3), "cpu")]
    for label, value, key in rows:
        figs.add_row(label, value, Text(sparkline(model.history.get(key, ())), style="cyan"))
    if "monitor.figures" not in poller.methods and not poller.down:
        figs.add_row("(no monitor role: no figures)", "", "")
    role_lines = model.role_lines()
    for role, state, detail in role_lines:
        figs.add_row(role, state, Text(detail, style="cyan"))

    peers = Table(expand=True, box=None, pad_edge=False)
    for col in ("peer", "direction", "latency ms"):
        peers.add_column(col, no_wrap=True)
    for p in model.peers:
        peers.add_row(short(p.get("peer_id", "")), p.get("direction", ""), num(p.get("latency_ms"), 3))

    net = Table(expand=True, box=None, pad_edge=False)
    for col in ("node", "healthy", "peers", "uptime", "heard"):
        net.add_column(col, no_wrap=True)
    for n in model.network:
        net.add_row(short(n.get("peer_id", "")), Text("yes" if n.get("healthy") else "no",
                                                     style="green" if n.get("healthy") else "red"),
                    str(n.get("peers", "")), duration(n.get("uptime_s")), f"{duration(n.get('seen_s_ago'))} ago")

    fl = Table(expand=True, box=None, pad_edge=False)
    for col in ("time", "session", "round", "peers", "accepted", "loss", "accuracy", "epsilon"):
        fl.add_column(col, no_wrap=True, min_width=len(col), justify="left" if col in ("time", "session") else "right")
    for line in list(model.rounds)[-12:]:
        r = line.row
        fl.add_row(time.strftime("%H:%M:%S", time.localtime(line.at)), line.session[:8], str(r.get("round")),
                   str(r.get("participants", "")), str(r.get("accepted", "")), num(r.get("loss")),
                   num(r.get("accuracy")), num(r.get("epsilon")))
    running = [s for s in model.sessions if s.get("state") == "running"]
    fl_title = f"FL rounds ({len(running)} session(s) running)"

    if model.alerts is None:
        alerts: Any = Text("this node has no monitor.alerts", style="dim")
    elif not model.alerts:
        alerts = Text("no alert firing", style="green")
    else:
        alerts = Table(expand=True, box=None, pad_edge=False)
        for col in ("severity", "rule", "condition", "value", "since"):
            alerts.add_column(col)
        for a in model.alerts:   # monitor.alerts' firing list
            sev = str(a.get("severity", ""))
            since = a.get("since")
            alerts.add_row(Text(sev, style="red" if sev in ("critical", "page", "error") else "yellow"),
                           str(a.get("rule", "")), str(a.get("condition", "")), num(a.get("value")),
                           time.strftime("%H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "")

    errors = Text("; ".join(f"{m}: {e}" for m, e in model.errors.items()), style="red") if model.errors else Text("")
    foot = Text(" q quit ", style="reverse")
    foot.append("  ")
    foot.append_text(errors)

    layout = Layout()
    layout.split_column(Layout(Panel(head, padding=0), size=3 if not poller.down else 4, name="head"),
                        Layout(name="body"), Layout(foot, size=1))
    layout["body"].split_row(Layout(name="left"), Layout(name="right"))
    layout["body"]["right"].ratio = 5
    layout["body"]["left"].ratio = 4
    role_rows = len(info.get("roles") or ()) + 3
    layout["left"].split_column(Layout(Panel(roles, title="roles"), name="roles", size=role_rows),
                                Layout(Panel(figs, title="figures"), name="figures",
                                       size=12 + len(role_lines)),
                                Layout(Panel(peers, title=f"peers ({len(model.peers)})"), name="peers"))
    layout["right"].split_column(Layout(Panel(fl, title=fl_title), name="fl"),
                                 Layout(Panel(net, title=f"network ({len(model.network)} nodes)"), name="network"),
                                 Layout(Panel(Group(alerts), title="alerts"), name="alerts", size=7))
    return layout


def _key(timeout: float) -> str | None:
    """One key from stdin within `timeout` seconds (None: none pressed)."""
    ready, _, _ = select.select([sys.stdin], [], [], max(0.0, timeout))
    if not ready:
        return None
    data = os.read(sys.stdin.fileno(), 32)
    return data.decode("utf-8", "replace") if data else "q"   # end of input: quit


def run(path: Path, *, interval: float = 1.0, timeout: float = 10.0) -> int:
    """Run the view until `q`; 0. Raises OSError if stdin is not a terminal."""
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        sys.stderr.write("fognode-cli: top needs a terminal (use `fognode-cli --json monitor figures` in scripts)\n")
        return 2
    console = Console()
    model = TopModel()
    poller = Poller(path, timeout)
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        with Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                started = time.monotonic()
                model.ingest(poller.poll(model))
                live.update(render(model, poller, interval), refresh=True)
                while True:
                    key = _key(interval - (time.monotonic() - started))
                    if key is None:
                        break
                    if "q" in key.lower() or "\x03" in key:
                        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
