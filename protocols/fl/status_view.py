"""The operator's view of `fl.status`: one compact row per round (issue 15 item 12).

`compact(status)` turns the full status (FlCore.status, or an archived one) into the summary an
operator reads: the session's facts and `rounds`, one row per completed round (round,
participants, accepted, loss, accuracy, duration, epsilon) on the coordinator, or this node's
part per round on a participant (round, aggregator, accepted, weight, reason). `--verbose` is the
full status (per-peer lists and weights, candidates, the current plan). `--follow` streams the
same rows as they complete (`new_rows`).
"""
from __future__ import annotations

from typing import Any

# what the compact view keeps of the full status, in this order
SUMMARY = ("session_id", "task", "strategy", "state", "reason", "role", "started", "rounds_done", "rounds",
           "min_participants", "participants_per_round", "epsilon", "acting_coordinator", "model_hash",
           "model_file", "archived")


def round_row(h: dict[str, Any]) -> dict[str, Any]:
    """One history entry as a compact row."""
    if "participants" in h:          # the coordinator's record of a round
        return {"round": h.get("round"), "participants": len(h.get("participants") or ()),
                "accepted": len(h.get("accepted") or ()), "loss": h.get("loss"),
                "accuracy": h.get("accuracy"), "duration": h.get("duration"), "epsilon": h.get("epsilon")}
    return {"round": h.get("round"), "aggregator": h.get("aggregator"), "accepted": h.get("accepted"),
            "weight": h.get("weight"), "reason": h.get("reason") or None}


def compact(status: dict[str, Any]) -> dict[str, Any]:
    out = {k: status[k] for k in SUMMARY if k in status}
    out["rounds_table"] = [round_row(h) for h in status.get("history") or ()]
    return out


def new_rows(status: dict[str, Any], seen: int) -> list[dict[str, Any]]:
    """The compact rows of the rounds after the first `seen` history entries."""
    return [round_row(h) for h in (status.get("history") or ())[seen:]]
