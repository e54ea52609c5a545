"""`fognode-cli`: talk to a running fognode daemon over its JSON-RPC control socket.

The CLI knows no commands of its own: it asks the daemon (`rpc.discover`, the machine-readable
form of `help`) and maps the command line onto a method:

    fognode-cli node info                      -> node.info
    fognode-cli wallet send ADDR 10 --memo hi  -> wallet.send {"to": ADDR, "amount": "10", "memo": "hi"}
    fognode-cli help [--markdown] [METHOD]     -> the daemon's methods, grouped by role
    fognode-cli call METHOD [JSON]             -> a raw call with JSON params (array or object)
    fognode-cli top [--interval S]             -> a full-screen live view (tools/top.py; q quits)

`top` is the one deliberate exception to "no commands of its own" besides help/call: a live
view needs a terminal loop, not one method. It imports `rich` only when run, so every other
command still starts with the standard library alone.

Words after the command fill the method's positional params in order; `--name value`,
`--name=value` and `--flag` / `--no-flag` (booleans: flags take no value, as argparse's
store_true) fill named params (dashes become underscores). Values go as text; the daemon
converts them to the declared types. Object and array params take JSON (`--weights '{"a": 1}'`),
whose numbers keep their type (1 stays an integer). `COMMAND --help` shows a command's help.

A streaming command (the daemon marks it `streams`, e.g. `fl status SESSION --follow`) prints
each progress notification as one line while it runs, then the result; it waits as long as the
daemon keeps it going unless --timeout is given.

A command whose role is down is still known (the daemon lists it as unavailable): calling it
says the role is down, why and since when (exit 1), not "unknown command".

`--json` prints raw JSON, errors included: on failure stderr gets one JSON object
`{"error": {"kind": "rpc" | "usage" | "no_daemon", "message": ..., ...}}`. Help text wraps to
the terminal width ($COLUMNS, else the terminal's, else 80).

While the daemon warms up (its control socket answers before its roles have started), the CLI
waits for it, at most --timeout seconds, and says so once on stderr.

Exit codes: 0 success, 1 the daemon answered with an error, 2 usage error, 3 no daemon answered.
It talks to the daemon through `fognode.node.rpc.client.RpcClient` (the project's one client,
standard library only) and imports nothing heavy: the CLI starts fast.
"""
from __future__ import annotations

import difflib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TextIO

from fognode.node.errors import RpcError
from fognode.node.rpc.client import DaemonUnreachable, RpcClient
from fognode.tools.cli_format import (USAGE, command_words, down_text, help_list, help_markdown, help_one,
                                      progress_line, render)

EXIT_OK, EXIT_RPC, EXIT_USAGE, EXIT_NO_DAEMON = 0, 1, 2, 3
NODE_NOT_READY = 100         # node/rpc/methods.py (the CLI imports only the standard library)
NODE_ROLE_UNAVAILABLE = 104  # node/rpc/methods.py
WARMUP_POLL = 0.05           # seconds between two tries while the daemon warms up
SOCKET_NAME = "fognode.sock"
DEFAULT_TIMEOUT = 30.0

class UsageError(Exception):
    """The command line is wrong (exit 2)."""


@dataclass
class Options:
    datadir: str | None = None
    socket: str | None = None
    json: bool = False
    timeout: float = DEFAULT_TIMEOUT
    timeout_given: bool = False     # --timeout was given (streaming commands wait without one otherwise)
    help: bool = False
    version: bool = False
    command: list[str] = field(default_factory=list)

    def socket_path(self) -> Path:
        """--socket; else the data dir's socket, where the data dir is --datadir, else
        $FOGNODE_DATADIR, else ~/.fognode. Like the daemon, $FOGNODE_RPC_SOCKET or
        `[rpc] socket` in the data dir's node.toml move the socket; default D/fognode.sock."""
        if self.socket:
            return Path(self.socket).expanduser().absolute()
        raw = self.datadir or os.environ.get("FOGNODE_DATADIR") or "~/.fognode"
        datadir = Path(raw).expanduser().absolute()
        configured = os.environ.get("FOGNODE_RPC_SOCKET") or _configured_socket(datadir / "node.toml")
        if configured:  # relative to the data dir, as the daemon reads it
            return datadir / Path(configured).expanduser()
        return datadir / SOCKET_NAME


def _configured_socket(config: Path) -> str:
    """`[rpc] socket` of a node.toml, or "" (also when it is missing or unreadable: the daemon
    reports a broken config itself)."""
    try:
        import tomllib
        with open(config, "rb") as f:
            value = tomllib.load(f).get("rpc", {}).get("socket", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def parse_options(argv: Sequence[str]) -> Options:
    """Global options up to the first word that is not one; the rest is the command."""
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            opts.command = list(argv[i + 1:])
            return opts
        if not arg.startswith("-") or arg == "-":
            opts.command = list(argv[i:])
            return opts
        name, eq, value = arg.partition("=")
        if name in ("-h", "--help"):
            opts.help = True
        elif name == "--json":
            opts.json = True
        elif name == "--version":
            opts.version = True
        elif name in ("--datadir", "--socket", "--timeout"):
            if not eq:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"{name} needs a value")
                value = argv[i]
            if name == "--datadir":
                opts.datadir = value
            elif name == "--socket":
                opts.socket = value
            else:
                try:
                    opts.timeout = float(value)
                    opts.timeout_given = True
                except ValueError:
                    raise UsageError(f"--timeout must be a number of seconds, got {value!r}") from None
                if not opts.timeout > 0:
                    raise UsageError(f"--timeout must be positive, got {value!r}")
        else:
            raise UsageError(f"unknown option {arg} (options of a command go after it; "
                             f"`fognode-cli help COMMAND` lists them)")
        i += 1
    return opts


# ---- mapping a command line onto a method ---------------------------------------------------

def resolve(words: list[str], methods: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The method named by the leading words (`wallet send` or `wallet.send`) and the rest."""
    for k in range(min(len(words), 4), 0, -1):
        head = words[:k]
        if any(w.startswith("-") for w in head):
            continue
        name = ".".join(head).replace("-", "_")
        if name in methods:
            return methods[name], words[k:]
    raise UsageError(unknown_command(" ".join(w for w in words[:2] if not w.startswith("-")), methods))


def unknown_command(typed: str, methods: dict[str, dict[str, Any]]) -> str:
    name = ".".join(typed.split()).replace("-", "_")
    names = sorted(methods)
    close = [m for m in names if m.startswith(name + ".")][:8]  # a role alone: its commands
    if not close:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if not close:
        close = [m for m in names if m.endswith("." + name)][:8]
    msg = f"unknown command {typed!r}"
    if close:
        msg += "; did you mean: " + ", ".join(command_words(c) for c in close) + "?"
    return msg + " (`fognode-cli help` lists the commands)"


def _types(schema: dict[str, Any]) -> set[str]:
    if "anyOf" in schema:
        return set().union(*(_types(s) for s in schema["anyOf"]))
    if "enum" in schema:
        return {"enum"}
    return {schema.get("type", "any")}


def convert(param: dict[str, Any], text: str) -> Any:
    """A command-line word for `param`: JSON for object/array/any params when it looks like
    JSON, `null` for nullable ones, an absolute path for path params (`"format": "path"`,
    resolved against the CLI's working directory); otherwise the text itself (the daemon
    converts it)."""
    schema = param.get("schema", {})
    kinds = _types(schema)
    if text == "null" and "null" in kinds:
        return None
    if schema.get("format") == "path":  # a path on this machine: the daemon's cwd is not ours
        return os.path.abspath(os.path.expanduser(text))
    if kinds & {"object", "array", "any"} and text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError as e:
            raise UsageError(f"--{param['name'].replace('_', '-')}: not valid JSON ({e})") from None
    if "any" in kinds:
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def build_params(method: dict[str, Any], args: list[str], opts: Options) -> dict[str, Any]:
    """Named params for `method` from the words after the command (UsageError if they don't fit)."""
    params = method["params"]
    by_name = {p["name"]: p for p in params}
    positional = [p for p in params if p["positional"]]
    usage = "usage: fognode-cli " + method["usage"]
    named: dict[str, Any] = {}
    words: list[str] = []
    only_words = False
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if only_words or not arg.startswith("--") or arg == "--":
            if arg == "--" and not only_words:
                only_words = True
            else:
                words.append(arg)
            continue
        key, eq, value = arg[2:].partition("=")
        name = key.replace("-", "_")
        p = by_name.get(name)
        negated = False
        if p is None and name.startswith("no_") and "boolean" in _types(by_name.get(name[3:], {}).get("schema", {})):
            p, negated = by_name[name[3:]], True
        if p is None:
            if name == "json":
                opts.json = True
                continue
            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f" (did you mean --{close[0].replace('_', '-')}?)" if close else ""
            raise UsageError(f"{method['name']} has no option --{key}{hint}; {usage}")
        if p["name"] in named:
            raise UsageError(f"--{key} given twice; {usage}")
        if "boolean" in _types(p["schema"]) and not eq:
            named[p["name"]] = not negated
            if i < len(args) and args[i].lower() in ("true", "false", "yes", "no"):
                flag = f"--{p['name'].replace('_', '-')}"
                raise UsageError(f"--{key} is a flag and takes no value (got {args[i]!r}): write {flag} "
                                 f"or --no-{p['name'].replace('_', '-')}; {usage}")
            continue
        if not eq:
            if i >= len(args):
                raise UsageError(f"--{key} needs a value; {usage}")
            value = args[i]
            i += 1
        named[p["name"]] = convert(p, value)
    if len(words) > len(positional):
        raise UsageError(f"{method['name']} takes at most {len(positional)} argument(s), got {len(words)}: "
                         f"{' '.join(words)}; {usage}")
    for p, word in zip(positional, words):
        if p["name"] in named:
            raise UsageError(f"{p['name'].upper()} given both as an argument and as --{p['name']}; {usage}")
        named[p["name"]] = convert(p, word)
    missing = [p for p in params if p["required"] and p["name"] not in named]
    if missing:
        what = ", ".join(p["name"].upper() if p["positional"] else f"--{p['name'].replace('_', '-')}"
                         for p in missing)
        raise UsageError(f"missing {what}; {usage}")
    return named


# ---- main -----------------------------------------------------------------------------------

def _print(text: str, out: TextIO) -> None:
    if text:
        out.write(text if text.endswith("\n") else text + "\n")


def _wants_help(words: list[str]) -> bool:
    """`COMMAND ... --help` / `-h` (before a `--`)."""
    for w in words:
        if w == "--":
            return False
        if w in ("--help", "-h"):
            return True
    return False


def top_interval(args: list[str]) -> float:
    """`top`'s own options: [--interval S] (seconds between refreshes, 0.2-60; default 1)."""
    interval = 1.0
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name != "--interval":
            raise UsageError(f"top takes only --interval S, got {args[i]!r}; usage: fognode-cli top [--interval S]")
        if not eq:
            i += 1
            if i >= len(args):
                raise UsageError("--interval needs a value; usage: fognode-cli top [--interval S]")
            value = args[i]
        try:
            interval = float(value)
        except ValueError:
            raise UsageError(f"--interval must be a number of seconds, got {value!r}") from None
        if not 0.2 <= interval <= 60:
            raise UsageError(f"--interval must be between 0.2 and 60 seconds, got {value!r}")
        i += 1
    return interval


def run_top(opts: Options, out: TextIO) -> int:
    if _wants_help(opts.command[1:]):
        _print("usage: fognode-cli top [--interval S]\n\nA full-screen live view of the node: roles and "
               "health, peers, event-loop lag, gossip rates, FL rounds as they complete, the network, "
               "alerts. q quits.", out)
        return EXIT_OK
    interval = top_interval(opts.command[1:])
    try:
        from fognode.tools.top import run as top_view  # rich: only for this command
    except ImportError as e:
        raise UsageError(f"top needs the Python package rich ({e}); install it: pip install rich") from None
    return top_view(opts.socket_path(), interval=interval, timeout=opts.timeout)


def run(opts: Options, out: TextIO) -> int:
    words = opts.command
    if words[0] == "top":
        return run_top(opts, out)
    if words[0] == "help" and _wants_help(words[1:]):  # `help --help`
        _print(USAGE, out)
        return EXIT_OK
    from_flag = words[0] != "help" and _wants_help(words)
    if from_flag:  # `wallet send --help` is `help wallet send`
        if words[0] == "call":
            _print(USAGE, out)
            return EXIT_OK
        words = ["help"] + [w for w in words if w not in ("--help", "-h", "--json")]
    path = opts.socket_path()
    conn = RpcClient(path, timeout=opts.timeout)
    try:
        conn.connect()
    except DaemonUnreachable as e:
        if words[0] == "help":  # `help`, `COMMAND --help`: they come from the daemon
            e.why += "; the commands and their help come from the running daemon"
        raise
    try:
        if words[0] == "call":
            if len(words) not in (2, 3):
                raise UsageError("usage: fognode-cli call METHOD [JSON]  (JSON: params as an array or object)")
            params = None
            if len(words) == 3:
                try:
                    params = json.loads(words[2])
                except ValueError as e:
                    raise UsageError(f"call: params are not valid JSON ({e})") from None
                if not isinstance(params, (list, dict)):
                    raise UsageError("call: params must be a JSON array or object")
            result = call_when_ready(conn, opts, words[1], params)
        else:
            disc = call_when_ready(conn, opts, "rpc.discover")
            # The daemon's own `help` method is what `fognode-cli help` renders: not a command.
            methods = {m["name"]: m for m in disc["methods"] if m["name"] != "help"}
            # Methods of roles that are down: known commands that answer "role down".
            methods.update({m["name"]: m for m in disc.get("unavailable", []) if m["name"] not in methods})
            if words[0] == "help":
                rest = [w for w in words[1:] if w != "--markdown"]
                if "--markdown" in words[1:]:
                    _print(help_markdown(disc, methods), out)
                elif not rest:
                    _print(json.dumps(disc, indent=2) if opts.json else help_list(methods, path), out)
                elif len(rest) == 1 and rest[0] not in methods and any(
                        n.startswith(rest[0] + ".") for n in methods):  # `help wallet`: that role
                    _print(help_list({n: m for n, m in methods.items() if n.startswith(rest[0] + ".")},
                                     path), out)
                else:
                    m, extra = resolve(rest, methods)
                    if extra and not from_flag:  # `COMMAND ARGS... --help`: the args do not matter
                        raise UsageError(f"help takes one command, got {' '.join(rest)!r}")
                    _print(json.dumps(m, indent=2) if opts.json else help_one(m), out)
                return EXIT_OK
            method, args = resolve(words, methods)
            try:
                params = build_params(method, args, opts)
            except UsageError:
                if method.get("down"):  # the role's absence is the news, not the usage
                    raise RpcError(NODE_ROLE_UNAVAILABLE, f"{method['name']} is unavailable: {down_text(method)}",
                                     {"role": method.get("role")}) from None
                raise
            streams = bool(method.get("streams"))
            result = conn.call(method["name"], params,
                               on_progress=(lambda v: _progress(v, opts, out)) if streams else None,
                               timeout=None if streams and not opts.timeout_given else -1.0)
    finally:
        conn.close()
    _print(json.dumps(result, indent=2, ensure_ascii=False) if opts.json else render(result), out)
    return EXIT_OK


def call_when_ready(conn: RpcClient, opts: Options, method: str, params: Any = None) -> Any:
    """`conn.call`, waiting while the daemon warms up (it answers NODE_NOT_READY until its roles
    have started), for at most --timeout seconds; says so once on stderr (not with --json)."""
    deadline = time.monotonic() + opts.timeout
    said = False
    while True:
        try:
            return conn.call(method, params)
        except RpcError as e:
            if e.code != NODE_NOT_READY:
                raise
            if time.monotonic() >= deadline:
                raise RpcError(e.code, f"{e.message} (still warming up after {opts.timeout:g} s; --timeout "
                                       f"sets how long to wait)", e.data) from None
            if not said and not opts.json:
                phase = e.data.get("phase") if isinstance(e.data, dict) else None
                sys.stderr.write(f"fognode-cli: the daemon is warming up ({phase}); waiting up to {opts.timeout:g} s\n")
                sys.stderr.flush()
                said = True
        time.sleep(WARMUP_POLL)  # poll interval while the daemon starts, bounded by the deadline


def _progress(value: Any, opts: Options, out: TextIO) -> None:
    """One progress notification of a streaming command, as one line (JSON with --json)."""
    out.write((json.dumps(value, ensure_ascii=False) if opts.json else progress_line(value)) + "\n")
    out.flush()


def version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version as dist_version
        try:
            return dist_version("fognode")
        except PackageNotFoundError:
            return "unknown"
    except ImportError:  # pragma: no cover
        return "unknown"


def _json_mode(args: list[str]) -> bool:
    """--json anywhere before a `--` (it may follow the command): errors are JSON too."""
    for a in args:
        if a == "--":
            return False
        if a == "--json":
            return True
    return False


def _fail(err: TextIO, as_json: bool, kind: str, text: str, **fields: Any) -> None:
    if as_json:
        body = {"kind": kind, "message": text, **{k: v for k, v in fields.items() if v is not None}}
        err.write(json.dumps({"error": body}, ensure_ascii=False) + "\n")
    else:
        err.write(f"fognode-cli: {text}\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    err = sys.stderr
    as_json = _json_mode(args)
    try:
        opts = parse_options(args)
        if opts.version:
            sys.stdout.write(f"fognode-cli {version()}\n")
            return EXIT_OK
        if opts.help or not opts.command:
            (sys.stdout if opts.help else err).write(USAGE)
            return EXIT_OK if opts.help else EXIT_USAGE
        return run(opts, sys.stdout)
    except UsageError as e:
        _fail(err, as_json, "usage", str(e))
        return EXIT_USAGE
    except DaemonUnreachable as e:
        if e.connected:
            text = f"the daemon at {e.path} {e.why}"
        else:
            text = f"no daemon at {e.path} ({e.why}). Start one with: fognode run --datadir {e.path.parent}"
        _fail(err, as_json, "no_daemon", text, socket=str(e.path))
        return EXIT_NO_DAEMON
    except RpcError as e:
        if as_json:
            _fail(err, True, "rpc", e.message, code=e.code, data=e.data)
        else:
            err.write(f"fognode-cli: error {e.code}: {e.message}\n")
            if e.data is not None:
                err.write(f"  data: {json.dumps(e.data, ensure_ascii=False)}\n")
        return EXIT_RPC
    except BrokenPipeError:  # `fognode-cli ... | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
