"""The `plan_in` step of a node's round timeline (protocol.py `_check_gossip`: a new plan passed
the fl role's gossip check, before the gossip layer's inbox and handler tasks hand it to the
core, its `plan` step), on real libp2p overlays in one process (tests/fl/test_role.py
`fl_nodes`): noted once per plan at every other node (not again for the plan the coordinator
republishes every second while a round runs, nor for a late copy), from the coordinator, never
after the core's `plan`, and never at the coordinator itself (its own publications are not
checked)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.fl.test_role import fl_nodes, wait_until


async def test_each_new_plan_is_noted_once_as_it_passes_the_gossip_check(tmp_path: Path) -> None:
    async with fl_nodes(3, tmp_path) as roles:
        await wait_until(lambda: all(len([p for p in r.ctx.overlay.peers() if p.connected]) >= 2
                                     for r in roles), 60)
        out = await roles[0].start(task="synthetic", rounds=3, min_participants=3, participants=3,
                                   deadline=15.0, local_epochs=1, lr=0.05, optin_seconds=3.0,
                                   task_params={"alpha": 0.5, "beta": 0.5, "max_samples": 200})
        sid = out["session_id"]
        await wait_until(lambda: roles[0].core is not None and
                         roles[0].core.status(bytes.fromhex(sid))["state"] != "running", 120)
        sts = [await r.status(sid, verbose=True) for r in roles]
        coordinator = roles[0].ctx.peer_id

    assert sts[0]["state"] == "completed", sts[0]
    assert not [m for m in sts[0]["marks"] if m[3] == "plan_in"]     # its own plans: not checked
    for st in sts[1:]:
        plan_in = {(r, t): (at, peer) for at, r, t, step, peer in st["marks"] if step == "plan_in"}
        plans = {(r, t): at for at, r, t, step, _ in st["marks"] if step == "plan"}
        assert sorted(plan_in) == sorted(plans) and len(plans) >= 3, st["marks"]
        noted = Counter((r, t) for _, r, t, step, _ in st["marks"] if step == "plan_in")
        assert set(noted.values()) == {1}, st["marks"]            # once each, republished or not
        for key, (at, peer) in plan_in.items():
            assert peer == coordinator and at <= plans[key], (key, at, plans[key])
