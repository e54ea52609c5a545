"""`fognode devnet`: start (or resume) a local devnet, keep it running, restart single nodes.

    fognode devnet [--nodes N] [--dir D] [--region R[,R...]] [--no-metrics]
    fognode devnet restart N --dir D

A new `--dir` (or none: a fresh dir under /tmp) gets a new devnet; a `--dir` that holds one
(`devnet.json`) resumes it with the same ports, peer ids, genesis and ledgers; anything else
already there is refused with a message saying how to start afresh (a new genesis over old
ledgers would make every node's ledger refuse to start).

While it runs, a node that exits (crash, kill -9) is reported once on stderr: which node, its
exit code, the last lines of its log, and the commands that restart it; the other nodes keep
running. `fognode devnet restart N --dir D` asks the running devnet (by a request file in D)
to (re)start node N as its own child and waits until it answers; every node can also be run
alone with `fognode run --datadir D/nodeN`, since its node.toml holds its real settings.
Ctrl-C (or SIGTERM) stops the nodes this devnet started.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fognode.tools.devnet import MANIFEST, Devnet, DevnetExists, DevnetNode, wait_until

PIDFILE = "devnet.pid"
TICK = 0.2                   # seconds between checks of the nodes and of restart requests
RESTART_TIMEOUT = 60.0       # seconds `fognode devnet restart` waits for the node to answer
LOG_LINES = 8                # log lines shown when a node dies


def fognode_command() -> list[str]:
    """How to invoke `fognode` again: the script this process runs as, else `python -m`."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "fognode" and argv0.exists():
        return [str(argv0.absolute())]
    return [sys.executable, "-m", "fognode.tools.fognode"]


def run_alone_command(node: DevnetNode) -> str:
    """The shell command that runs `node` on its own (its settings are in its node.toml)."""
    env = "" if "FOGNODE_PASSPHRASE" in os.environ else "FOGNODE_PASSPHRASE= "
    return env + shlex.join([*fognode_command(), "run", "--datadir", str(node.datadir)])


def restart_command(root: Path, index: int) -> str:
    return shlex.join([*fognode_command(), "devnet", "restart", str(index), "--dir", str(root)])


def _request(root: Path, index: int) -> Path:
    return root / f"restart-{index}.request"


def _result(root: Path, index: int) -> Path:
    return root / f"restart-{index}.result"


def running_pid(root: Path) -> int | None:
    """The pid of the `fognode devnet` process serving `root`, if it is alive."""
    try:
        pid = int((root / PIDFILE).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def death_report(net: Devnet, node: DevnetNode, rc: int | None) -> str:
    how = f"exit code {rc}"
    if rc is not None and rc < 0:
        try:
            how += f" ({signal.Signals(-rc).name})"
        except ValueError:
            pass
    tail = "\n".join("    " + ln for ln in net.log_tail(node.index, LOG_LINES).splitlines())
    alive = sum(1 for n in net.nodes if n.alive())
    return (f"node {node.index} exited with {how}; the other {alive} node(s) keep running.\n"
            f"  last lines of {node.log_path}:\n{tail}\n"
            f"  restart it with: {restart_command(net.root, node.index)}\n"
            f"  or run it alone: {run_alone_command(node)}")


def print_table(net: Devnet, resumed: bool) -> None:
    print(f"devnet of {net.n} nodes under {net.root}" + (" (resumed)" if resumed else ""))
    print(f"{'node':<5} {'peer id':<53} {'port':<6} {'metrics':<8} {'region':<8} control socket")
    for n in net.nodes:
        metrics = str(n.metrics_port) if n.metrics_port else "-"
        print(f"{n.index:<5} {n.peer_id:<53} {n.port:<6} {metrics:<8} {n.region or '-':<8} {n.socket}")
    if any(n.metrics_port for n in net.nodes):
        print(f"metrics: http://{net.host}:PORT/metrics (and /health) with each node's metrics port")
    print(f"\ntry: fognode-cli --datadir {net.nodes[0].datadir} node peers")
    restart = shlex.join([*fognode_command(), "devnet", "restart"]) + f" N --dir {shlex.quote(str(net.root))}"
    alone = shlex.join([*fognode_command(), "run", "--datadir"]) + f" {shlex.quote(str(net.root))}/nodeN"
    print(f"a node that exits is reported here; restart node N with: {restart}")
    print(f"or run it alone (its settings are in its node.toml): {alone}")
    print("Ctrl-C stops every node.", flush=True)


def open_or_create(args: Any) -> tuple[Devnet, bool] | str:
    """The devnet to run and whether it was resumed, or why not (a message for the operator)."""
    regions = [r.strip() for r in (args.region or "").split(",") if r.strip()]
    metrics = not args.no_metrics
    if args.dir:
        root = Path(args.dir).absolute()
        if (root / MANIFEST).exists():
            try:
                net = Devnet.open(root)
            except (ValueError, OSError) as e:
                return f"cannot resume the devnet under {root}: {e}; start afresh with another --dir"
            if args.nodes is not None and args.nodes != net.n:
                return (f"{root} holds a devnet of {net.n} nodes, not {args.nodes}: drop --nodes to resume it, "
                        f"or start afresh with another --dir (or after `rm -r {root}`)")
            stored = [n.region for n in net.nodes]
            if regions and stored != [regions[i % len(regions)] for i in range(net.n)]:
                return (f"{root} holds a devnet whose regions are {','.join(r or '-' for r in stored)}: "
                        f"drop --region to resume it, or start afresh with another --dir")
            return net, True
        if root.exists() and any(root.iterdir()):
            return (f"{root} is not empty and holds no devnet ({MANIFEST}): refusing to write a new genesis "
                    f"there; start afresh with another --dir (or after `rm -r {root}`)")
    n = 4 if args.nodes is None else args.nodes
    if not 1 <= n <= 64:
        return "--nodes must be between 1 and 64"
    if not args.dir:
        root = Path(tempfile.mkdtemp(prefix="fognode-devnet-", dir="/tmp"))
    net = Devnet(root, n, metrics=metrics, regions=regions)
    try:
        net.create()
    except DevnetExists as e:
        return str(e)
    return net, False


def serve(args: Any) -> int:
    """`fognode devnet`: run until Ctrl-C; 0 on a clean stop, 1 if it could not start."""
    opened = open_or_create(args)
    if isinstance(opened, str):
        print(f"fognode: error: {opened}", file=sys.stderr)
        return 1 if "--nodes must" not in opened else 2
    net, resumed = opened
    other = running_pid(net.root)
    if other is not None and other != os.getpid():
        print(f"fognode: error: a devnet is already running under {net.root} (pid {other}): talk to its nodes "
              f"with `fognode-cli --datadir {net.root}/nodeN`, stop it (Ctrl-C where it runs, or kill {other}), "
              f"or start another with another --dir", file=sys.stderr)
        return 1
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    (net.root / PIDFILE).write_text(f"{os.getpid()}\n")
    reported: set[int] = set()
    try:
        for node in net.nodes:
            net.start(node.index, wait=False)
        deadline = time.monotonic() + 60
        for node in net.nodes:
            try:
                net.wait_ready(node.index, timeout=max(0.1, deadline - time.monotonic()))
            except (RuntimeError, TimeoutError):
                if node.alive():
                    print(f"fognode: error: node {node.index} did not answer within 60 s:\n"
                          f"{net.log_tail(node.index, LOG_LINES)}", file=sys.stderr)
                    net.stop_all()
                    return 1
        if not any(n.alive() for n in net.nodes):
            print(f"fognode: error: no node started:\n{net.log_tail(0, LOG_LINES)}", file=sys.stderr)
            return 1
        print_table(net, resumed)
        while not stop["now"]:
            for node in net.nodes:
                if not node.alive() and node.index not in reported:
                    reported.add(node.index)
                    rc = node.proc.returncode if node.proc is not None else None
                    print(death_report(net, node, rc), file=sys.stderr, flush=True)
            for node in net.nodes:
                if _request(net.root, node.index).exists():
                    _serve_restart(net, node)
                    reported.discard(node.index)
            time.sleep(TICK)  # poll interval of a foreground supervisor, not a wait for an event
    finally:
        codes = net.stop_all()
        (net.root / PIDFILE).unlink(missing_ok=True)
    print("stopped: " + ", ".join(f"node{i}={rc}" for i, rc in codes.items()), flush=True)
    return 0


def _serve_restart(net: Devnet, node: DevnetNode) -> None:
    """Carry out a `fognode devnet restart` request for `node`; the result goes to a file."""
    _request(net.root, node.index).unlink(missing_ok=True)
    if node.alive():
        net.stop(node.index)
    elif node.proc is not None:
        net.stop(node.index)  # reap the dead child
    try:
        net.start(node.index, wait=False)
        net.wait_ready(node.index, timeout=30)
        result = {"ok": True, "message": f"node {node.index} restarted (pid {node.proc.pid})"}
    except (RuntimeError, TimeoutError, OSError) as e:
        result = {"ok": False, "message": f"node {node.index} did not come back: {e}"}
    print(result["message"], file=sys.stderr if not result["ok"] else sys.stdout, flush=True)
    tmp = _result(net.root, node.index).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(_result(net.root, node.index))


def restart(args: Any) -> int:
    """`fognode devnet restart N --dir D`: ask the running devnet to restart node N."""
    if not args.dir:
        print("fognode: error: devnet restart needs --dir (the devnet's root)", file=sys.stderr)
        return 2
    root = Path(args.dir).absolute()
    try:
        net = Devnet.open(root)
    except FileNotFoundError:
        print(f"fognode: error: {root} holds no devnet ({MANIFEST})", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"fognode: error: {e}", file=sys.stderr)
        return 1
    if args.node is None or not 0 <= args.node < net.n:
        print(f"fognode: error: devnet restart needs a node number 0..{net.n - 1}", file=sys.stderr)
        return 2
    node = net.nodes[args.node]
    if running_pid(root) is None:
        print(f"fognode: error: no `fognode devnet` is running under {root}: resume the whole devnet with "
              f"`{shlex.join([*fognode_command(), 'devnet', '--dir', str(root)])}`, or run this node alone "
              f"with `{run_alone_command(node)}`", file=sys.stderr)
        return 1
    _result(root, node.index).unlink(missing_ok=True)
    _request(root, node.index).write_text("")
    try:
        wait_until(lambda: _result(root, node.index).exists(), timeout=RESTART_TIMEOUT,
                   what=f"the devnet to restart node {node.index}", interval=0.1)
        result = json.loads(_result(root, node.index).read_text())
    except TimeoutError as e:
        print(f"fognode: error: {e}", file=sys.stderr)
        return 1
    finally:
        _request(root, node.index).unlink(missing_ok=True)
        _result(root, node.index).unlink(missing_ok=True)
    print(result["message"], file=sys.stdout if result["ok"] else sys.stderr)
    return 0 if result["ok"] else 1
