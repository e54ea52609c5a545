"""`fognode-cli` end to end: the real console script against tests/rpc_test_server.py running
as a real process on a unix socket."""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
_script = Path(sys.executable).parent / "fognode-cli"
CLI = [str(_script)] if _script.exists() else [sys.executable, "-m", "fognode.tools.cli"]


@dataclass(frozen=True)
class Cli:
    datadir: Path

    def __call__(self, *args: str, env: dict[str, str] | None = None,
                 datadir: bool = True) -> subprocess.CompletedProcess[str]:
        argv = CLI + (["--datadir", str(self.datadir)] if datadir else []) + list(args)
        return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                              env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def cli() -> Iterator[Cli]:
    d = Path(tempfile.mkdtemp(dir="/tmp", prefix="fncli-"))
    sock = d / "fognode.sock"
    proc = subprocess.Popen([sys.executable, str(HERE / "rpc_test_server.py"), str(sock)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        assert line.strip() == f"ready {sock}", (line, proc.poll())
        yield Cli(d)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for f in (proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
            assert not sock.exists(), "the server removes its socket on exit"
            shutil.rmtree(d, ignore_errors=True)


def test_table_output(cli: Cli) -> None:
    r = cli("node", "info")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "peer_id                12D3KooWSelf",
        "version                0.1.0",
        "uptime                 12.5",
        "addresses              /ip4/127.0.0.1/tcp/4000, /ip4/10.0.0.2/tcp/4000",
        "roles.ledger.health    healthy",
        "roles.ledger.restarts  0",
        "roles.fl.health        stopped",
        "roles.fl.restarts      2",
    ]
    r = cli("node", "peers")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "peer_id        address                  latency_ms  roles",
        "-------------  -----------------------  ----------  ----------",
        "12D3KooWAlpha  /ip4/127.0.0.1/tcp/4001  1.5",
        "12D3KooWBravo  /ip4/127.0.0.1/tcp/4002  2.25        ledger, fl",
    ]
    assert cli("wallet", "balance").stdout == "1000\n"
    r = cli("demo", "nothing")
    assert (r.returncode, r.stdout) == (0, "")


def test_json_output_and_params(cli: Cli) -> None:
    r = cli("--json", "node.info")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["roles"]["fl"] == {"health": "stopped", "restarts": 2}
    # positional TO AMOUNT, named --memo, boolean --urgent; bytes come back as hex
    r = cli("--json", "wallet", "send", "bob", "10", "--memo", "rent", "--urgent")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["to"] == "bob" and out["amount"] == 10 and out["memo"] == "rent" and out["urgent"] is True
    assert len(bytes.fromhex(out["tx"])) == 8
    # --memo=..., --no-urgent, positional MEMO, --json after the command
    r = cli("wallet", "send", "bob", "3", "lunch", "--no-urgent", "--json")
    assert json.loads(r.stdout)["memo"] == "lunch" and json.loads(r.stdout)["urgent"] is False
    r = cli("--json", "wallet", "send", "--to=al", "--amount=4", "--memo=a b")
    assert json.loads(r.stdout)["memo"] == "a b"
    # lists from commas, objects and any-typed values from JSON, null for optional params
    r = cli("--json", "demo", "tags", "a,b,c", "--weights", '{"x": 1}', "--anything", "[1, true]")
    assert json.loads(r.stdout) == {"tags": ["a", "b", "c"], "weights": {"x": 1}, "anything": [1, True]}
    r = cli("--json", "wallet", "balance", "null")
    assert r.stdout.strip() == "1000"
    # raw calls
    r = cli("--json", "call", "wallet.send", '{"to": "z", "amount": 7}')
    assert json.loads(r.stdout)["amount"] == 7
    r = cli("call", "wallet.balance", '["abc"]')
    assert r.stdout == "3\n"


def test_errors_and_exit_codes(cli: Cli) -> None:
    r = cli("wallet", "send", "bob", "-5")
    assert r.returncode == 1
    assert r.stderr == ('fognode-cli: error 201: amount must be positive, got -5\n'
                        '  data: {"amount": -5}\n')
    r = cli("wallet", "send", "bob", "ten")
    assert r.returncode == 1
    assert r.stderr.startswith("fognode-cli: error -32602: wallet.send: param 'amount' must be an integer, "
                               "got string 'ten'")
    r = cli("demo", "crash")
    assert r.returncode == 1
    assert "error -32603: internal error in demo.crash: ZeroDivisionError: division by zero" in r.stderr
    r = cli("call", "no.such", "[]")
    assert r.returncode == 1 and "error -32601: method not found: 'no.such'" in r.stderr
    # usage errors: exit 2, checked before anything is sent
    r = cli("wallet", "send", "bob")
    assert r.returncode == 2
    assert r.stderr == ("fognode-cli: missing AMOUNT; usage: fognode-cli wallet send TO AMOUNT "
                        "[--memo MEMO] [--urgent]\n")
    r = cli("wallet", "send", "a", "1", "m", "extra")
    assert r.returncode == 2 and "takes at most 3 argument(s), got 4" in r.stderr
    r = cli("wallet", "send", "a", "1", "--memmo", "x")
    assert r.returncode == 2 and "wallet.send has no option --memmo (did you mean --memo?)" in r.stderr
    r = cli("wallet", "sned", "bob")
    assert r.returncode == 2
    assert r.stderr.startswith("fognode-cli: unknown command 'wallet sned'; did you mean: wallet send")
    r = cli("call", "wallet.send", "{nope")
    assert r.returncode == 2 and "call: params are not valid JSON" in r.stderr
    r = cli("--bogus", "node", "info")
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr
    r = cli()
    assert r.returncode == 2 and r.stderr.startswith("usage: fognode-cli")
    r = cli("--help")
    assert r.returncode == 0 and "exit codes:" in r.stdout


def test_help(cli: Cli) -> None:
    r = cli("help")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert f"Commands of the daemon at {cli.datadir / 'fognode.sock'}, by role:" in text
    # grouped by role, node first
    assert text.index("\nnode\n") < text.index("\ndemo\n") < text.index("\nledger\n")
    assert "  wallet send     Send AMOUNT micro-units to address TO." in text
    one = cli("help", "wallet", "send")
    assert one.returncode == 0
    assert one.stdout == cli("help", "wallet.send").stdout
    assert one.stdout.startswith("usage: fognode-cli wallet send TO AMOUNT [--memo MEMO] [--urgent]\n")
    assert "Returns the transfer's id. AMOUNT must be positive." in one.stdout
    assert "  AMOUNT    integer  required" in one.stdout
    assert "method: wallet.send (role ledger); result: object" in one.stdout
    r = cli("help", "wallet")
    assert r.returncode == 0 and "wallet send" in r.stdout and "node info" not in r.stdout
    r = cli("wallet")
    assert r.returncode == 2 and "did you mean: wallet balance, wallet send?" in r.stderr
    r = cli("help", "wallet", "sned")
    assert r.returncode == 2 and "did you mean: wallet send" in r.stderr
    md = cli("help", "--markdown")
    assert md.returncode == 0
    assert md.stdout.startswith("# fognode-cli reference\n")
    assert "## ledger" in md.stdout
    assert "### `fognode-cli wallet send TO AMOUNT [--memo MEMO] [--urgent]`" in md.stdout
    assert "| `--memo` | string | default \"\"; or as argument 3 |" in md.stdout
    r = cli("--json", "help", "node", "info")
    assert json.loads(r.stdout)["name"] == "node.info"


def test_socket_selection_and_no_daemon(cli: Cli, tmp_path: Path) -> None:
    # --socket, $FOGNODE_DATADIR, ~/.fognode all reach the same daemon / name the path tried
    sock = cli.datadir / "fognode.sock"
    r = cli("--socket", str(sock), "wallet", "balance", datadir=False)
    assert r.stdout == "1000\n"
    r = cli("wallet", "balance", datadir=False, env={"FOGNODE_DATADIR": str(cli.datadir)})
    assert r.stdout == "1000\n"
    home = Path(tempfile.mkdtemp(dir="/tmp", prefix="fnhome-"))
    try:
        env = {"HOME": str(home), "FOGNODE_DATADIR": ""}
        r = cli("node", "info", datadir=False, env=env)
        assert r.returncode == 3
        assert r.stderr == (f"fognode-cli: no daemon at {home}/.fognode/fognode.sock (no such socket file). "
                            f"Start one with: fognode run --datadir {home}/.fognode\n")
        # a stale socket left by a killed daemon: connection refused
        (home / "d").mkdir()
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(home / "d" / "fognode.sock"))
        stale.close()
        r = cli("--datadir", str(home / "d"), "node", "info", datadir=False)
        assert r.returncode == 3
        assert r.stderr == (f"fognode-cli: no daemon at {home}/d/fognode.sock (connection refused). "
                            f"Start one with: fognode run --datadir {home}/d\n")
        # the daemon's [rpc] socket setting (node.toml, or FOGNODE_RPC_SOCKET) moves the socket
        (home / "d" / "node.toml").write_text(f'[rpc]\nsocket = "{sock}"\n')
        r = cli("--datadir", str(home / "d"), "wallet", "balance", datadir=False)
        assert r.returncode == 0 and r.stdout == "1000\n", r.stderr
        r = cli("--datadir", str(home), "wallet", "balance", datadir=False, env={"FOGNODE_RPC_SOCKET": str(sock)})
        assert r.returncode == 0 and r.stdout == "1000\n", r.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)
    r = cli("--datadir", str(tmp_path), "wallet", "send", "--help", datadir=False)
    assert r.returncode == 3 and "(no such socket file; the commands and their help come from the running daemon)" \
        in r.stderr
    r = cli("--datadir", str(tmp_path / ("x" * 120)), "node", "info", datadir=False)
    assert r.returncode == 3 and "over the 107-byte unix socket limit" in r.stderr


def test_daemon_that_does_not_answer(cli: Cli) -> None:
    t0 = time.monotonic()
    r = cli("--timeout", "0.5", "demo", "hang")
    assert r.returncode == 3
    assert r.stderr == (f"fognode-cli: the daemon at {cli.datadir / 'fognode.sock'} did not answer "
                        f"demo.hang within 0.5 s (--timeout)\n")
    assert time.monotonic() - t0 < 10
    # and it still serves everyone else
    assert cli("wallet", "balance").stdout == "1000\n"


def test_render_shapes() -> None:
    from fognode.tools.cli import render
    long = ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWAAAAAAAAAAAAAAAA", "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWB"]
    assert render({"addrs": long, "ok": True, "none": None, "empty": {}, "n": 2}).splitlines() == [
        f"addrs  {long[0]}", f"       {long[1]}", "ok     true", "none   -", "empty", "n      2"]
    assert render([{"a": 1, "b": {"c": "x"}}, {"a": 2, "d": long}]).splitlines() == [
        "a  b.c  d",
        "-  ---  " + "-" * len(", ".join(long)),
        "1  x",
        f"2       {', '.join(long)}",
    ]
    assert render([]) == "(none)" and render({}) == "(empty)" and render(None) == ""
    assert render([1, "two", False]) == "1\ntwo\nfalse"
    assert render(1.5) == "1.5" and render("text") == "text"


def test_json_numbers_keep_their_type(cli: Cli) -> None:
    # `--strategy-params '{"f": 1}'`: a dict[str, float] param gets the integer 1, not 1.0
    r = cli("--json", "demo", "tags", "a", "--weights", '{"f": 1, "mu": 0.5, "big": 12345678901234567890}')
    assert r.returncode == 0, r.stderr
    assert '"f": 1,' in r.stdout and '"mu": 0.5' in r.stdout and '"big": 12345678901234567890' in r.stdout
    w = json.loads(r.stdout)["weights"]
    assert type(w["f"]) is int and type(w["mu"]) is float


def test_boolean_options_are_flags(cli: Cli) -> None:
    one = cli("help", "demo", "filter", env={"COLUMNS": "120"})
    assert one.stdout.startswith("usage: fognode-cli demo filter [--region REGION] [--online | --no-online] "
                                 "[--no-color]\n"), one.stdout
    assert "--online ONLINE" not in one.stdout
    assert "  --online    flag    default unset; --online for true, --no-online for false" in one.stdout
    assert "  --no-color  flag    default true; --no-color makes it false" in one.stdout
    r = cli("--json", "demo", "filter", "--online", "eu")  # the flag takes no value: eu is REGION
    assert json.loads(r.stdout) == {"region": "eu", "online": True, "color": True}
    r = cli("--json", "demo", "filter", "--no-online", "--no-color")
    assert json.loads(r.stdout) == {"region": "", "online": False, "color": False}
    r = cli("--json", "demo", "filter", "--online=false")
    assert json.loads(r.stdout)["online"] is False
    r = cli("demo", "filter", "--online", "true")  # not silently taken as REGION
    assert r.returncode == 2
    assert r.stderr.startswith("fognode-cli: --online is a flag and takes no value (got 'true'): "
                               "write --online or --no-online; usage: fognode-cli demo filter")
    assert "[--urgent]" in cli("help", "wallet", "send").stdout


def test_a_role_that_is_down(cli: Cli) -> None:
    r = cli("market", "offers")
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("fognode-cli: error 104: market.offers is unavailable: role market is down "
                               "since 2026-12-04 10:31:02 UTC: crashed (RuntimeError: boom; restarting in 4 s)")
    r = cli("market", "offers", "--limit", "x", "y")  # a bad command line: still the role's absence
    assert r.returncode == 1 and "role market is down since 2026-12-04 10:31:02 UTC" in r.stderr
    r = cli("help")
    assert "market (role market is down since 2026-12-04 10:31:02 UTC: crashed" in r.stdout
    assert "market offers" in r.stdout and "[down] List the offers." in r.stdout
    r = cli("help", "market", "offers")
    assert r.returncode == 0 and "unavailable now: role market is down since 2026-12-04" in r.stdout
    r = cli("--json", "market", "offers")
    assert r.returncode == 1
    err = json.loads(r.stderr)["error"]
    assert err["kind"] == "rpc" and err["code"] == 104
    assert err["data"] == {"role": "market", "reason": "crashed (RuntimeError: boom; restarting in 4 s)",
                           "since": 1796380262.0}


def test_help_after_a_command_and_version(cli: Cli) -> None:
    for flag in ("--help", "-h"):
        r = cli("wallet", "send", flag)
        assert r.returncode == 0 and r.stdout == cli("help", "wallet", "send").stdout
    r = cli("wallet", "send", "bob", "--memo", "x", "--help")  # anywhere after the command
    assert r.returncode == 0 and r.stdout.startswith("usage: fognode-cli wallet send TO AMOUNT")
    r = cli("help", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: fognode-cli [--datadir D")
    r = cli("wallet", "--help")
    assert r.returncode == 0 and "wallet send" in r.stdout and "node info" not in r.stdout
    r = cli("wallet", "send", "--", "--help")  # after `--` it is a word
    assert r.returncode == 2 and "missing AMOUNT" in r.stderr
    r = cli("--version", datadir=False)
    assert r.returncode == 0 and r.stdout.startswith("fognode-cli ") and r.stdout.strip() != "fognode-cli"
    r = subprocess.run([sys.executable, "-m", "fognode.tools.fognode", "--version"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("fognode ")
    assert r.stdout.split()[1] == cli("--version", datadir=False).stdout.split()[1]


def test_errors_under_json_are_json(cli: Cli, tmp_path: Path) -> None:
    r = cli("--json", "wallet", "send", "bob", "-5")
    assert r.returncode == 1 and r.stdout == ""
    assert json.loads(r.stderr) == {"error": {"kind": "rpc", "code": 201, "message": "amount must be positive, got -5",
                                              "data": {"amount": -5}}}
    r = cli("wallet", "send", "bob", "--json")  # --json after the command counts too
    assert r.returncode == 2
    assert json.loads(r.stderr)["error"] == {
        "kind": "usage", "message": "missing AMOUNT; usage: fognode-cli wallet send TO AMOUNT [--memo MEMO] [--urgent]"}
    r = cli("--json", "wallet", "sned")
    assert r.returncode == 2 and json.loads(r.stderr)["error"]["message"].startswith("unknown command 'wallet sned'")
    r = cli("--json", "--datadir", str(tmp_path), "node", "info", datadir=False)
    assert r.returncode == 3
    err = json.loads(r.stderr)["error"]
    assert err["kind"] == "no_daemon" and err["socket"] == str(tmp_path / "fognode.sock")
    assert "no such socket file" in err["message"]


def test_help_wraps_to_the_terminal(cli: Cli) -> None:
    for cols in (50, 72):
        for args in (("help",), ("help", "demo", "filter"), ("help", "wallet", "send")):
            r = cli(*args, env={"COLUMNS": str(cols)})
            assert r.returncode == 0, r.stderr
            long = [ln for ln in r.stdout.splitlines() if len(ln) > cols and " " in ln.strip()
                    and not ln.startswith(("usage: fognode-cli [", "Commands of the daemon at"))]
            assert not long, (cols, args, long)
    narrow = cli("help", "demo", "filter", env={"COLUMNS": "50"}).stdout
    assert narrow.startswith("usage: fognode-cli demo filter [--region REGION]\n"
                             "       [--online | --no-online] [--no-color]\n"), narrow
    wide = cli("help", "demo", "filter", env={"COLUMNS": "200"}).stdout
    assert "This description is deliberately long so that help output has something to wrap: it goes on" in wide
