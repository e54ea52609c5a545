"""The `[protocols.fl]` section of node.toml: `FlConfig`, its defaults and its validation."""
from __future__ import annotations

from dataclasses import dataclass, field

from fognode.node.errors import ConfigError
from fognode.protocols.fl.messages import MAX_COORDINATORS
from fognode.protocols.fl.task_names import installed_tasks

MIB = 1 << 20


@dataclass(frozen=True)
class FlConfig:
    tasks: list[str] = field(default_factory=lambda: ["synthetic", "synthetic_mlp"])
    max_model_bytes: int = 256 * MIB      # largest model/update accepted (bytes on the wire)
    chunk_size: int = MIB                 # tensor chunk (one stream frame), 1 KiB..4 MiB
    default_deadline: float = 60.0        # seconds per round attempt when fl.start gives none
    optin_seconds: float = 5.0            # how long a starter collects opt-ins before round 1
    data_seed: int = 0                    # seed of this node's task data (synthetic tasks)
    data_index: int = -1                  # this node's data index; -1 = derived from the peer id
    capabilities: list[str] = field(default_factory=list)   # what this node offers (e.g. "gpu")
    tick_interval: float = 0.25           # seconds between deadline checks
    republish_interval: float = 2.0       # seconds between re-gossiping the current plan
    stream_timeout: float = 120.0         # bound on one model or update transfer
    transfer_session_idle: float = 30.0   # seconds an idle transfer session to a peer is kept
                                          # (0..240, below overlay.stream_idle_timeout; 0 = a
                                          # stream per model fetch and update push)
    aggregation_threads: int = 1          # aggregations (and model saves) run at once
    torch_threads: int = 1                # torch intra-op threads in the task process (0 =
                                          # torch's default); 1 is fastest for small models
    training_nice: int = 0                # how much lower the task process's CPU priority is
                                          # (0..19): raise it where the owner's work comes first
    coordinator_fallbacks: int = 2        # fallback coordinators named in the announcements of
                                          # sessions this node starts (0..16; 0 = none)
    task_process_at_start: bool = False   # start the task process and import torch when the
                                          # role starts, not at the first session's announcement

    def validate(self) -> None:
        """Called when node.toml is loaded, so a bad value stops the daemon naming the file and
        the key (it used to fail only the fl role, the daemon running on without it)."""
        validate(self)


def validate(config: FlConfig) -> None:
    """Refuse values the role cannot run with (ConfigError naming the key)."""
    if not 1024 <= config.chunk_size <= 4 * MIB:
        raise ConfigError("must be between 1024 and 4194304", key="protocols.fl.chunk_size")
    if not 0 <= config.coordinator_fallbacks <= MAX_COORDINATORS:
        raise ConfigError(f"must be between 0 and {MAX_COORDINATORS}",
                          key="protocols.fl.coordinator_fallbacks")
    idle = config.transfer_session_idle
    if not (isinstance(idle, (int, float)) and 0 <= idle <= 240):
        raise ConfigError(f"must be between 0 and 240 seconds, got {idle!r}",
                          key="protocols.fl.transfer_session_idle")
    if not 0 <= config.training_nice <= 19:
        raise ConfigError("must be between 0 and 19", key="protocols.fl.training_nice")
    for key, lo, hi in (("tick_interval", 0.01, 60.0), ("republish_interval", 0.1, 3600.0),
                        ("stream_timeout", 0.1, 86_400.0), ("default_deadline", 0.1, 86_400.0),
                        ("optin_seconds", 0.0, 3600.0)):   # the deadline and opt-in of fl.start's spec
        v = getattr(config, key)
        if not lo <= v <= hi:   # a tick of 0 spun the event loop; a timeout of 0 failed every transfer
            raise ConfigError(f"must be between {lo:g} and {hi:g} seconds, got {v!r}", key=f"protocols.fl.{key}")
    if not 4 * 1024 <= config.max_model_bytes <= 1 << 40:
        raise ConfigError(f"must be between 4096 and 2^40 bytes, got {config.max_model_bytes}",
                          key="protocols.fl.max_model_bytes")
    if not 1 <= config.aggregation_threads <= 256:
        raise ConfigError(f"must be between 1 and 256, got {config.aggregation_threads}",
                          key="protocols.fl.aggregation_threads")
    installed = installed_tasks()
    unknown = [t for t in config.tasks if t not in installed]
    if unknown:   # a typo made the node silently opt out of every session of that task
        raise ConfigError(f"no installed FL task {unknown[0]!r}; installed (entry points of "
                          f"fognode.fl_tasks): {', '.join(installed) or 'none'}",
                          key="protocols.fl.tasks")
