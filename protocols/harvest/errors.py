"""Errors of the harvest role's policy side, and the RPC codes they map to (harvest owns 400-499).

- `HarvestError`: root of the role's own errors.
- `PolicyError`: a harvest policy value is refused (wrong type, negative, out of range, or two
  knobs that together could never let the device work). `field` names the knob; the error is
  also a `ConfigError` keyed `protocols.harvest.<field>`, so node.toml, env vars, `--set` and
  `harvest.set_policy` all report it the same way. Whose fault: whoever supplied the value (the
  operator's config or RPC client); the policy in force is left unchanged.
- `PolicyStoreError`: the persisted operator policy (`<datadir>/harvest/policy.json`) is
  corrupt or unreadable, or could not be written; the message names the path and what was
  wrong (the local machine's or the operator's fault, never a peer's).
- `TraceError`: a recorded sensor trace (JSON/JSONL) is malformed; the message names the file,
  the line and the field.
The executor's own errors live in `exec_errors.py`.
"""
from __future__ import annotations

from fognode.node.errors import ConfigError, FognodeError

# RPC error codes (node/rpc/methods.py CODE_RANGES["harvest"]); the role may add more from 402.
HARVEST_BAD_POLICY = 400       # harvest.set_policy: a field is refused (data: {"field": name})
HARVEST_POLICY_NOT_SAVED = 401  # harvest.set_policy: the new policy could not be persisted
HARVEST_UNKNOWN_SESSION = 402  # no harvest session with that id on this node
HARVEST_RECEIPT_REFUSED = 403  # harvest.credit: forged, foreign, self-issued or duplicate (data: {"reason"})
HARVEST_BAD_REQUEST = 404      # another parameter is invalid (the message names it)
HARVEST_NOT_READY = 405        # the harvest role is starting (no policy decision yet)


class HarvestError(FognodeError):
    """Root of the harvest role's errors."""


class PolicyError(HarvestError, ConfigError):
    """A harvest policy value is refused; `field` names the knob (the policy in force stays)."""

    def __init__(self, field: str, message: str, *, source: str | None = None) -> None:
        self.field = field
        self.reason = message
        ConfigError.__init__(self, message, source=source, key=f"protocols.harvest.{field}")


class PolicyStoreError(HarvestError):
    """The persisted harvest policy cannot be read (corrupt) or written; names the path."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class TraceError(HarvestError, ValueError):
    """A sensor trace file is malformed; names the file, the line (1-based) and the field."""

    def __init__(self, message: str, *, path: str, line: int, field: str | None = None) -> None:
        self.path = path
        self.line = line
        self.field = field
        where = f"{path}:{line}" + (f": {field}" if field else "")
        super().__init__(f"{where}: {message}")
