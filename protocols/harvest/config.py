"""The `[protocols.harvest]` section of node.toml: `HarvestConfig`, its defaults, its validation.

The section holds every knob of `HarvestPolicy` (policy.py: the seed's defaults, BOINC's
computing preferences as the baseline) at the top level, plus the role's own keys: where the
readings come from (`sensors`, `trace_mode`), how often the policy decides (`tick_interval`) and
the nice of executor jobs by the kind of session they work for (`market_nice`, `manual_nice`:
19 by default, as BOINC runs its tasks; a dedicated box, or a devnet whose nodes share one
machine and would each count the others as the owner, may lower it to 0; a negative nice needs
privileges and would put foreign work above the owner's, so it is refused).
`enabled` is read by node/config.py like every role's. `HarvestConfig.policy()` is the policy
node.toml asks for; the operator's `harvest.set_policy` overrides are kept apart
(policy_store.py) and applied on top of it. Validation raises a ConfigError keyed
`protocols.harvest.<key>` (a knob's error is a PolicyError, which is one).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from fognode.node.errors import ConfigError
from fognode.protocols.harvest.policy import KNOBS, HarvestPolicy

TRACE_MODES = ("replay", "follow")


@dataclass(frozen=True)
class HarvestConfig(HarvestPolicy):
    sensors: str = "psutil"            # "psutil" (this device), or a recorded trace (JSON/JSONL)
                                       # path, relative to the data dir, to replay instead
    trace_mode: str = "replay"         # replay: the trace on the daemon's clock; follow: its last line
    tick_interval: float = 5.0         # seconds between policy decisions (sensor reads)
    market_nice: int = 19              # nice of market WASM jobs (19: yield to everything, as BOINC)
    manual_nice: int = 19              # nice of jobs an operator's "manual" session runs
    history_sessions: int = 1000       # finished sessions kept in full; older work folds into per-day totals

    def __post_init__(self) -> None:
        """No check at construction: node/config.py calls `validate(source)` so that an error
        names the file as well as the key."""

    def validate(self, source: str | None = None) -> None:
        """Raise ConfigError (PolicyError for a knob) naming the first bad key."""
        HarvestPolicy.validate(self)

        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(msg, source=source, key=f"protocols.harvest.{key}")

        if not self.sensors or len(self.sensors) > 4096 or "\0" in self.sensors:
            raise bad("sensors", "must be \"psutil\" or the path of a trace file (1..4096 characters)")
        if self.trace_mode not in TRACE_MODES:
            raise bad("trace_mode", f"must be one of {', '.join(TRACE_MODES)}, got {self.trace_mode!r}")
        if not 0.1 <= self.tick_interval <= 3600:
            raise bad("tick_interval", f"must be between 0.1 and 3600 seconds, got {self.tick_interval:g}")
        if isinstance(self.history_sessions, bool) or not isinstance(self.history_sessions, int) \
                or not 10 <= self.history_sessions <= 1_000_000:
            raise bad("history_sessions", f"must be an integer between 10 and 1000000, got "
                                          f"{self.history_sessions!r}")
        for key in ("market_nice", "manual_nice"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 19:
                raise bad(key, f"must be an integer between 0 and 19, got {v!r}")

    def nice(self) -> dict[str, int]:
        """The nice of executor jobs by harvest session kind (FL's process is adopted as is)."""
        return {"market": self.market_nice, "manual": self.manual_nice}

    def policy(self) -> HarvestPolicy:
        """The policy node.toml asks for (validated)."""
        return HarvestPolicy(**{name: getattr(self, name) for name in KNOBS})

    def trace_path(self, datadir: Path) -> Path | None:
        """The trace file to replay (relative paths are in the data dir), or None for psutil."""
        if self.sensors == "psutil":
            return None
        p = Path(self.sensors).expanduser()
        return p if p.is_absolute() else datadir / p


ROLE_KEYS: tuple[str, ...] = tuple(f.name for f in fields(HarvestConfig) if f.name not in KNOBS)
