"""The funded-session rules without IO (rewards/funding.py): the pool's deadline covers the
session's longest run, and who closes a pool when: the funder's node first, the fallback
coordinators one after the other after the grace period, nobody else; and the announcement
carries its funder on the wire (and in its session id) only when it has one."""
from __future__ import annotations

import dataclasses

from fognode.node.wire import pack, unpack
from fognode.protocols.fl.messages import SessionAnnouncement, SessionSpec
from fognode.protocols.fl.rewards.funding import DEADLINE_SLACK, POOL_GRACE, SETTLE, close_due, pool_deadline

from .test_evidence import STARTER, pid_of

FUNDER = b"\x11" * 32
OTHER = b"\x22" * 32


def ann(funder: bytes = FUNDER, coords: tuple[str, ...] = ("peerA", "peerB")) -> SessionAnnouncement:
    spec = SessionSpec(task="synthetic", rounds=3, min_participants=2, participants=4, deadline=10.0,
                       max_retries=2, optin_seconds=5.0, reward_budget=3_000_000)
    return SessionAnnouncement(spec, pid_of(STARTER), bytes(STARTER.verify_key), 1000.0, b"n" * 16, b"a" * 32,
                               b"b" * 32, fallback_coordinators=coords, funder=funder).signed(STARTER)


def test_the_deadline_covers_every_round_with_every_retry() -> None:
    a = ann()
    assert pool_deadline(a) == 1000 + 5 + 3 * 10 * 3 + DEADLINE_SLACK


def test_who_closes_when() -> None:
    a, d = ann(), 2000

    def due(wallet: bytes | None, me: str, now: float, *, known: bool = True, closed: bool = False) -> bool:
        return close_due(funder=FUNDER, deadline=d, grace=POOL_GRACE, closed=closed, my_wallet=wallet, me=me,
                         ann=a if known else None, now=now)
    # the funder's node: from the deadline plus the settle time, whatever it knows of the session
    assert not due(FUNDER, "x", d + SETTLE - 0.1, known=False)
    assert due(FUNDER, "x", d + SETTLE, known=False)
    assert not due(FUNDER, "x", d + SETTLE, closed=True)
    # the fallback coordinators, in rank order, after the grace period
    assert not due(OTHER, "peerA", d + POOL_GRACE + SETTLE - 0.1)
    assert due(OTHER, "peerA", d + POOL_GRACE + SETTLE)
    assert not due(OTHER, "peerB", d + POOL_GRACE + SETTLE)
    assert due(OTHER, "peerB", d + POOL_GRACE + 2 * SETTLE)
    # nobody else: not the starter's peer without the funding wallet, not a participant
    assert not due(OTHER, a.starter, d + 10 * POOL_GRACE)
    assert not due(None, "peerC", d + 10 * POOL_GRACE)
    assert not due(OTHER, "peerA", d + 10 * POOL_GRACE, known=False)


def test_the_funder_is_signed_into_the_announcement() -> None:
    a = ann()
    back = SessionAnnouncement.decode(unpack(pack(a.to_wire())))
    assert back == a and back.funder == FUNDER
    # another funder is another session (the session id is the hash of the signed body)
    assert dataclasses.replace(a, funder=OTHER).session_id != a.session_id
    # without a funder the wire form has no "fund" field: announcements of unpaid sessions
    # (and their ids) encode as before
    bare = ann(funder=b"")
    assert "fund" not in bare.to_wire() and SessionAnnouncement.decode(unpack(pack(bare.to_wire()))) == bare
