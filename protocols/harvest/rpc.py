"""The `harvest.*` RPC methods: status, sessions, pause/resume, the policy, receipts.

Mixed into `HarvestRole` (protocol.py) because the daemon finds a role's RPC methods on its
class (node/rpc/methods.declared_methods); `HarvestRpc` declares what it uses of the role.
Error codes (errors.py): 400 a policy knob refused (data names the field), 401 the policy
could not be saved, 402 unknown session, 403 receipt refused, 404 bad parameter, 405 the role
is not ready.
"""
from __future__ import annotations

import abc
from typing import Any, Literal

import trio

from fognode.node.errors import RpcError
from fognode.node.rpc.methods import rpc_method
from fognode.protocols.harvest import errors as E
from fognode.protocols.harvest.contribution import SESSION_KINDS, SessionState, usage_json
from fognode.protocols.harvest.errors import PolicyError, PolicyStoreError
from fognode.protocols.harvest.receipts import KINDS, ReceiptRefused
from fognode.protocols.harvest.service import HarvestService

MAX_LIMIT = 10_000


def _session_id(text: str) -> bytes:
    try:
        sid = bytes.fromhex(text)
    except ValueError:
        sid = b""
    if len(sid) != 16:
        raise RpcError(E.HARVEST_BAD_REQUEST, f"session id must be 32 hex characters, got {text[:40]!r}")
    return sid


class HarvestRpc(abc.ABC):
    """The role's `harvest.*` RPC methods, over its service (see the module docstring)."""

    service: HarvestService | None

    @abc.abstractmethod
    def _tick_now(self) -> None:
        """Run one policy tick at once (after pause/resume/set_policy), if the role runs."""

    def _svc(self) -> HarvestService:
        if self.service is None:
            raise RpcError(E.HARVEST_NOT_READY, "the harvest role is starting")
        return self.service

    def _state(self, svc: HarvestService) -> dict[str, Any]:
        d = svc.decision
        info = svc.info()
        now = trio.current_time()
        return {
            "state": d.state.value if d is not None else "starting",
            "reasons": [r.value for r in d.reasons] if d is not None else [],
            "details": list(d.details) if d is not None else [],
            "resume_in_seconds": (round(max(0.0, d.resume_not_before - now), 1)
                                  if d is not None and d.resume_not_before is not None else None),
            "allowance": ({"cores": d.allowance.cores, "cpu_fraction": d.allowance.cpu_fraction,
                           "memory_bytes": d.allowance.memory_bytes} if d is not None else None),
            "announced": info.to_wire() if info is not None else None,
        }

    @rpc_method("harvest.status")
    async def rpc_status(self) -> dict[str, Any]:
        """This device's harvest state: running or suspended and why (with details and when it
        may resume), the policy's allowance, the latest sensor readings (null: unknown), the
        work running now, this run's sessions with their meters, and the device's totals."""
        svc = self._svc()
        running = [{**s.to_json(), "usage": usage_json(svc.live_usage(s.session_id))}
                   for s in svc.ledger.running()]
        return {**self._state(svc),
                "readings": svc.readings.to_json() if svc.readings is not None else None,
                "paused": svc.core.paused, "work": svc.current_work(), "sessions": running,
                "totals": svc.ledger.totals().to_json()}

    @rpc_method("harvest.sessions")
    async def rpc_sessions(self, limit: int = 20,
                           state: Literal["running", "completed", "abandoned"] | None = None,
                           kind: str | None = None) -> list[dict[str, Any]]:
        """The newest LIMIT harvest sessions (of STATE, of KIND: fl, market, manual), newest
        first, with what each used and earned. Sessions persist across restarts."""
        svc = self._svc()
        if not 1 <= limit <= MAX_LIMIT:
            raise RpcError(E.HARVEST_BAD_REQUEST, f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        if kind is not None and kind not in SESSION_KINDS:
            raise RpcError(E.HARVEST_BAD_REQUEST, f"kind must be one of {', '.join(SESSION_KINDS)}, got {kind!r}")
        st = SessionState(state) if state is not None else None
        return [s.to_json() for s in svc.ledger.sessions(limit=limit, state=st, kind=kind)]

    def _pause(self, paused: bool) -> dict[str, Any]:
        svc = self._svc()
        try:
            svc.set_paused(paused)
        except PolicyStoreError as e:
            raise RpcError(E.HARVEST_POLICY_NOT_SAVED, str(e)) from None
        self._tick_now()
        return self._state(svc)

    @rpc_method("harvest.pause")
    async def rpc_pause(self) -> dict[str, Any]:
        """Suspend all harvest work now (running jobs and training stop where they are) until
        harvest.resume; kept across restarts (in the data dir). 401 if it cannot be saved."""
        return self._pause(True)

    @rpc_method("harvest.resume")
    async def rpc_resume(self) -> dict[str, Any]:
        """Lift harvest.pause. Work runs again unless another reason (battery, heat, ...) or
        the minimum suspend time still holds it (the answer says which)."""
        return self._pause(False)

    @rpc_method("harvest.policy")
    async def rpc_policy(self) -> dict[str, Any]:
        """The harvest policy in force (every knob), and which knobs harvest.set_policy
        overrides of node.toml's values."""
        svc = self._svc()
        return {"policy": svc.policy.to_json(), "overrides": dict(svc.overrides)}

    @rpc_method("harvest.set_policy")
    async def rpc_set_policy(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change harvest policy knobs, e.g. {"min_battery_pct": 30, "require_charging": false};
        a null value returns a knob to node.toml's value. Validated as a whole and saved in
        the data dir before it applies (it survives restarts). Errors: 400 a knob is refused
        (wrong type, negative, out of range; data.field names it), 401 it could not be saved;
        either way the policy in force is unchanged."""
        svc = self._svc()
        try:
            policy = svc.set_policy(changes)
        except PolicyError as e:
            raise RpcError(E.HARVEST_BAD_POLICY, f"{e.field}: {e.reason}", {"field": e.field}) from None
        except PolicyStoreError as e:
            raise RpcError(E.HARVEST_POLICY_NOT_SAVED, str(e)) from None
        self._tick_now()
        return {"policy": policy.to_json(), "overrides": dict(svc.overrides)}

    @rpc_method("harvest.credit")
    async def rpc_credit(self, kind: Literal["fl_round", "market_job"], receipt: str) -> dict[str, Any]:
        """Credit a RECEIPT (hex of its signed bytes) of KIND to this device: fl_round (an FL
        aggregator's round receipt) or market_job (a customer's work receipt; the market role
        credits those of the jobs it runs by itself). Refused (403) when forged, for another
        device, self-issued, already credited, or for an FL session or market job this device
        did no work for."""
        svc = self._svc()
        try:
            data = bytes.fromhex(receipt)
        except ValueError:
            raise RpcError(E.HARVEST_BAD_REQUEST, "receipt must be hex") from None
        assert kind in KINDS
        try:
            c = await svc.record_credit(kind, data)
        except ReceiptRefused as e:
            raise RpcError(E.HARVEST_RECEIPT_REFUSED, str(e), {"reason": e.reason.value}) from None
        return c.to_json()

    @rpc_method("harvest.stop_session")
    async def rpc_stop_session(self, session: str, completed: bool = False,
                               reason: str = "stopped by the operator") -> dict[str, Any]:
        """End harvest SESSION (its id): COMPLETED, else abandoned with REASON. Returns the
        session as recorded and the device's totals."""
        svc = self._svc()
        sid = _session_id(session)
        try:
            return (await svc.end_session(sid, completed=completed, reason=reason[:256])).to_json()
        except LookupError:
            raise RpcError(E.HARVEST_UNKNOWN_SESSION, f"no harvest session {session}") from None


__all__ = ["HarvestRpc"]
