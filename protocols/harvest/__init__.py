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
The executor side:
- `executor`: the trio `Executor` that owns work's child processes (nice, limits, SIGSTOP/SIGCONT,
  memory kills, the duty-cycle throttle, `watch` of a process another role starts);
  `limits` (sans-IO allowance and throttle), `launch`, `cgroup`, `procstat`, `jobs`; every job
  is guarded by the node's reaper (node/reaper.py: one `sh` per daemon process that SIGKILLs
  every child it started when it dies).
- `meter`: per-job and per-session usage (CPU seconds, MB-hours, wall, suspended, fuel).
- `wasm`, `wasm_engine`, `wasm_wire`, `wasm_child`: deterministic, fuel-metered WASM jobs
  (wasmtime) run in a child process through the executor.
The role itself (RPC, sessions, registry and FL wiring) builds on both.
"""
