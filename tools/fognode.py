"""`fognode`: initialise a data dir, run the daemon, start a local devnet.

    fognode init   [--datadir D]
    fognode run    [--datadir D] [--config FILE] [--listen MA]... [--bootstrap MA]... [--set k=v]...
    fognode devnet [--nodes N] [--dir D] [--region R[,R...]] [--no-metrics]
    fognode devnet restart N --dir D
    fognode version | --version

Imports stay inside the commands so `fognode --help` and start-up are fast (torch is never
imported by the daemon at start).
"""
from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fognode", description="fognode: peer-to-peer fog computing daemon")
    p.add_argument("--version", action="version", version=f"fognode {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    i = sub.add_parser("init", help="create a data dir: identity key, node.toml, wallet, single-node dev genesis",
                       description="Create a data dir. The wallet key is encrypted with $FOGNODE_PASSPHRASE "
                                   "(asked for on a terminal when unset; an empty one makes a dev keystore).")
    i.add_argument("--datadir", help="data dir (default $FOGNODE_DATADIR or ~/.fognode)")
    i.add_argument("--chain-id", help="chain id of the single-node dev genesis (default: random fog-dev-*)")

    r = sub.add_parser("run", help="run the daemon in the foreground (Ctrl-C stops it cleanly)")
    r.add_argument("--datadir", help="data dir (default $FOGNODE_DATADIR or ~/.fognode)")
    r.add_argument("--config", help="config file (default <datadir>/node.toml, else embedded defaults)")
    r.add_argument("--listen", action="append", default=[], metavar="MULTIADDR",
                   help="listen address, repeatable (overrides overlay.listen)")
    r.add_argument("--bootstrap", action="append", default=[], metavar="MULTIADDR",
                   help="bootstrap peer /ip4/../tcp/../p2p/<id>, repeatable (overrides overlay.bootstrap)")
    r.add_argument("--region", help="region label (overrides node.region)")
    r.add_argument("--metrics-port", type=int, help="Prometheus endpoint port, 0 disables (protocols.monitor.port)")
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides node.log_level")
    r.add_argument("--log-json", action="store_true", default=None, help="JSON-lines logs (node.log_json)")
    r.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key, e.g. --set overlay.peers_low=4 or protocols.monitor.port=0")

    d = sub.add_parser("devnet", help="start N local daemons on 127.0.0.1 sharing one genesis",
                       usage="fognode devnet [--nodes N] [--dir D] [--region R[,R...]] [--no-metrics]\n"
                             "       fognode devnet restart N --dir D",
                       description="Start a local devnet, or resume the one recorded under --dir "
                                   "(devnet.json): same ports, peer ids, genesis and ledgers. A node that "
                                   "exits is reported and the others keep running; `fognode devnet restart "
                                   "N --dir D` restarts node N, and `fognode run --datadir D/nodeN` runs it "
                                   "alone (its node.toml holds its settings). Ctrl-C stops every node.")
    d.add_argument("action", nargs="?", choices=["restart"], help=argparse.SUPPRESS)
    d.add_argument("node", nargs="?", type=int, help=argparse.SUPPRESS)
    d.add_argument("--nodes", type=int, default=None, help="how many nodes (default 4; a resumed devnet keeps its own)")
    d.add_argument("--dir", help="root dir for the nodes' data dirs (default: a new dir under /tmp); "
                                 "one that holds a devnet resumes it")
    d.add_argument("--region", help="region of every node, or a comma-separated list given to the nodes "
                                    "in turn (node i gets the (i mod len)-th), e.g. eu-west,us-east")
    d.add_argument("--no-metrics", action="store_true",
                   help="no Prometheus endpoint (default: each node gets its own port, shown in the table)")

    sub.add_parser("version", help="print the version")
    return p


def _version() -> str:
    from fognode.node import __version__

    return str(__version__)


def _die(msg: str, code: int = 1) -> int:
    print(f"fognode: error: {msg}", file=sys.stderr)
    return code


def cmd_init(args: argparse.Namespace) -> int:
    from fognode.node.datadir import (CONFIG, IDENTITY, create_identity, default_config_text, ensure_datadir,
                                      resolve_datadir, write_atomic, write_genesis)
    from fognode.ledger.address import decode_address
    from fognode.ledger.wallet import init_wallet
    from fognode.node.errors import FognodeError
    from fognode.tools.genesis import dev_chain_id, dev_genesis
    from fognode.node.logs import setup_logging
    from fognode.node.peerid import peer_id_from_pubkey

    setup_logging("warning")
    datadir = resolve_datadir(args.datadir)
    if (datadir / IDENTITY).exists():
        return _die(f"{datadir} is already initialised ({IDENTITY} exists); refusing to replace the node's identity")
    ensure_datadir(datadir)
    try:
        wallet = init_wallet(datadir, None)  # FOGNODE_PASSPHRASE, else a prompt on a terminal
    except FognodeError as e:
        return _die(str(e))
    key = create_identity(datadir)
    if not (datadir / CONFIG).exists():
        write_atomic(datadir / CONFIG, default_config_text().encode(), 0o644)
    write_genesis(datadir, dev_genesis(args.chain_id or dev_chain_id(), [key], [decode_address(wallet)]))
    print(f"initialised {datadir}")
    print(f"peer id {peer_id_from_pubkey(bytes(key.verify_key))}")
    print(f"wallet  {wallet} (funded with 1,000 tokens by this single-node dev genesis)")
    print(f"start it with: fognode run --datadir {datadir}")
    return 0


def run_overrides(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    import json

    from fognode.node.config import parse_set_flags

    out: list[tuple[str, str, str]] = []
    if args.listen:
        out.append(("overlay.listen", json.dumps(args.listen), "--listen"))
    if args.bootstrap:
        out.append(("overlay.bootstrap", json.dumps(args.bootstrap), "--bootstrap"))
    if args.region is not None:
        out.append(("node.region", args.region, "--region"))
    if args.metrics_port is not None:
        out.append(("protocols.monitor.port", str(args.metrics_port), "--metrics-port"))
    if args.log_level:
        out.append(("node.log_level", args.log_level, "--log-level"))
    if args.log_json:
        out.append(("node.log_json", "true", "--log-json"))
    return out + parse_set_flags(args.set)


def cmd_run(args: argparse.Namespace) -> int:
    from fognode.node.startimports import quiet_blas_threads, start_imports

    quiet_blas_threads()            # before numpy loads (the roles import it while warming up)
    with start_imports(keep=True):  # what the control socket needs; the roles load later (LoadRoles)
        import trio

        from fognode.node.daemon import Daemon
        from fognode.node.daemon_start import LoadRoles, early_settings
        from fognode.node.datadir import CONFIG, IDENTITY, resolve_datadir
        from fognode.node.errors import FognodeError
        from fognode.node.logs import setup_logging
        from fognode.node.scheduling import apply_scheduling

    datadir = resolve_datadir(args.datadir)
    try:
        if not (datadir / IDENTITY).exists():
            return _die(f"{datadir} is not initialised: run `fognode init --datadir {datadir}` first")
        cfg_path = Path(args.config) if args.config else (datadir / CONFIG if (datadir / CONFIG).exists() else None)
        overrides = run_overrides(args)
        # the control socket's settings now; the roles (and libp2p) and the rest of the config
        # load while the socket answers "warming up" (node/daemon_start.py)
        early = early_settings(cfg_path, overrides=overrides)
        setup_logging(early.node.log_level, json_lines=early.node.log_json)
        logging.getLogger("fognode").info("%s", apply_scheduling(early.node.scheduling))  # before any thread
        daemon = Daemon(datadir, early, LoadRoles(cfg_path, tuple(overrides)))
        trio.run(daemon.run)
    except FognodeError as e:
        return _die(str(e), 2)
    except OSError as e:  # the machine refused something at start-up (a port in use, a permission)
        hint = ""
        if e.errno == errno.EADDRINUSE:
            hint = ("; another fognode (or program) has that port: choose another with --listen "
                    "/ip4/0.0.0.0/tcp/PORT or overlay.listen in node.toml")
        return _die(f"{e.strerror or e}{hint}", 2)
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_devnet(args: argparse.Namespace) -> int:
    from fognode.tools.devnet_cmd import restart, serve

    if args.action == "restart":
        return restart(args)
    if args.node is not None:
        return _die(f"unexpected argument {args.node} (did you mean `fognode devnet restart {args.node}`?)", 2)
    return serve(args)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "version":
        print(_version())
        return 0
    return {"init": cmd_init, "run": cmd_run, "devnet": cmd_devnet}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
