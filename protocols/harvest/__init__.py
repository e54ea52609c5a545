"""Harvest (issue 12): volunteer this device's idle compute safely, meter it, and run work on it.

The policy side, one concern per module:
- `sensors`: `Readings` (battery, power, temperatures, the owner's CPU load, memory, user idle,
  metered network; None when the OS does not tell) from `PsutilSensors` or a recorded trace
  (`TraceSensors`).
- `policy`: `HarvestPolicy`, every knob with the seed's defaults and BOINC's computing
  preferences as the baseline, its validation and partial updates (`harvest.set_policy`).
- `policy_core`: the sans-IO `PolicyCore.tick(now, readings) -> Decision` (running or suspended
  and why, hysteresis, thermal backoff, minimum dwell, the allowance of cores, CPU time and
  memory).
- `policy_store`: the operator's policy overrides persisted in the data dir.
- `config`: `[protocols.harvest]`; `errors`: the role's errors and RPC codes (4xx).
The executor (child processes, limits, WASM jobs, metering) and the role itself (RPC, sessions,
registry and FL wiring) build on these.
"""
