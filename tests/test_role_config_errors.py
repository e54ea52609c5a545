"""A value the fl or ledger role cannot run with stops `fognode run` (a real process) at start,
naming the key, as every other section's bad value does (README, Configuration). Before, the
two roles checked their config only when they were built: the daemon started, logged `role fl
failed and will not be restarted` and ran on without the role; a ledger `batch_max` or
`sync_batch` of 0 was not refused at all (no certificate gossiped, or none synced), nor an FL
task name that no installed task has (the node opted out of every session of that task), nor an
FL tick_interval of 0 (the role's tick loop took a whole core: 15 CPU-s in 15 s, against 1.5 s
at the default 0.25), a stream_timeout of 0 or aggregation_threads of 0."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN = [sys.executable, "-m", "fognode.tools.fognode"]


@pytest.fixture(scope="module")
def datadir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cfg") / "d"
    subprocess.run([*RUN, "init", "--datadir", str(d)], env={**os.environ, "FOGNODE_PASSPHRASE": ""},
                   check=True, capture_output=True, timeout=60)
    return d


@pytest.mark.parametrize(("setting", "message"), [
    ("protocols.fl.chunk_size=512", "protocols.fl.chunk_size: must be between 1024 and 4194304"),
    ("protocols.fl.training_nice=20", "protocols.fl.training_nice: must be between 0 and 19"),
    ("protocols.fl.transfer_session_idle=300", "protocols.fl.transfer_session_idle: must be between 0 and 240"),
    ("protocols.fl.tasks=synthetic,sythetic_mlp",
     "protocols.fl.tasks: no installed FL task 'sythetic_mlp'; installed (entry points of fognode.fl_tasks): "
     "synthetic, synthetic_mlp"),
    ("protocols.fl.tick_interval=0", "protocols.fl.tick_interval: must be between 0.01 and 60 seconds"),
    ("protocols.fl.stream_timeout=0", "protocols.fl.stream_timeout: must be between 0.1 and 86400 seconds"),
    ("protocols.fl.aggregation_threads=0", "protocols.fl.aggregation_threads: must be between 1 and 256"),
    ("protocols.ledger.sync_interval=0", "protocols.ledger.sync_interval: must be between 0.01 and 86400"),
    ("protocols.ledger.batch_max=0", "protocols.ledger.batch_max: must be between 1 and 1000000, got 0"),
    ("protocols.ledger.sync_batch=0", "protocols.ledger.sync_batch: must be between 1 and 1000000, got 0"),
])
def test_a_bad_fl_or_ledger_value_stops_the_daemon_naming_the_key(
        datadir: Path, setting: str, message: str) -> None:
    p = subprocess.run([*RUN, "run", "--datadir", str(datadir), "--listen", "/ip4/127.0.0.1/tcp/0",
                        "--metrics-port", "0", "--set", "protocols.onion.socks_port=0", "--set", setting],
                       env={**os.environ, "FOGNODE_PASSPHRASE": ""}, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2, p.stderr[-2000:]
    assert message in p.stderr and "fognode: error: " in p.stderr, p.stderr[-2000:]
