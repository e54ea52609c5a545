"""Bad updates are refused with the reason, never aggregated, and blamed where it is the
sender's fault. The receiving side is the one transfer/updates.py runs: admission by header, tensor
header against the expected shape and size limit, chunks, then the core."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from tests.fl.harness import Sim
from tests.fl.test_session import spec

Tamper = Callable[[dict[str, Any], list[bytes]], None]


def _flip(h: dict[str, Any], chunks: list[bytes]) -> None:
    chunks[0] = bytes([chunks[0][0] ^ 0xFF]) + chunks[0][1:]


def _short(h: dict[str, Any], chunks: list[bytes]) -> None:
    chunks[-1] = chunks[-1][:-4]


CASES: list[tuple[str, Tamper | None, Callable[[np.ndarray], np.ndarray] | None, bool]] = [
    ("shape", lambda h, c: h["tensor"].update(shape=[h["tensor"]["shape"][0] - 1]), None, True),
    ("dtype", lambda h, c: h["tensor"].update(dtype="int32"), None, True),
    ("oversize", lambda h, c: h["tensor"].update(nbytes=1 << 40), None, True),
    ("hash", _flip, None, True),
    ("size", _short, None, True),
    ("nonfinite", None, lambda d: np.where(np.arange(d.size) == 3, np.nan, d).astype(np.float32), True),
    ("nonfinite", None, lambda d: np.full_like(d, np.inf), True),
    ("unknown session", lambda h, c: h.update(session=b"\x07" * 32), None, False),
    ("unknown round", lambda h, c: h.update(round=99), None, False),
    ("not the aggregator", lambda h, c: h.update(fallback=h["fallback"] + 1), None, False),
]


@pytest.mark.parametrize("reason,tamper,poison,blamed", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_update_is_refused_with_its_reason(reason: str, tamper: Tamper | None,
                                                poison: Callable[[np.ndarray], np.ndarray] | None,
                                                blamed: bool) -> None:
    sim = Sim(4)
    for nd in sim.nodes:
        nd.hold_updates = True
    sid = sim.start(spec(rounds=1, participants=4, min_participants=2))
    coord = sim.nodes[0].core.sessions[sid].coordinator
    assert coord is not None
    sim.run_until(lambda: coord.plan is not None, 100)
    aggregator = coord.order[0]
    victim = next(nd for nd in sim.nodes if nd.peer != aggregator)
    for nd in sim.nodes:
        if nd is not victim:
            for act in nd.held:
                sim._send_update(nd, act)
    sim._run(sim.nodes[0], [])
    act = victim.held[0]
    target = sim.by_peer[act.to]
    delta = poison(act.delta) if poison else act.delta
    got = sim.deliver_raw(victim.peer, target, act, delta, tamper=tamper)
    sim._run(target, [])
    assert got == reason
    assert any(r.peer == victim.peer and r.reason == reason for r in target.refused)
    st = sim.status(sid) if sim.ended(sid) else None
    if st is None:
        sim.run_until(lambda: sim.ended(sid), 200)
        st = sim.status(sid)
    assert st["state"] == "completed"
    h = st["history"][0]
    assert victim.peer not in h["accepted"] and victim.peer not in h["weights"]
    blame = [r for r in target.reports if r.subject == victim.peer]
    if blamed:
        assert h["rejected"] == {victim.peer: reason} and h["dropped"] == []
        assert blame and not any(r.ok for r in blame)
    else:
        assert h["dropped"] == [victim.peer] and victim.peer not in h["rejected"]
        assert not blame


def test_update_from_a_non_participant_is_refused() -> None:
    sim = Sim(4)
    for nd in sim.nodes:
        nd.hold_updates = True
    sid = sim.start(spec(rounds=1, participants=3, min_participants=2))
    coord = sim.nodes[0].core.sessions[sid].coordinator
    assert coord is not None
    sim.run_until(lambda: coord.plan is not None, 100)
    outsider = next(nd for nd in sim.nodes if nd.peer not in coord.plan.peers)
    insider = next(nd for nd in sim.nodes if nd.held)
    act = insider.held[0]
    target = sim.by_peer[act.to]
    got = sim.deliver_raw(outsider.peer, target, act, act.delta)
    sim._run(target, [])
    assert got == "not a participant"
    assert [r for r in target.reports if r.subject == outsider.peer and not r.ok]
    # the insider's real update still counts; a second copy is a duplicate
    assert sim.deliver_raw(insider.peer, target, act, act.delta) is None
    assert sim.deliver_raw(insider.peer, target, act, act.delta) in ("duplicate update", "round closed")
