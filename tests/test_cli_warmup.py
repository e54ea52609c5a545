"""A warming-up daemon (its control socket answers NODE_NOT_READY until its roles have
started): the server's answer, and `fognode-cli` waiting for it within --timeout. Against
tests/rpc_test_server.py as a real process, held in warm-up until the test creates a file."""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.test_cli import CLI, HERE


@pytest.fixture
def warming(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(data dir, flag file): a server warming up until the flag file exists."""
    d = Path(tempfile.mkdtemp(dir="/tmp", prefix="fnwarm-"))
    sock = d / "fognode.sock"
    flag = tmp_path / "ready.flag"
    proc = subprocess.Popen([sys.executable, str(HERE / "rpc_test_server.py"), str(sock), "--warm-until", str(flag)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline().strip() == f"ready {sock}", proc.poll()
        yield d, flag
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for f in (proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
            for p in d.iterdir():
                p.unlink()
            d.rmdir()


def ask(sock: Path, method: str) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(sock))
        s.sendall(json.dumps({"jsonrpc": "2.0", "id": 7, "method": method}).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, "the server hung up"
            buf += chunk
    return json.loads(buf.partition(b"\n")[0])


def test_warming_up_answers_not_ready_then_the_cli_waits(warming: tuple[Path, Path]) -> None:
    d, flag = warming
    r = ask(d / "fognode.sock", "node.info")
    assert r["id"] == 7 and r["error"]["code"] == 100, r
    assert "warming up (waiting for the test's flag file" in r["error"]["message"]
    assert r["error"]["data"]["phase"] == "waiting for the test's flag file"
    # `help`/`rpc.discover` too: the CLI must not see a half-registered method table
    assert ask(d / "fognode.sock", "rpc.discover")["error"]["code"] == 100

    cli = subprocess.Popen(CLI + ["--datadir", str(d), "--timeout", "120", "node", "info"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "COLUMNS": "100"})
    try:
        assert cli.stderr is not None
        said, _, _ = select.select([cli.stderr], [], [], 60)
        assert said, "the CLI did not say it is waiting"
        assert cli.stderr.readline() == ("fognode-cli: the daemon is warming up (waiting for the test's flag file); "
                                         "waiting up to 120 s\n")
        flag.touch()
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert cli.returncode == 0, err
    assert "12D3KooWSelf" in out and err == ""
    assert "result" in ask(d / "fognode.sock", "node.info")


def test_cli_gives_up_after_its_timeout(warming: tuple[Path, Path]) -> None:
    d, _ = warming
    r = subprocess.run(CLI + ["--datadir", str(d), "--json", "--timeout", "0.5", "node", "info"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    err = json.loads(r.stderr)["error"]
    assert err["kind"] == "rpc" and err["code"] == 100
    assert "still warming up after 0.5 s; --timeout sets how long to wait" in err["message"]
