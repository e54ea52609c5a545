"""What `fl.status` and `fl.sessions` show of one session, read from its `Session`: the spec,
this node's role, progress, the privacy spent (DP sessions: epsilon after the rounds done and
after each round of the history) and, at the coordinator, the history, candidates and the
round under way. Pure functions of the session; no behaviour."""
from __future__ import annotations

from typing import Any

from fognode.protocols.fl.messages import coordinators_of
from fognode.protocols.fl.privacy.dp import epsilon_after
from fognode.protocols.fl.session.state import Session


def session_status(s: Session) -> dict[str, Any]:
    """`fl.status` of session `s` as this node sees it."""
    spec = s.spec
    out: dict[str, Any] = {
        "session_id": s.sid.hex(), "task": spec.task, "strategy": spec.strategy,
        "state": s.state.value if s.state.ended else "running",
        "phase": s.state.value, "starter": s.ann.starter, "started": s.ann.created,
        "role": "coordinator" if s.coordinator is not None else "participant",
        "rounds": spec.rounds, "rounds_done": s.rounds_done,
        "min_participants": spec.min_participants, "participants_per_round": spec.participants,
        "model_hash": s.latest_model.hex(), "reason": s.reason,
        "secagg": spec.privacy.secagg, "hierarchical": spec.hierarchical,
        "coordinators": list(coordinators_of(s.ann)),
        "acting_coordinator": coordinators_of(s.ann)[s.acting],
        "marks": [list(m) for m in s.marks],
    }
    if spec.privacy.dp:
        out["epsilon"] = epsilon_after(s.rounds_done, spec.privacy.dp_noise, 1.0, spec.privacy.dp_delta)
        out["delta"] = spec.privacy.dp_delta
    else:
        out["epsilon"] = None
    c = s.coordinator
    if c is not None:
        out["history"] = [r.to_status() for r in c.history]
        if spec.privacy.dp:     # the privacy spent after each round
            for h in out["history"]:
                h["epsilon"] = epsilon_after(h["round"], spec.privacy.dp_noise, 1.0, spec.privacy.dp_delta)
        out["candidates"] = sorted(c.candidates)
        out["current"] = None if c.plan is None or s.state.ended else {
            "round": c.round_no, "try": c.try_no, "phase": c.phase.value,
            "participants": list(c.plan.peers), "aggregators": list(c.order)}
    else:
        out["history"] = list(s.participation)
    return out


def session_row(status: dict[str, Any]) -> dict[str, Any]:
    """`fl.sessions`' row of a session from its `fl.status` (live or archived)."""
    return {k: status.get(k) for k in ("session_id", "task", "strategy", "state", "role", "started",
                                       "rounds_done", "rounds", "reason")}
