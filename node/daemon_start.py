"""What `fognode run` reads before the daemon is ready: the settings the control socket needs,
and the deferred load of the roles and the whole config.

Start-up is staged so the control socket answers within a few tenths of a second of the
process starting (node/daemon.py). Importing the roles and libp2p takes most of a start
(about 0.9 s of about 1 s with compiled bytecode on the reference 2-core machine, measured
with `python -X importtime`), and the full config cannot be checked without them: each
role's `Config` lives with the role. So:

1. `early_settings` reads only the [node] and [rpc] sections (file, FOGNODE_NODE_* /
   FOGNODE_RPC_* variables, and --set/flag overrides of those keys), with the same checks and
   messages as `load_config`: the socket path, its limits, the log level and format;
2. `LoadRoles` (run by the daemon in a worker thread while the socket answers "warming up")
   imports the roles, then loads and checks the whole config; a ConfigError there stops the
   daemon and `fognode run` exits 2 with it, as before. Its imports, like those `fognode run`
   makes before it opens the socket, run with the cyclic GC off and the dataclass methods'
   bytecode cached across starts (node/startimports.py `start_imports`; this is the last block).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from fognode.node.config import (ENV_PREFIX, Config, NodeSection, RpcSection, build_section, load_config,
                                 read_toml)
from fognode.node.errors import ConfigError
from fognode.node.role import Role
from fognode.node.startimports import start_imports

EARLY_SECTIONS: dict[str, type] = {"node": NodeSection, "rpc": RpcSection}


@dataclass(frozen=True)
class EarlySettings:
    node: NodeSection
    rpc: RpcSection


def early_settings(path: Path | None, *, environ: Mapping[str, str] | None = None,
                   overrides: list[tuple[str, str, str]] | None = None) -> EarlySettings:
    """[node] and [rpc] from `path` (None: defaults), the environment and `overrides`; other
    sections and keys are left to `load_config`. Raises ConfigError naming the key."""
    source = str(path) if path is not None else "embedded defaults"
    data = read_toml(path) if path is not None else {}
    env = environ if environ is not None else os.environ
    pending: list[tuple[str, str, str]] = []
    for var, text in env.items():
        rest = var[len(ENV_PREFIX):].lower() if var.startswith(ENV_PREFIX) else ""
        for sec in EARLY_SECTIONS:
            if rest.startswith(sec + "_"):
                pending.append((f"{sec}.{rest[len(sec) + 1:]}", text, f"env {var}"))
    pending += list(overrides or [])
    by_section: dict[str, dict[str, tuple[str, str]]] = {}
    for dotted, text, origin in pending:
        sec, _, key = dotted.partition(".")
        if sec in EARLY_SECTIONS and key and "." not in key:
            by_section.setdefault(sec, {})[key] = (text, origin)
    built = {}
    for name, cls in EARLY_SECTIONS.items():
        table = data.get(name, {})
        if not isinstance(table, Mapping):
            raise ConfigError("must be a table", source=source, key=name)
        built[name] = build_section(cls, table, source=source, prefix=name, overrides=by_section.get(name))
    return EarlySettings(node=built["node"], rpc=built["rpc"])


@dataclass(frozen=True)
class LoadRoles:
    """The deferred part of start-up: import the roles (and with them libp2p), then load the
    whole config. Blocking (imports); the daemon calls it in a worker thread. Raises
    ConfigError (a bad config, or a role that does not load)."""

    config_path: Path | None
    overrides: tuple[tuple[str, str, str], ...] = ()

    def __call__(self) -> tuple[Config, list[type[Role]]]:
        with start_imports():
            from fognode.node.host import open_overlay  # noqa: F401  (libp2p: imported here, off the event loop)
            from fognode.node.roles import discover_roles

            roles = discover_roles()
        config = load_config(self.config_path, roles={c.name: c.Config for c in roles},
                             overrides=list(self.overrides))
        return config, roles
