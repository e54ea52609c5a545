"""`fognode-cli top`'s command line without a daemon: its options are checked (exit 2 naming
what is wrong), it refuses to run without a terminal, and the rest of fognode-cli never
imports rich (it starts with the standard library alone)."""
from __future__ import annotations

import subprocess
import sys


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fognode.tools.cli", "--socket", "/nonexistent.sock", *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_top_options_and_terminal() -> None:
    for args, said in [(["--interval", "x"], "--interval must be a number"), (["--interval", "0.1"], "between 0.2"),
                       (["--interval"], "needs a value"), (["--sort", "cpu"], "takes only --interval")]:
        r = cli("top", *args)
        assert r.returncode == 2 and said in r.stderr, (args, r.stderr)
    r = cli("top")
    assert r.returncode == 2 and "top needs a terminal" in r.stderr
    r = cli("top", "--help")
    assert r.returncode == 0 and "usage: fognode-cli top [--interval S]" in r.stdout and "q quits" in r.stdout
    assert "fognode-cli top" in cli("--help").stdout


def test_plain_cli_does_not_import_rich() -> None:
    code = ("import sys; from fognode.tools import cli; cli.main(['--help']); "
            "sys.exit(3 if any(m == 'rich' or m.startswith('rich.') for m in sys.modules) else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
