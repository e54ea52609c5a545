"""What a daemon's start imports, checked in fresh interpreters: the control socket opens before
libp2p and the roles are imported, and the warm-up's imports (node/daemon_start.py `LoadRoles`)
leave out what only a job or a session needs (issue 16 item 4: the cold start)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

NEVER = ("torch", "wasmtime")          # torch: FL's task process only; wasmtime: the WASM job child only
NOT_BEFORE_THE_SOCKET = ("libp2p", "numpy", "multiaddr", "plyvel", "fognode.protocols")

PROBE = """
import gc, json, sys
def loaded(names):
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in sys.modules))
import fognode.tools.fognode, fognode.node.daemon
from fognode.node.daemon_start import LoadRoles
before = loaded(NOT_BEFORE + NEVER)
config, roles = LoadRoles(None)()
from fognode.node.codecache import cache_path, read_cache
print(json.dumps({"before": before, "after": loaded(NEVER), "roles": sorted(r.name for r in roles),
                  "gc_on": gc.isenabled(), "frozen": gc.get_freeze_count(), "libp2p": "libp2p" in sys.modules,
                  "cache": str(cache_path()), "cached": len(read_cache(cache_path()))}))
"""


def test_a_start_imports_only_what_it_needs(tmp_path: Path) -> None:
    code = f"NOT_BEFORE = {NOT_BEFORE_THE_SOCKET!r}\nNEVER = {NEVER!r}\n" + PROBE
    # bytecode written, as an installed package has it (here under tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    # the socket answers "warming up" from here on: none of the heavy imports yet
    assert got["before"] == [], got
    # the warm-up imported every role and libp2p, but neither torch nor wasmtime
    assert {"fl", "harvest", "ledger", "market", "monitor", "onion", "registry"} <= set(got["roles"])
    assert got["libp2p"] and got["after"] == [], got
    # ... with the collector off, then back on with the imports frozen (imports_without_gc)
    assert got["gc_on"] and got["frozen"] > 10_000, got
    # ... and the bytecode of the dataclass methods they made cached beside ours (node/codecache.py)
    assert got["cache"].startswith(str(tmp_path)) and got["cached"] > 1000, got
